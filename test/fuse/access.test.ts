// Who can use a FUSE publication: real mounts probed as other local users
// (setpriv), so the kernel's verdict is what is tested. The temp directory is
// opened to everyone (0755) so that only the mount's own policy decides.
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FuseFrontend } from '../../src/fuse/fuse-frontend.js';
import { presentedOwnership } from '../../src/fuse/access.js';
import { detachMount } from '../../src/fuse/mounts.js';
import { mountEntry } from '../../src/host/mounts.js';
import type { FileAttr } from '../../src/datastore/types.js';
import { NOBODY, probeAs, type LocalUser } from '../helpers/as-user.js';
import { memoryPublication } from './fixtures/memory-publication.js';

const fsp = fs.promises;
const uid = process.getuid!();
const gid = process.getgid!();
/** A user of no group we configure: neither the owner nor a member. */
const STRANGER: LocalUser = { uid: 65533, gid: 65533 };

t.equal(uid, 0, 'these tests mount FUSE and switch users: run them as root');

function setup(t: { teardown(fn: () => unknown): void }): { dir: string; mnt: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rl-fuse-access-'));
  fs.chmodSync(dir, 0o755);
  const mnt = path.join(dir, 'mnt');
  t.teardown(async () => {
    if (mountEntry(mnt)) await detachMount(mnt);
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { dir, mnt };
}

/** The FUSE super options of the mount (/proc/self/mountinfo, after the separator). */
function superOptions(mnt: string): string[] {
  const line =
    fs
      .readFileSync('/proc/self/mountinfo', 'utf8')
      .split('\n')
      .find((l) => l.split(' ')[4] === mnt) ?? '';
  return (line.split(' - ')[1] ?? '').split(' ')[2]?.split(',') ?? [];
}

async function modeOf(p: string): Promise<{ mode: number; uid: number; gid: number }> {
  const st = await fsp.stat(p);
  return { mode: st.mode & 0o7777, uid: st.uid, gid: st.gid };
}

t.test('by default only the publishing user reaches a publication: another user gets EACCES reading and writing', async (t) => {
  const { dir, mnt } = setup(t);
  const { ds, pub } = await memoryPublication(path.join(dir, 'state'));
  t.teardown(() => pub.disks[0]!.overlay.close());
  const fuse = await FuseFrontend.mount(ds, { mountPoint: mnt });
  t.teardown(() => fuse.unmount());
  const pubDir = path.join(mnt, 'web-p1');
  const raw = path.join(pubDir, 'sda.raw');
  t.ok(superOptions(mnt).includes('default_permissions'), 'the kernel enforces the modes');
  t.notOk(superOptions(mnt).includes('allow_other'), 'no allow_other without an access group');
  t.same(await modeOf(raw), { mode: 0o600, uid, gid }, 'a writable disk is 0600, owned by the publisher');
  t.same(await modeOf(pubDir), { mode: 0o700, uid, gid });
  t.same(await modeOf(mnt), { mode: 0o500, uid, gid }, 'the root holds only publications: no one creates there');
  // A hypervisor's scratch file keeps only its owner bits, whatever mode it asked for.
  await fsp.writeFile(path.join(pubDir, 'web.log'), 'guest console', { mode: 0o666 });
  t.equal((await modeOf(path.join(pubDir, 'web.log'))).mode, 0o600, 'a scratch file is 0600');

  // The owner still reads and writes.
  const fh = await fsp.open(raw, 'r+');
  await fh.write(Buffer.from('owner'), 0, 5, 4096);
  await fh.close();
  t.equal((await fsp.readFile(raw)).subarray(4096, 4101).toString(), 'owner');

  t.same(
    await probeAs(NOBODY, [
      ['read', raw],
      ['write', raw],
      ['list', pubDir],
      ['list', mnt],
      ['read', path.join(pubDir, 'web.log')],
    ]),
    ['EACCES', 'EACCES', 'EACCES', 'EACCES', 'EACCES'],
    'nobody can open anything',
  );
  t.equal((await fsp.readFile(raw)).subarray(4096, 4101).toString(), 'owner', 'the disk is as the owner left it');
});

t.test("with an access group, its members get the owner's rights; other users still get EACCES", async (t) => {
  const { dir, mnt } = setup(t);
  const { ds, pub } = await memoryPublication(path.join(dir, 'state'));
  t.teardown(() => pub.disks[0]!.overlay.close());
  const fuse = await FuseFrontend.mount(ds, { mountPoint: mnt, accessGroup: 'nogroup' });
  t.teardown(() => fuse.unmount());
  const pubDir = path.join(mnt, 'web-p1');
  const raw = path.join(pubDir, 'sda.raw');
  t.ok(superOptions(mnt).includes('allow_other'), "allow_other lets the group's users reach the mount");
  t.ok(superOptions(mnt).includes('default_permissions'), 'and the kernel still checks the modes');
  t.same(await modeOf(raw), { mode: 0o660, uid, gid: 65534 }, 'the disk is 0660, reported with the access group');
  t.same(await modeOf(pubDir), { mode: 0o770, uid, gid: 65534 });

  t.same(
    await probeAs(NOBODY, [
      ['read', raw],
      ['write', raw],
      ['list', pubDir],
    ]),
    ['ok', 'ok', 'ok'],
    'a member by primary group reads and writes',
  );
  t.same(
    await probeAs({ ...STRANGER, groups: [65534] }, [
      ['read', raw],
      ['write', raw],
    ]),
    ['ok', 'ok'],
    'a member by supplementary group too',
  );
  t.same(
    await probeAs(STRANGER, [
      ['read', raw],
      ['write', raw],
      ['list', pubDir],
    ]),
    ['EACCES', 'EACCES', 'EACCES'],
    'a user outside the group gets nothing',
  );
  t.ok((await fsp.readFile(raw)).length > 0, 'the owner still reads');
});

t.test('a read-only publication is 0400/0500, and a group member may read but not open for writing', async (t) => {
  const { dir, mnt } = setup(t);
  const { ds, pub } = await memoryPublication(path.join(dir, 'state'), undefined, { readOnly: true });
  t.teardown(() => pub.disks[0]!.overlay.close());
  const alone = await FuseFrontend.mount(ds, { mountPoint: mnt });
  const raw = path.join(mnt, 'web-p1', 'sda.raw');
  t.same(await modeOf(raw), { mode: 0o400, uid, gid });
  t.equal((await modeOf(path.join(mnt, 'web-p1'))).mode, 0o500);
  await alone.unmount();

  const shared = await FuseFrontend.mount(ds, { mountPoint: mnt, accessGroup: '65534' });
  t.teardown(() => shared.unmount());
  t.same(await modeOf(raw), { mode: 0o440, uid, gid: 65534 }, 'a numeric gid works as the access group');
  t.same(
    await probeAs(NOBODY, [
      ['read', raw],
      ['write', raw],
    ]),
    ['ok', 'EACCES'],
  );
});

t.test('an unknown access group is refused before anything is mounted', async (t) => {
  const { dir, mnt } = setup(t);
  const { ds, pub } = await memoryPublication(path.join(dir, 'state'));
  t.teardown(() => pub.disks[0]!.overlay.close());
  await t.rejects(FuseFrontend.mount(ds, { mountPoint: mnt, accessGroup: 'no-such-group-rl' }), {
    code: 'GROUP_UNKNOWN',
    hint: /groupadd/,
  });
  await t.rejects(FuseFrontend.mount(ds, { mountPoint: mnt, accessGroup: 'bad group;' }), { code: 'GROUP_UNKNOWN' });
  t.equal(mountEntry(mnt), undefined);
});

t.test('presented modes: owner bits only, mirrored to the group when there is one, never to others', async (t) => {
  const attr = (mode: number, type: FileAttr['type'] = 'file'): FileAttr => ({
    fileid: 2,
    type,
    mode,
    nlink: 1,
    uid: 1000,
    gid: 1000,
    size: 0,
    used: 0,
    atime: new Date(0),
    mtime: new Date(0),
    ctime: new Date(0),
  });
  const alone = { uid: 7, gid: 8 };
  const shared = { uid: 7, gid: 9, group: { name: 'kvm', gid: 9 } };
  t.same(presentedOwnership(attr(0o644), alone), { uid: 7, gid: 8, mode: 0o600 });
  t.same(presentedOwnership(attr(0o644), shared), { uid: 7, gid: 9, mode: 0o660 });
  t.same(presentedOwnership(attr(0o555, 'dir'), shared), { uid: 7, gid: 9, mode: 0o550 });
  t.same(presentedOwnership(attr(0o4777), alone), { uid: 7, gid: 8, mode: 0o700 }, 'no setuid, nothing for others');
  t.same(presentedOwnership(attr(0o077), shared), { uid: 7, gid: 9, mode: 0o000 }, 'a file its owner closed stays closed to the group');
});

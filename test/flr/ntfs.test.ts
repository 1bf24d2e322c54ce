// File-level restore of a Windows guest's NTFS partition. The kernel's ntfs3
// is used where the host has it; a host without it (ours) mounts through the
// userspace ntfs-3g over FUSE, read-only and hardened like every other
// mount, and umount leaves no mount, loop device or ntfs-3g process behind.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { mountDisks, releaseJournal, umountSession } from '../../src/flr/mount.js';
import { kernelFilesystems } from '../../src/flr/filesystems.js';
import { listSessions } from '../../src/flr/session.js';
import { buildNtfsDisk, loopDevicesOn, sha } from './fixtures/disks.js';

const work = mkdtempSync(join(tmpdir(), 'flr-ntfs-test-'));
const stateDir = join(work, 'state');
const disk = buildNtfsDisk(work);

function mountLines(): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter((l) => (l.split(' ')[4] ?? '').startsWith(work));
}

/** Running ntfs-3g daemons. */
function ntfsDaemons(): number[] {
  return readdirSync('/proc')
    .filter((p) => /^\d+$/.test(p))
    .filter((p) => {
      try {
        return readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0')[0]?.endsWith('ntfs-3g') === true;
      } catch {
        return false;
      }
    })
    .map(Number);
}

t.teardown(async () => {
  for (const s of listSessions(stateDir)) await releaseJournal(s).catch(() => undefined);
  for (const l of mountLines().reverse()) spawnSync('umount', ['-l', l.split(' ')[4]!]);
  for (const l of loopDevicesOn(disk.path)) spawnSync('losetup', ['-d', l.split(':')[0]!]);
  rmSync(work, { recursive: true, force: true });
});

t.test('an NTFS partition is mounted read-only, with the bytes Windows wrote; umount leaves nothing', async (t) => {
  const before = ntfsDaemons();
  const dir = join(work, 'mnt');
  const s = await mountDisks({ stateDir, dir, disks: [{ name: 'sda', path: disk.path }] });
  t.match(s.mounts, [{ disk: 'sda', partition: 1, fstype: 'ntfs', path: join(dir, 'p1') }]);
  t.notOk(s.mounts[0]?.skipped, `mounted (${s.mounts[0]?.skipped ?? ''})`);
  for (const [p, digest] of Object.entries(disk.files.sha256)) t.equal(sha(readFileSync(join(dir, 'p1', p))), digest, `${p} has its bytes`);
  const line = mountLines().find((l) => l.split(' ')[4] === join(dir, 'p1')) ?? '';
  const viaFuse = !kernelFilesystems().has('ntfs3');
  t.match(line, viaFuse ? / - fuseblk / : / - ntfs3 /, viaFuse ? 'through ntfs-3g: this kernel has no ntfs3' : 'through the kernel ntfs3');
  t.match(line.split(' ')[5], /^ro,/, 'read-only');
  for (const o of ['nosuid', 'nodev', 'noexec']) t.match(line, new RegExp(`[ ,]${o}[ ,]`), o);
  await umountSession(stateDir, s.id);
  t.same(mountLines(), [], 'no mount left');
  t.same(loopDevicesOn(disk.path), [], 'no loop device left');
  const left = ntfsDaemons().filter((p) => !before.includes(p));
  t.same(left, [], 'no ntfs-3g process left');
});

// A `restorelab mount` that dies (SIGKILL) leaves its session journal; the
// `restorelab umount` CLI then removes exactly what it had created.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildMbrDisk, loopDevicesOn, mountsBelow } from './fixtures/disks.js';
import { listSessions } from '../../src/flr/session.js';
import { releaseJournal } from '../../src/flr/mount.js';

const bin = fileURLToPath(new URL('../../../bin/restorelab.js', import.meta.url));
const child = fileURLToPath(new URL('./fixtures/crash-child.js', import.meta.url));
const work = mkdtempSync(join(tmpdir(), 'flr-crash-test-'));
const stateDir = join(work, 'state');
const disk = buildMbrDisk(work);
const env = { ...process.env, RESTORELAB_STATE_DIR: stateDir };

t.teardown(async () => {
  for (const s of listSessions(stateDir)) await releaseJournal(s).catch(() => undefined);
  for (const m of mountsBelow(work).reverse()) spawnSync('umount', ['-l', m]);
  for (const l of loopDevicesOn(disk.path)) spawnSync('losetup', ['-d', l.split(':')[0]!]);
  rmSync(work, { recursive: true, force: true });
});

t.test('killed after mounting: umount <dir> --json removes mounts, loops, dirs and the journal', async (t) => {
  const dir = join(work, 'mnt1');
  const r = spawnSync(process.execPath, [child, stateDir, dir, disk.path, 'after-mount'], { encoding: 'utf8', timeout: 120_000 });
  t.equal(r.signal, 'SIGKILL', 'the mounting process died');
  t.ok(mountsBelow(dir).length >= 1, 'it left its mounts');
  t.ok(loopDevicesOn(disk.path).length >= 1, 'and its loop devices');
  const id = listSessions(stateDir)[0]!.record.id;
  const u = spawnSync(process.execPath, [bin, 'umount', dir, '--json'], { encoding: 'utf8', env, timeout: 120_000 });
  t.equal(u.status, 0, u.stderr);
  t.match(JSON.parse(u.stdout), { id, dir });
  t.same(mountsBelow(work), []);
  t.same(loopDevicesOn(disk.path), []);
  t.notOk(existsSync(dir));
  t.same(readdirSync(join(stateDir, 'flr')), []);
});

t.test('killed between attaching a loop device and mounting it: umount <id> detaches it', async (t) => {
  const dir = join(work, 'mnt2');
  const r = spawnSync(process.execPath, [child, stateDir, dir, disk.path, 'after-loop'], { encoding: 'utf8', timeout: 120_000 });
  t.equal(r.signal, 'SIGKILL');
  t.equal(loopDevicesOn(disk.path).length, 1, 'one loop device left');
  const s = listSessions(stateDir)[0]!;
  t.notOk(s.record.complete, 'the journal says the mount never completed');
  const u = spawnSync(process.execPath, [bin, 'umount', s.record.id, '--json'], { encoding: 'utf8', env, timeout: 120_000 });
  t.equal(u.status, 0, u.stderr);
  t.same(loopDevicesOn(disk.path), []);
  t.same(mountsBelow(work), []);
  t.notOk(existsSync(dir));
});

t.test('a loop device number reused by someone else is not detached', async (t) => {
  const dir = join(work, 'mnt3');
  spawnSync(process.execPath, [child, stateDir, dir, disk.path, 'after-loop'], { encoding: 'utf8', timeout: 120_000 });
  const s = listSessions(stateDir)[0]!;
  const loop = s.record.resources.find((x) => x.kind === 'loop')!;
  // Simulate the reuse: our device goes away, a stranger's takes its number.
  spawnSync('losetup', ['-d', (loop as { device: string }).device]);
  const other = join(work, 'stranger.raw');
  spawnSync('truncate', ['-s', '1M', other]);
  const attach = spawnSync('losetup', [(loop as { device: string }).device, other], { encoding: 'utf8' });
  t.equal(attach.status, 0, attach.stderr);
  t.teardown(() => spawnSync('losetup', ['-d', (loop as { device: string }).device]));
  const u = spawnSync(process.execPath, [bin, 'umount', dir, '--json'], { encoding: 'utf8', env, timeout: 120_000 });
  t.equal(u.status, 0, u.stderr);
  t.equal(loopDevicesOn(other).length, 1, "the stranger's loop device is still attached");
});

t.test('umount of something never mounted is a clear not-found error', async (t) => {
  const u = spawnSync(process.execPath, [bin, 'umount', join(work, 'nothing-here'), '--json'], { encoding: 'utf8', env });
  t.equal(u.status, 5);
  t.match(JSON.parse(u.stdout), { ok: false, error: { code: 'FLR_SESSION_NOT_FOUND' } });
});

// A file-level restore session is the root user's: another local user can
// neither read the restore point's raw disk (the holder's FUSE file, the loop
// device) nor browse the guest filesystem mounted from it, even where the
// guest's own modes say "world-readable". Probed as `nobody` with setpriv.
import t from 'tap';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initRepository } from '../../src/repo/repository.js';
import { backupVm } from '../../src/backup/engine.js';
import { listSessions, sessionsDir } from '../../src/flr/session.js';
import { mountRestorePoint, releaseJournal, umountSession } from '../../src/flr/mount.js';
import { NOBODY, probeAs } from '../helpers/as-user.js';
import { buildMbrDisk } from './fixtures/disks.js';

t.equal(process.getuid!(), 0, 'file-level restore mounts filesystems: run this as root');

const work = mkdtempSync(join(tmpdir(), 'flr-access-test-'));
// Open to everyone, so that only what the session itself sets decides.
chmodSync(work, 0o755);
const stateDir = join(work, 'state');
const repoDir = join(work, 'repo');
const disk = buildMbrDisk(work);
const repo = await initRepository(repoDir);
const point = await backupVm({
  repo,
  vm: { name: 'fileserver', memoryMiB: 256, vcpus: 1, disks: [{ name: 'sda', format: 'raw' }], nics: [] },
  disks: { sda: disk.path },
});

function mountOptions(path: string): string[] {
  const line =
    readFileSync('/proc/self/mountinfo', 'utf8')
      .split('\n')
      .find((l) => l.split(' ')[4] === path) ?? '';
  return (line.split(' ')[5] ?? '').split(',');
}

t.teardown(async () => {
  for (const s of listSessions(stateDir)) await releaseJournal(s).catch(() => undefined);
  rmSync(work, { recursive: true, force: true });
});

t.test('another user reads neither the raw disk nor the mounted guest files of a session', async (t) => {
  // A directory the user made, open to all: the session closes it, and umount gives its mode back.
  const dir = join(work, 'restore');
  mkdirSync(dir, { mode: 0o755 });
  chmodSync(dir, 0o755);
  const s = await mountRestorePoint({ stateDir, repo: repoDir, point: point.id, dir, partition: 1 });
  t.teardown(() => umountSession(stateDir, s.id).catch(() => undefined));
  const p1 = join(dir, 'p1');
  const hello = join(p1, 'hello.txt');
  t.equal((await stat(hello)).mode & 0o004, 0o004, 'the guest made hello.txt world-readable (so its modes alone would not stop anyone)');
  t.match(mountOptions(p1), ['ro'], 'guest filesystem mounted read-only');
  for (const o of ['ro', 'nosuid', 'nodev', 'noexec']) t.ok(mountOptions(p1).includes(o), `guest filesystem mounted ${o}`);
  t.equal((await stat(dir)).mode & 0o7777, 0o700, 'the session directory is 0700');
  t.equal((await stat(sessionsDir(stateDir))).mode & 0o7777, 0o700, 'the sessions directory is 0700');

  const resources = listSessions(stateDir).find((j) => j.record.id === s.id)!.record.resources;
  const holder = resources.find((r) => r.kind === 'holder');
  const loop = resources.find((r) => r.kind === 'loop');
  if (holder?.kind !== 'holder' || loop?.kind !== 'loop' || !holder.publication)
    throw new Error(`session ${s.id} has no holder publication or loop device: ${JSON.stringify(resources)}`);
  const raw = join(holder.fuseDir, holder.publication, 'sda.raw');
  t.same({ mode: (await stat(raw)).mode & 0o7777, uid: (await stat(raw)).uid }, { mode: 0o400, uid: 0 }, "the raw disk is 0400, root's");

  t.same(
    await probeAs(NOBODY, [
      ['read', raw],
      ['read', loop.device],
      ['list', dir],
      ['list', p1],
      ['read', hello],
    ]),
    ['EACCES', 'EACCES', 'EACCES', 'EACCES', 'EACCES'],
    'nobody reads the raw disk, the loop device, or any guest file',
  );

  // Each layer on its own: with the sessions directory opened up, the FUSE mount still refuses.
  chmodSync(sessionsDir(stateDir), 0o755);
  try {
    t.same(
      await probeAs(NOBODY, [
        ['read', raw],
        ['list', holder.fuseDir],
      ]),
      ['EACCES', 'EACCES'],
      'the read-only publication is closed by itself',
    );
  } finally {
    chmodSync(sessionsDir(stateDir), 0o700);
  }

  await umountSession(stateDir, s.id);
  t.equal((await stat(dir)).mode & 0o7777, 0o755, 'umount gives the directory its mode back');
  t.same(
    spawnSync('losetup', ['-a'], { encoding: 'utf8' })
      .stdout.split('\n')
      .filter((l) => l.includes(work)),
    [],
    'no loop device left',
  );
});

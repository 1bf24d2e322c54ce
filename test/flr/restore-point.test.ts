// End to end through the CLI: an image is backed up into a repository, and
// its files come back out of the restore point through a read-only FUSE
// publication, loop devices and read-only mounts, with the right bytes; then
// nothing (loop device, mount, FUSE mount, holder process) is left behind.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, existsSync, readdirSync, openSync, readSync, writeSync, closeSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { initRepository } from '../../src/repo/repository.js';
import { backupVm } from '../../src/backup/engine.js';
import { listSessions } from '../../src/flr/session.js';
import { releaseJournal } from '../../src/flr/mount.js';
import { listPublications } from '../../src/publish/publish.js';
import { processAlive } from '../../src/host/process.js';
import { buildMbrDisk, buildUnknownFsDisk, sha } from './fixtures/disks.js';
import { settle } from '../helpers/ready.js';

const bin = fileURLToPath(new URL('../../../bin/restorelab.js', import.meta.url));
const work = mkdtempSync(join(tmpdir(), 'flr-e2e-test-'));
const stateDir = join(work, 'state');
const repoDir = join(work, 'repo');
const env = { ...process.env, RESTORELAB_STATE_DIR: stateDir };
const disk = buildMbrDisk(work);
const repo = await initRepository(repoDir);
const vm = (name: string): Parameters<typeof backupVm>[0]['vm'] => ({
  name,
  memoryMiB: 256,
  vcpus: 1,
  disks: [{ name: 'sda', format: 'raw' }],
  nics: [],
});
const point = await backupVm({ repo, vm: vm('fileserver'), disks: { sda: disk.path } });
const unknownPoint = await backupVm({ repo, vm: vm('mystery'), disks: { sda: buildUnknownFsDisk(work) } });

function mountInfo(): string[][] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => l.split(' '));
}

/** Mounts, FUSE mounts and loop devices anywhere near this test, and holder processes of its sessions. */
function leftovers(): { mounts: string[]; loops: string[]; holders: number[]; sessions: number; publications: number } {
  const loops = spawnSync('losetup', ['-a'], { encoding: 'utf8' })
    .stdout.split('\n')
    .filter((l) => l.includes(work));
  // Holders inherit the CLI's environment, so ours carry this test's state directory.
  const holders = readdirSync('/proc')
    .filter((p) => /^\d+$/.test(p))
    .map(Number)
    .filter((pid) => {
      try {
        return (
          readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('flr/holder.js') &&
          readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0').includes(`RESTORELAB_STATE_DIR=${stateDir}`)
        );
      } catch {
        return false;
      }
    });
  return {
    mounts: mountInfo()
      .map((f) => f[4] ?? '')
      .filter((p) => p.startsWith(work)),
    loops,
    holders,
    sessions: listSessions(stateDir).length,
    publications: listPublications(stateDir).length,
  };
}

function cli(args: string[]): { status: number | null; json: Record<string, unknown>; stderr: string } {
  const r = spawnSync(process.execPath, [bin, ...args, '--json'], { encoding: 'utf8', env, timeout: 300_000 });
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(r.stdout) as Record<string, unknown>;
  } catch {
    json = { unparsable: r.stdout };
  }
  return { status: r.status, json, stderr: r.stderr };
}

t.teardown(async () => {
  for (const s of listSessions(stateDir)) await releaseJournal(s).catch(() => undefined);
  for (const m of mountInfo()
    .map((f) => f[4] ?? '')
    .filter((p) => p.startsWith(work))
    .reverse())
    spawnSync('umount', ['-l', m]);
  for (const l of spawnSync('losetup', ['-a'], { encoding: 'utf8' })
    .stdout.split('\n')
    .filter((x) => x.includes(work)))
    spawnSync('losetup', ['-d', l.split(':')[0]!]);
  rmSync(work, { recursive: true, force: true });
});

t.test('files get extracts a file of the restore point with the right bytes, and leaves nothing behind', async (t) => {
  const out = join(work, 'blob-from-backup.bin');
  const r = cli(['files', 'get', '--repo', repoDir, point.id, '/data/blob.bin', '--to', out]);
  t.equal(r.status, 0, r.stderr);
  t.match(r.json, { disk: 'sda', partition: 1, format: 'file', bytes: 3 * 1024 * 1024 + 123 });
  t.equal(sha(readFileSync(out)), disk.files.sha256['/data/blob.bin'], 'the bytes the guest wrote');
  t.same(leftovers(), { mounts: [], loops: [], holders: [], sessions: 0, publications: 0 }, 'the temporary mount is gone');
});

t.test('mount lists the partitions, stays mounted for ls/get, and umount removes mounts, loops, FUSE and the holder', async (t) => {
  const dir = join(work, 'restore');
  const m = cli(['mount', '--repo', repoDir, point.id, dir]);
  t.equal(m.status, 0, m.stderr);
  const mounts = m.json.mounts as { partition: number; fstype: string; path: string; skipped?: string }[];
  t.match(
    mounts.find((x) => x.partition === 1),
    { partition: 1, fstype: 'ext4', path: join(dir, 'p1') },
  );
  t.match(
    mounts.find((x) => x.partition === 2),
    { partition: 2, fstype: 'vfat' },
  );
  const fuse = mountInfo().filter((f) => (f[4] ?? '').startsWith(stateDir) && f.slice(f.indexOf('-') + 1)[0]?.startsWith('fuse'));
  t.equal(fuse.length, 1, 'the restore point is published over FUSE');
  const loops = spawnSync('losetup', ['-a'], { encoding: 'utf8' })
    .stdout.split('\n')
    .filter((l) => l.includes(stateDir) && l.includes('.raw'));
  t.ok(loops.length >= 1, 'loop devices read the published <disk>.raw');
  t.same(leftovers().holders.length, 1, 'one holder process serves the publication');
  t.match(listPublications(stateDir), [{ running: true, point: point.id }], 'one publication, recorded by the publish layer');

  const ls = cli(['files', 'ls', '--repo', repoDir, point.id, '/data/docs']);
  t.equal(ls.status, 0, ls.stderr);
  t.match(ls.json, {
    partition: 1,
    entries: [
      { name: 'empty', type: 'file', size: 0 },
      { name: 'readme.txt', type: 'file', size: 23 },
    ],
  });
  t.equal(listSessions(stateDir).length, 1, 'files ls used the running mount');
  const readme = join(work, 'readme.txt');
  const g = cli(['files', 'get', '--repo', repoDir, point.id, '/data/docs/readme.txt', '--to', readme]);
  t.equal(g.status, 0, g.stderr);
  t.equal(sha(readFileSync(readme)), disk.files.sha256['/data/docs/readme.txt']);
  const piped = spawnSync(process.execPath, [bin, 'files', 'get', '--repo', repoDir, point.id, '/data/blob.bin', '--to', '-'], {
    env,
    timeout: 300_000,
    maxBuffer: 64 * 1024 * 1024,
  });
  t.equal(piped.status, 0);
  t.equal(sha(piped.stdout), disk.files.sha256['/data/blob.bin'], '--to - streams the file to stdout');
  const refused = cli(['files', 'get', '--repo', repoDir, point.id, '/passwd-link', '--to', join(work, 'nope')]);
  t.equal(refused.status, 2);
  t.match(refused.json, { ok: false, error: { code: 'PATH_TRAVERSAL' } });

  const u = cli(['umount', dir]);
  t.equal(u.status, 0, u.stderr);
  t.same(
    leftovers(),
    { mounts: [], loops: [], holders: [], sessions: 0, publications: 0 },
    'no loop device, mount, FUSE mount or holder left',
  );
  t.notOk(existsSync(dir));
});

t.test('a killed holder (stale FUSE mount) is still cleaned up by umount', async (t) => {
  const dir = join(work, 'restore-kill');
  const m = cli(['mount', '--repo', repoDir, point.id, dir, '--partition', '1']);
  t.equal(m.status, 0, m.stderr);
  const [holder] = leftovers().holders;
  t.ok(holder, 'a holder runs');
  process.kill(holder!, 'SIGKILL');
  t.equal(listPublications(stateDir).length, 1, 'the crashed holder left its publication record');
  // Gone, not just signalled: until then it still holds the FUSE mount.
  await settle(() => !processAlive(holder!), 10_000);
  t.notOk(processAlive(holder!), 'the holder is gone');
  const u = cli(['umount', m.json.id as string]);
  t.equal(u.status, 0, u.stderr);
  t.same(leftovers(), { mounts: [], loops: [], holders: [], sessions: 0, publications: 0 });
});

t.test('bad input: an unknown restore point or disk fails clearly and leaves nothing', async (t) => {
  const dir = join(work, 'restore-bad');
  const p = cli(['mount', '--repo', repoDir, 'no-such-point', dir]);
  t.not(p.status, 0);
  t.match(p.json, { ok: false, error: { message: /no-such-point/ } });
  const d = cli(['mount', '--repo', repoDir, point.id, dir, '--disk', 'sdz']);
  t.equal(d.status, 5);
  t.match(d.json, { ok: false, error: { code: 'DISK_NOT_FOUND', message: /no disk sdz/ } });
  t.same(leftovers(), { mounts: [], loops: [], holders: [], sessions: 0, publications: 0 });
  t.notOk(existsSync(dir));
});

t.test('bad input: a point whose disk holds no filesystem we know fails after publishing, and the publication goes too', async (t) => {
  const dir = join(work, 'restore-unknown');
  const r = cli(['mount', '--repo', repoDir, unknownPoint.id, dir]);
  t.equal(r.status, 2);
  t.match(r.json, { ok: false, error: { code: 'UNKNOWN_FILESYSTEM', message: /partition 1: unknown filesystem/ } });
  t.same(leftovers(), { mounts: [], loops: [], holders: [], sessions: 0, publications: 0 }, 'no FUSE mount, holder or publication left');
  t.notOk(existsSync(dir));
});

/** Byte offset in `image` of a 1 KiB-aligned block equal to `block` (a small ext4 uses 1 KiB blocks). */
function findBlock(image: string, block: Buffer): number {
  const fd = openSync(image, 'r');
  const buf = Buffer.alloc(1024 * 1024);
  try {
    for (let base = 0; base < statSync(image).size; base += buf.length) {
      const n = readSync(fd, buf, 0, buf.length, base);
      for (let o = 0; o + block.length <= n; o += 1024) if (buf.subarray(o, o + block.length).equals(block)) return base + o;
    }
  } finally {
    closeSync(fd);
  }
  throw new Error('block not found in the image');
}

t.test('a corrupt chunk under a guest file: files get fails with GUEST_READ_FAILED, writes nothing, leaves nothing', async (t) => {
  const repo2Dir = join(work, 'repo-corrupt');
  const repo2 = await initRepository(repo2Dir);
  const p = await backupVm({
    repo: repo2,
    vm: { name: 'fileserver', memoryMiB: 256, vcpus: 1, disks: [{ name: 'sda', format: 'raw' }], nics: [] },
    disks: { sda: disk.path },
  });
  // The chunk holding a block near the end of /data/blob.bin.
  const good = join(work, 'blob-good.bin');
  t.equal(cli(['files', 'get', '--repo', repo2Dir, p.id, '/data/blob.bin', '--to', good]).status, 0);
  const blob = readFileSync(good);
  const last = Math.floor((blob.length - 1) / 1024) * 1024 - 1024;
  const at = findBlock(disk.path, blob.subarray(last, last + 1024));
  const src = await repo2.openDisk(p.id, 'sda');
  const index = Math.floor(at / src.chunkSize);
  t.ok(index > 0, 'the damaged chunk is not the one with the partition table and superblock');
  const digest = src.chunkId(index)!;
  const chunkFile = join(repo2Dir, 'chunks', digest.slice(0, 2), digest);
  const fd = openSync(chunkFile, 'r+');
  const size = statSync(chunkFile).size;
  const b = Buffer.alloc(1);
  readSync(fd, b, 0, 1, Math.floor(size / 2));
  b[0] = b[0]! ^ 0xff;
  writeSync(fd, b, 0, 1, Math.floor(size / 2));
  closeSync(fd);

  const out = join(work, 'blob-corrupt.bin');
  const r = cli(['files', 'get', '--repo', repo2Dir, p.id, '/data/blob.bin', '--to', out]);
  t.equal(r.status, 1, r.stderr);
  t.match(r.json, { ok: false, error: { code: 'GUEST_READ_FAILED', hint: /restorelab verify/ } });
  t.notOk(existsSync(out), 'no half-written or wrong file is left');
  t.same(leftovers(), { mounts: [], loops: [], holders: [], sessions: 0, publications: 0 });
});

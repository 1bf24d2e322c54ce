// File-level restore on real disk images: MBR (ext4 + vfat), GPT (xfs) and a
// table-less disk, attached read-only by offset/sizelimit, mounted replay-free,
// browsed with path confinement, and taken down without leftovers. Also the
// bad inputs: unknown filesystem, corrupt table, mount point in use, and a
// mount that fails half-way.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import {
  mkdtempSync,
  mkdirSync,
  readFileSync,
  existsSync,
  readdirSync,
  writeFileSync,
  rmSync,
  openSync,
  writeSync,
  closeSync,
  copyFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tar from 'tar-stream';
import { mountDisks, umountSession, releaseJournal } from '../../src/flr/mount.js';
import { listGuestPath, getGuestPath } from '../../src/flr/browse.js';
import { listSessions } from '../../src/flr/session.js';
import { kernelFilesystems } from '../../src/flr/filesystems.js';
import { RestorelabError } from '../../src/errors.js';
import {
  buildMbrDisk,
  buildGptXfsDisk,
  buildWholeDiskExt4,
  buildUnknownFsDisk,
  buildLogicalDisk,
  loopDevicesOn,
  sha,
  mountsBelow,
} from './fixtures/disks.js';

const work = mkdtempSync(join(tmpdir(), 'flr-mount-test-'));
const stateDir = join(work, 'state');
const mbr = buildMbrDisk(work);
const gpt = buildGptXfsDisk(work);
const whole = buildWholeDiskExt4(work);
const unknown = buildUnknownFsDisk(work);
const logical = buildLogicalDisk(work);

function leftovers(): { loops: string[]; mounts: string[]; sessions: number } {
  return {
    loops: [mbr.path, gpt.path, whole.path, unknown, logical.path].flatMap((f) => loopDevicesOn(f)),
    mounts: mountsBelow(work),
    sessions: listSessions(stateDir).length,
  };
}

t.teardown(async () => {
  for (const s of listSessions(stateDir)) await releaseJournal(s).catch(() => undefined);
  for (const m of mountsBelow(work).reverse()) execFileSync('umount', ['-l', m]);
  for (const f of [mbr.path, gpt.path, whole.path, unknown, logical.path]) {
    for (const line of loopDevicesOn(f)) execFileSync('losetup', ['-d', line.split(':')[0]!]);
  }
  rmSync(work, { recursive: true, force: true });
});

async function failure(p: Promise<unknown>): Promise<Record<string, unknown>> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!(err instanceof RestorelabError)) return { notARestorelabError: String(err) };
  return { code: err.code, exitCode: err.exitCode, message: err.message, hint: err.hint };
}

async function untar(file: string): Promise<Map<string, { type: string; linkname?: string; sha?: string }>> {
  const out = new Map<string, { type: string; linkname?: string; sha?: string }>();
  const ex = tar.extract();
  ex.on('entry', (h, stream, next) => {
    const chunks: Buffer[] = [];
    stream.on('data', (c: unknown) => {
      chunks.push(c as Buffer);
    });
    stream.on('end', () => {
      out.set(h.name, {
        type: h.type,
        ...(h.linkname ? { linkname: h.linkname } : {}),
        ...(h.type === 'file' ? { sha: sha(Buffer.concat(chunks)) } : {}),
      });
      next();
    });
  });
  await new Promise<void>((resolve, reject) => {
    ex.on('finish', () => resolve());
    ex.on('error', reject);
    ex.end(readFileSync(file));
  });
  return out;
}

t.test(
  'MBR disk: ext4 mounted read-only and replay-free, vfat by what the kernel offers; browse, get, confinement, clean umount',
  async (t) => {
    const dir = join(work, 'mnt-mbr');
    const s = await mountDisks({ stateDir, dir, disks: [{ name: 'sda', path: mbr.path }] });
    const p1 = s.mounts.find((m) => m.partition === 1)!;
    t.match(p1, { partition: 1, fstype: 'ext4', path: join(dir, 'p1') });
    t.notOk(p1.skipped);
    const p2 = s.mounts.find((m) => m.partition === 2)!;
    t.equal(p2.fstype, 'vfat', 'the FAT32 partition is identified');
    if (kernelFilesystems().has('vfat')) t.match(p2, { path: join(dir, 'p2'), skipped: undefined }, 'mounted with the kernel vfat driver');
    else
      t.match(
        p2,
        { path: '', skipped: /unsupported filesystem vfat: this host's kernel has no vfat driver/ },
        'listed as skipped, with the reason',
      );
    t.equal(loopDevicesOn(mbr.path).length, s.mounts.filter((m) => !m.skipped).length, 'one read-only loop device per mounted partition');
    t.ok(
      loopDevicesOn(mbr.path).every((l) => /offset 1048576|offset 68157440/.test(l)),
      'attached by offset, not by partition scanning',
    );

    const info = readFileSync('/proc/self/mountinfo', 'utf8')
      .split('\n')
      .find((l) => l.split(' ')[4] === p1.path)!;
    const opts = info.split(' ')[5]!.split(',');
    for (const opt of ['ro', 'nodev', 'nosuid', 'noexec']) t.ok(opts.includes(opt), `mounted ${opt}`);
    t.throws(() => writeFileSync(join(p1.path, 'new.txt'), 'x'), { code: 'EROFS' }, 'the guest filesystem cannot be written');

    const root = await listGuestPath(p1.path, '/');
    t.match(
      root.find((e) => e.name === 'hello.txt'),
      { type: 'file', size: 21, path: '/hello.txt', mode: '0644' },
    );
    t.match(
      root.find((e) => e.name === 'data'),
      { type: 'directory' },
    );
    t.match(
      root.find((e) => e.name === 'passwd-link'),
      { type: 'symlink', target: '/etc/passwd' },
      'listed as a symlink, not followed',
    );
    t.match(await listGuestPath(p1.path, '/data/docs/readme.txt'), [{ name: 'readme.txt', size: 23 }]);

    const blob = join(work, 'blob.bin');
    const got = await getGuestPath(p1.path, '/data/blob.bin', blob);
    t.equal(got.bytes, 3 * 1024 * 1024 + 123);
    t.equal(sha(readFileSync(blob)), mbr.files.sha256['/data/blob.bin'], 'the extracted file has the guest bytes');
    const viaLink = join(work, 'readme-via-link.txt');
    await getGuestPath(p1.path, '/docs-link/readme.txt', viaLink);
    t.equal(sha(readFileSync(viaLink)), mbr.files.sha256['/data/docs/readme.txt'], 'a relative symlink inside the partition is followed');

    const tarFile = join(work, 'data.tar');
    const tr = await getGuestPath(p1.path, '/data', tarFile);
    t.match(tr, { format: 'tar', files: 3, directories: 2, symlinks: 2 });
    const entries = await untar(tarFile);
    t.equal(entries.get('data/blob.bin')?.sha, mbr.files.sha256['/data/blob.bin']);
    t.equal(entries.get('data/docs/readme.txt')?.sha, mbr.files.sha256['/data/docs/readme.txt']);
    t.match(entries.get('data/docs'), { type: 'directory' });
    t.match(
      entries.get('data/climb-link'),
      { type: 'symlink', linkname: '../../../../etc/passwd' },
      'symlinks go into the tar as links, never followed',
    );

    const refused = { code: 'PATH_TRAVERSAL', exitCode: 2 };
    t.match(await failure(getGuestPath(p1.path, '/passwd-link', join(work, 'x1'))), {
      ...refused,
      message: /absolute symlink \(to \/etc\/passwd\)/,
    });
    t.match(await failure(getGuestPath(p1.path, '/../../etc/passwd', join(work, 'x2'))), { ...refused, message: /climbs above the root/ });
    t.match(await failure(getGuestPath(p1.path, 'data/../../etc/passwd', join(work, 'x3'))), refused);
    t.match(await failure(getGuestPath(p1.path, '/data/climb-link', join(work, 'x4'))), {
      ...refused,
      message: /points outside the partition/,
    });
    t.match(await failure(listGuestPath(p1.path, '/passwd-link/..')), refused, 'not even as an intermediate component');
    t.notOk(existsSync(join(work, 'x1')) || existsSync(join(work, 'x2')), 'nothing written for a refused path');
    t.match(await failure(listGuestPath(p1.path, '/no/such')), { code: 'GUEST_PATH_NOT_FOUND', exitCode: 5 });

    const r = await umountSession(stateDir, dir);
    t.equal(r.id, s.id);
    t.same(leftovers(), { loops: [], mounts: [], sessions: 0 }, 'no loop device, mount or session left');
    t.notOk(existsSync(dir), 'the mount directory we created is removed');
  },
);

t.test('GPT disk with xfs: mounted ro,norecovery; a file comes out with its bytes', async (t) => {
  const dir = join(work, 'mnt-gpt');
  const s = await mountDisks({ stateDir, dir, disks: [{ name: 'vda', path: gpt.path }] });
  t.same(
    s.mounts.map((m) => [m.partition, m.fstype, m.path]),
    [[1, 'xfs', join(dir, 'p1')]],
  );
  const info = readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .find((l) => l.split(' ')[4] === join(dir, 'p1'))!;
  t.match(info, /norecovery/, 'xfs log recovery is off');
  const out = join(work, 'gpt-hello.txt');
  await getGuestPath(join(dir, 'p1'), '/hello.txt', out);
  t.equal(sha(readFileSync(out)), gpt.files.sha256['/hello.txt']);
  await umountSession(stateDir, s.id);
  t.same(leftovers(), { loops: [], mounts: [], sessions: 0 });
});

t.test('a disk without a table but with ext4 at byte 0 is partition 0', async (t) => {
  const dir = join(work, 'mnt-whole');
  const s = await mountDisks({ stateDir, dir, disks: [{ name: 'sdb', path: whole.path }] });
  t.same(
    s.mounts.map((m) => [m.partition, m.fstype]),
    [[0, 'ext4']],
  );
  t.match(await listGuestPath(join(dir, 'p0'), '/data/docs'), [{ name: 'empty', size: 0 }, { name: 'readme.txt' }]);
  await umountSession(stateDir, dir);
  t.same(leftovers(), { loops: [], mounts: [], sessions: 0 });
});

t.test('bad inputs fail cleanly, leaving nothing behind', async (t) => {
  const dir = join(work, 'mnt-bad');
  t.match(await failure(mountDisks({ stateDir, dir, disks: [{ name: 'sdx', path: unknown }] })), {
    code: 'UNKNOWN_FILESYSTEM',
    exitCode: 2,
    message: /disk sdx: nothing to mount \(partition 1: unknown filesystem\)/,
    hint: /ext2\/3\/4, xfs, btrfs and vfat/,
  });
  t.same(leftovers(), { loops: [], mounts: [], sessions: 0 }, 'unknown filesystem: clean');
  t.notOk(existsSync(dir));

  const corrupt = join(work, 'corrupt.raw');
  copyFileSync(mbr.path, corrupt);
  const fd = openSync(corrupt, 'r+');
  const sizeField = Buffer.alloc(4);
  sizeField.writeUInt32LE(0x7fffffff);
  writeSync(fd, sizeField, 0, 4, 446 + 16 + 12); // partition 2 now runs far past the end
  closeSync(fd);
  t.match(await failure(mountDisks({ stateDir, dir, disks: [{ name: 'sdc', path: corrupt }] })), {
    code: 'CORRUPT_PARTITION_TABLE',
    exitCode: 2,
    message: /partition 2 .* past the end/,
  });
  t.same(leftovers(), { loops: [], mounts: [], sessions: 0 }, 'corrupt table: clean');
  t.same(loopDevicesOn(corrupt), []);

  mkdirSync(dir);
  writeFileSync(join(dir, 'somebody-elses-file'), 'x');
  t.match(await failure(mountDisks({ stateDir, dir, disks: [{ name: 'sda', path: mbr.path }] })), {
    code: 'MOUNT_POINT_IN_USE',
    exitCode: 6,
    message: /not empty/,
  });
  rmSync(join(dir, 'somebody-elses-file'));
  execFileSync('mount', ['-t', 'tmpfs', 'tmpfs', dir]);
  t.match(await failure(mountDisks({ stateDir, dir, disks: [{ name: 'sda', path: mbr.path }] })), {
    code: 'MOUNT_POINT_IN_USE',
    message: /something is mounted there/,
  });
  execFileSync('umount', [dir]);
  t.same(leftovers(), { loops: [], mounts: [], sessions: 0 }, 'mount point in use: clean');
  t.ok(existsSync(dir), 'a directory we did not create is left alone');

  const s = await mountDisks({ stateDir, dir, disks: [{ name: 'sda', path: mbr.path }], partition: 1 });
  t.equal(s.mounts.length, 1, '--partition mounts only that partition');
  t.match(await failure(mountDisks({ stateDir, dir, disks: [{ name: 'sda', path: whole.path }] })), {
    code: 'MOUNT_POINT_IN_USE',
    exitCode: 6,
  });
  await umountSession(stateDir, s.id);
  t.match(await failure(umountSession(stateDir, s.id)), { code: 'FLR_SESSION_NOT_FOUND', exitCode: 5 });
  t.match(await failure(mountDisks({ stateDir, dir, disks: [{ name: 'sda', path: mbr.path }], partition: 7 })), {
    code: 'PARTITION_NOT_FOUND',
    message: /has no partition 7/,
  });
  t.same(leftovers(), { loops: [], mounts: [], sessions: 0 });
});

t.test('a mount that fails half-way undoes the partitions it already mounted', async (t) => {
  const broken = join(work, 'half.raw');
  copyFileSync(mbr.path, broken);
  // Partition 2 (vfat) gets an ext4 magic over a nonsense superblock: probed as
  // ext4, refused by the kernel, after partition 1 is already mounted.
  const sb = Buffer.alloc(1024);
  sb.writeUInt32LE(0xffffffff, 24); // s_log_block_size: absurd
  sb.writeUInt16LE(0xef53, 56);
  const fd = openSync(broken, 'r+');
  writeSync(fd, sb, 0, 1024, 133120 * 512 + 1024);
  closeSync(fd);
  const dir = join(work, 'mnt-half');
  t.match(await failure(mountDisks({ stateDir, dir, disks: [{ name: 'sda', path: broken }] })), {
    code: 'MOUNT_FAILED',
    message: /cannot mount .* \(ext4, ro,noload,nodev,nosuid,noexec\)/,
  });
  t.same(loopDevicesOn(broken), [], 'no loop device left');
  t.same(leftovers(), { loops: [], mounts: [], sessions: 0 }, 'no mount or session left');
  t.notOk(existsSync(dir));
  t.same(readdirSync(join(stateDir, 'flr')), [], 'no journal left');
});

t.test('a logical partition in an extended partition mounts as p5', async (t) => {
  const dir = join(work, 'mnt-logical');
  const s = await mountDisks({ stateDir, dir, disks: [{ name: 'sdd', path: logical.path }] });
  t.same(
    s.mounts.map((m) => [m.partition, m.fstype, m.path]),
    [[5, 'ext4', join(dir, 'p5')]],
  );
  const out = join(work, 'logical-blob.bin');
  await getGuestPath(join(dir, 'p5'), '/data/blob.bin', out);
  t.equal(sha(readFileSync(out)), logical.files.sha256['/data/blob.bin']);
  await umountSession(stateDir, dir);
  t.same(leftovers(), { loops: [], mounts: [], sessions: 0 });
});

t.test('several disks mount at <dir>/<disk>/p<N>', async (t) => {
  const dir = join(work, 'mnt-multi');
  const s = await mountDisks({
    stateDir,
    dir,
    disks: [
      { name: 'sda', path: whole.path },
      { name: 'sdb', path: gpt.path },
    ],
  });
  t.same(
    s.mounts.map((m) => [m.disk, m.partition, m.path]),
    [
      ['sda', 0, join(dir, 'sda', 'p0')],
      ['sdb', 1, join(dir, 'sdb', 'p1')],
    ],
  );
  t.match(await listGuestPath(join(dir, 'sdb', 'p1'), '/hello.txt'), [{ size: 21 }]);
  await umountSession(stateDir, dir);
  t.same(leftovers(), { loops: [], mounts: [], sessions: 0 });
  t.notOk(existsSync(dir), 'the per-disk directories and the root are removed');
});

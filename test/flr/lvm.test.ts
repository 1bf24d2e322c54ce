// File-level restore of a guest that keeps its root on LVM, as installers lay
// it out: the logical volumes are found from the physical volume's own
// metadata (no device-mapper, no host LVM state), a volume in one piece is
// mounted at <dir>/<vg>/<lv>, and the ones that would need device-mapper are
// listed with the reason. LVM's own tools (on a loop device, with a private
// configuration) build the disk and say where each volume lies. Also the bad
// inputs: damaged metadata, hostile names and nesting.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, openSync, readFileSync, readSync, writeSync, closeSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { inspectDisk } from '../../src/flr/backend.js';
import { lvmCrc, parseLvmConfig } from '../../src/flr/lvm.js';
import { mountDisks, umountSession } from '../../src/flr/mount.js';
import { initRepository } from '../../src/repo/repository.js';
import { backupVm } from '../../src/backup/engine.js';
import { buildLvmDisk, loopDevicesOn, sha, mountsBelow, removeFlrWork } from './fixtures/disks.js';

const bin = fileURLToPath(new URL('../../../bin/restorelab.js', import.meta.url));
const work = mkdtempSync(join(tmpdir(), 'flr-lvm-test-'));
const stateDir = join(work, 'state');
const disk = buildLvmDisk(work);

t.teardown(() => removeFlrWork(stateDir, work));

t.test('the logical volumes are found where LVM itself says they are', async (t) => {
  const info = await inspectDisk(disk.path);
  const rows = info.partitions.map((p) => ({
    number: p.number,
    volume: p.volume,
    offset: p.offset,
    size: p.size,
    fstype: p.filesystem?.fstype,
    unreadable: p.unreadable,
  }));
  t.match(rows[0], { number: 1, volume: undefined, fstype: 'ext4' }, 'p1, /boot, is a partition as before');
  t.match(
    rows.find((r) => r.volume === 'guestvg/root'),
    { number: 2, offset: disk.volumes.root!.offset, size: disk.volumes.root!.size, fstype: 'ext4', unreadable: undefined },
    'root: one piece, at the offset pvs/lvs report',
  );
  t.match(
    rows.find((r) => r.volume === 'guestvg/gap'),
    { number: 2, offset: disk.volumes.gap!.offset, size: disk.volumes.gap!.size, fstype: undefined, unreadable: undefined },
  );
  t.match(rows.find((r) => r.volume === 'guestvg/var')?.unreadable, /2 pieces/, 'var, extended after gap, needs device-mapper: said so');
  t.notOk(
    rows.some((r) => r.number === 2 && r.volume === undefined),
    'the physical volume itself is replaced by its volumes',
  );
});

t.test('a disk that is one physical volume, without a partition table: its volumes are in partition 0', async (t) => {
  const whole = join(work, 'whole-pv.raw');
  spawnSync('dd', [`if=${disk.path}`, `of=${whole}`, 'bs=512', `skip=${disk.pvOffset / 512}`, 'status=none']);
  const info = await inspectDisk(whole);
  t.equal(info.scheme, 'none');
  t.match(
    info.partitions.find((p) => p.volume === 'guestvg/root'),
    { number: 0, offset: disk.volumes.root!.offset - disk.pvOffset, filesystem: { fstype: 'ext4' } },
  );
});

t.test('mount: a volume in one piece at <dir>/<vg>/<lv>, read-only, with the bytes the guest wrote; umount leaves nothing', async (t) => {
  const dir = join(work, 'mnt');
  const s = await mountDisks({ stateDir, dir, disks: [{ name: 'vda', path: disk.path }] });
  const root = s.mounts.find((m) => m.volume === 'guestvg/root');
  t.match(root, { disk: 'vda', partition: 2, fstype: 'ext4', path: join(dir, 'guestvg', 'root') });
  t.notOk(root?.skipped);
  t.match(
    s.mounts.find((m) => m.partition === 1),
    { fstype: 'ext4', path: join(dir, 'p1') },
  );
  t.match(
    s.mounts.find((m) => m.volume === 'guestvg/gap'),
    { path: '', skipped: 'unknown filesystem' },
  );
  t.match(
    s.mounts.find((m) => m.volume === 'guestvg/var'),
    { path: '', skipped: /LVM logical volume stored in 2 pieces/ },
  );
  for (const [p, digest] of Object.entries(disk.files.sha256))
    t.equal(sha(readFileSync(join(dir, 'guestvg', 'root', p))), digest, `${p} has the guest's bytes`);
  const line = readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .find((l) => l.split(' ')[4] === join(dir, 'guestvg', 'root'));
  t.match(line, / ro[, ]/, 'mounted read-only');
  const only = await mountDisks({ stateDir, dir: join(work, 'only'), disks: [{ name: 'vda', path: disk.path }], partition: 2 });
  t.same(
    only.mounts.filter((m) => !m.skipped).map((m) => m.volume),
    ['guestvg/root'],
    '--partition 2 selects the volumes of the physical volume in partition 2',
  );
  await umountSession(stateDir, only.id);
  await umountSession(stateDir, s.id);
  t.same(mountsBelow(work), [], 'no mount left');
  t.same(loopDevicesOn(disk.path), [], 'no loop device left');
  t.notOk(existsSync(join(dir, 'guestvg')), 'the directories it made are gone');
});

t.test('damaged metadata: the physical volume is listed as unreadable, with why, and the other partitions still mount', async (t) => {
  const damaged = join(work, 'damaged.raw');
  copyFileSync(disk.path, damaged);
  const fd = openSync(damaged, 'r+');
  const b = Buffer.alloc(1);
  readSync(fd, b, 0, 1, disk.metadataText + 20);
  writeSync(fd, Buffer.from([b[0]! ^ 0x01]), 0, 1, disk.metadataText + 20);
  closeSync(fd);
  const info = await inspectDisk(damaged);
  t.match(
    info.partitions.find((p) => p.number === 2),
    { volume: undefined, unreadable: /metadata text fails its checksum/ },
  );
  const dir = join(work, 'damaged-mnt');
  const s = await mountDisks({ stateDir, dir, disks: [{ name: 'vda', path: damaged }] });
  t.match(
    s.mounts.find((m) => m.partition === 2),
    { fstype: 'LVM2_member', path: '', skipped: /checksum/ },
  );
  t.ok(s.mounts.find((m) => m.partition === 1)?.path, 'p1 mounted');
  await umountSession(stateDir, s.id);
});

t.test('the metadata parser: LVM syntax, and hostile text refused or bounded', async (t) => {
  const cfg = parseLvmConfig(
    '# comment\nvg0 {\n id = "a-b"\n extent_size = 8192 # sectors\n status = ["READ", "WRITE"]\n empty = []\n name = "say \\"hi\\""\n __proto__ { x = 1 }\n}\nversion = 1\n',
  );
  const vg = cfg.get('vg0') as Map<string, unknown>;
  t.equal(vg.get('extent_size'), 8192);
  t.same(vg.get('status'), ['READ', 'WRITE']);
  t.same(vg.get('empty'), []);
  t.equal(vg.get('name'), 'say "hi"', 'escaped quotes');
  t.ok(vg.get('__proto__') instanceof Map, '__proto__ is only a key');
  t.equal(({} as Record<string, unknown>).x, undefined, 'no prototype was touched');
  t.throws(() => parseLvmConfig('a {'.repeat(100)), /nested too deep/);
  t.throws(() => parseLvmConfig(`a = ${'['.repeat(100)}`), /nested too deep/);
  t.throws(() => parseLvmConfig('a = "open'), /not closed/);
  t.throws(() => parseLvmConfig('a { b = 1'), /not closed/);
  t.throws(() => parseLvmConfig('}'), /closes no section/);
  t.throws(() => parseLvmConfig('a = 99999999999999999999'), /not a value/);
  t.throws(() => parseLvmConfig('../x = 1'), /not a name/);
  t.equal(lvmCrc(Buffer.alloc(0)), 0xf597a6cf, "the CRC starts from LVM's seed");
});

t.test('end to end: backed up, then `restorelab mount` and `files get` reach a file on the root volume', async (t) => {
  const repoDir = join(work, 'repo');
  const repo = await initRepository(repoDir);
  const point = await backupVm({
    repo,
    vm: { name: 'lvm-guest', memoryMiB: 256, vcpus: 1, disks: [{ name: 'vda', format: 'raw' }], nics: [] },
    disks: { vda: disk.path },
  });
  const env = { ...process.env, RESTORELAB_STATE_DIR: stateDir };
  const out = join(work, 'readme.txt');
  const get = spawnSync(
    process.execPath,
    [bin, 'files', 'get', '--repo', repoDir, point.id, '/data/docs/readme.txt', '--to', out, '--json'],
    {
      encoding: 'utf8',
      env,
      timeout: 300_000,
    },
  );
  t.equal(get.status, 0, get.stderr);
  t.match(JSON.parse(get.stdout || '{}'), { disk: 'vda', partition: 2, volume: 'guestvg/root', format: 'file' });
  t.equal(sha(readFileSync(out)), disk.files.sha256['/data/docs/readme.txt'], 'the bytes the guest wrote');
  const dir = join(work, 'cli-mnt');
  const m = spawnSync(process.execPath, [bin, 'mount', '--repo', repoDir, point.id, dir], { encoding: 'utf8', env, timeout: 300_000 });
  t.equal(m.status, 0, m.stderr);
  t.match(m.stdout, /vda partition 2, LVM volume guestvg\/root \(ext4\): .*guestvg\/root/, 'the human listing names the volume');
  t.match(m.stdout, /guestvg\/var \(unknown\): not mounted: LVM logical volume stored in 2 pieces/);
  t.equal(readFileSync(join(dir, 'guestvg', 'root', 'hello.txt'), 'utf8'), 'hello from the guest\n');
  const u = spawnSync(process.execPath, [bin, 'umount', dir, '--json'], { encoding: 'utf8', env, timeout: 120_000 });
  t.equal(u.status, 0, u.stderr);
  t.same(mountsBelow(work), [], 'nothing left mounted');
});

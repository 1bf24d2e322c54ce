import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, open, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { backupVm } from '../../src/backup/engine.js';
import { restoreDisk } from '../../src/backup/restore.js';
import { initRepository, openRepository } from '../../src/repo/index.js';
import { loadVmDefinition } from '../../src/vm/definition.js';
import { exec } from '../../src/host/exec.js';
import { RestorelabError } from '../../src/errors.js';
import { guestImage } from '../helpers/guests.js';
import { changeRegions, convert, makeGuestImage, sha256File } from './fixtures/images.js';
import { chunkFiles, snapshot } from './fixtures/repo-state.js';
import { backupWork, KiB, MiB, qemu, vmDef } from './fixtures/backup-work.js';

const { work, restoredSha } = await backupWork(t);

t.test('a built guest restores bit-identically from raw and qcow2 sources, to raw and qcow2', async (t) => {
  const web = await guestImage('web');
  const want = await sha256File(web);
  const repoDir = join(work, 'rt-repo');
  const repo = await initRepository(repoDir);
  const p1 = await backupVm({ repo, vm: vmDef('web', [{ name: 'root', format: 'raw' }]), disks: { root: web } });
  t.equal(p1.stats.bytesNew + p1.stats.bytesReused + p1.stats.bytesZero, p1.disks[0]?.size, 'every byte is new, reused or zero');
  t.ok(p1.stats.bytesZero > 0, 'the guest has zero chunks');
  t.equal(await restoredSha(repoDir, p1.id, 'raw'), want, 'raw restore is bit-identical');
  t.equal(await restoredSha(repoDir, p1.id, 'qcow2'), want, 'qcow2 restore is bit-identical');

  // A qcow2 with a backing chain: the top layer changes 1 MiB of the base.
  const base = join(work, 'base.qcow2');
  const top = join(work, 'top.qcow2');
  await convert(web, base, 'qcow2');
  await qemu('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top]);
  await qemu('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0xab 8M 1M', top]);
  const flat = join(work, 'top-flat.raw');
  await qemu('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', top, flat]);
  const p2 = await backupVm({ repo, vm: vmDef('web'), disks: { root: top } });
  t.equal(p2.parent, p1.id, 'the parent is the latest point of the VM');
  t.equal(p2.stats.bytesNew, repo.config.chunkSize, 'only the one changed chunk is new');
  t.equal(await restoredSha(repoDir, p2.id, 'raw'), await sha256File(flat), 'the backing chain restores as the guest sees it');
});

t.test('a second backup with 1% of blocks changed writes about 1% new data', async (t) => {
  const img = join(work, 'inc.raw');
  await makeGuestImage(img, 128, 64);
  const repoDir = join(work, 'inc-repo');
  const repo = await initRepository(repoDir, { chunkSize: 256 * KiB });
  const vm = vmDef('inc', [{ name: 'root', format: 'raw' }]);
  const p1 = await backupVm({ repo, vm, disks: { root: img } });
  const before = (await snapshot(repoDir)).length;
  await changeRegions(img, 256 * KiB, 5);
  const p2 = await backupVm({ repo, vm, disks: { root: img } });
  const size = 128 * MiB;
  t.equal(p2.stats.bytesNew + p2.stats.bytesReused + p2.stats.bytesZero, size);
  t.ok(p2.stats.bytesNew >= 0.005 * size && p2.stats.bytesNew <= 0.02 * size, `new bytes ${p2.stats.bytesNew} are about 1% of ${size}`);
  t.ok(p2.stats.bytesReused > 0.3 * size, 'the rest is reused');
  // 5 new chunks, one index and one manifest.
  t.ok((await snapshot(repoDir)).length - before <= 7, 'only the changed chunks were stored');
  t.equal(await restoredSha(repoDir, p2.id), await sha256File(img), 'the new point restores the changed image');
  t.not(await restoredSha(repoDir, p1.id), await sha256File(img), 'the old point still restores the old image');
});

t.test('zero regions cost no storage, holes or written zeros alike', async (t) => {
  const img = join(work, 'sparse.raw');
  const fh = await open(img, 'w');
  await fh.truncate(256 * MiB);
  await fh.write(Buffer.alloc(16 * MiB), 0, 16 * MiB, 32 * MiB); // allocated, but zero
  const data = Buffer.alloc(MiB, 0x5a);
  await fh.write(data, 0, MiB, 100 * MiB);
  await fh.close();
  const repoDir = join(work, 'sparse-repo');
  const repo = await initRepository(repoDir);
  const p = await backupVm({ repo, vm: vmDef('sparse', [{ name: 'root', format: 'raw' }]), disks: { root: img } });
  const chunk = repo.config.chunkSize;
  t.equal(p.stats.bytesZero, 256 * MiB - chunk, 'all but the one data chunk are zero');
  t.equal(p.stats.bytesRead, 16 * MiB + chunk, 'holes are not read; allocated zeros are read once');
  t.equal((await chunkFiles(repoDir)).length, 1, 'one chunk stored');
  const out = join(work, 'sparse-out.raw');
  await restoreDisk({ repo, point: p.id, disk: 'root', to: out });
  t.equal(await sha256File(out), await sha256File(img));
  const du = await exec('du', ['-k', out]);
  t.ok(Number(du.stdout.split('\t')[0]) <= 8 * 1024, `the restored file is sparse (${du.stdout.trim()})`);
});

t.test('bad input gets a clear error and leaves the repository unchanged', async (t) => {
  const repoDir = join(work, 'bad-repo');
  const repo = await initRepository(repoDir);
  const web = await guestImage('web');
  await backupVm({ repo, vm: vmDef('web', [{ name: 'root', format: 'raw' }]), disks: { root: web } });
  const before = await snapshot(repoDir);
  const garbage = join(work, 'garbage.vmdk');
  await writeFile(garbage, Buffer.alloc(3 * MiB, 0x41));
  const truncated = join(work, 'truncated.qcow2');
  await convert(web, join(work, 'full.qcow2'), 'qcow2');
  const full = await readFile(join(work, 'full.qcow2'));
  await writeFile(truncated, full.subarray(0, Math.floor(full.length / 2)));
  const cases: [string, () => Promise<unknown>, RegExp][] = [
    [
      'missing image',
      () => backupVm({ repo, vm: vmDef('web'), disks: { root: join(work, 'nope.raw') } }),
      /IMAGE_NOT_FOUND|does not exist/,
    ],
    [
      'format qemu cannot open',
      () => backupVm({ repo, vm: vmDef('web', [{ name: 'root', format: 'vmdk' }]), disks: { root: garbage } }),
      /not a vmdk image|cannot open/,
    ],
    ['truncated qcow2', () => backupVm({ repo, vm: vmDef('web'), disks: { root: truncated } }), /truncated/],
    [
      'disk not given',
      () => backupVm({ repo, vm: vmDef('web', [{ name: 'root' }, { name: 'data' }]), disks: { root: web } }),
      /disk "data" of VM web has no image/,
    ],
    [
      'unknown disk given',
      () => backupVm({ repo, vm: vmDef('web'), disks: { root: web, swap: web } }),
      /disk "swap" is not in the definition/,
    ],
  ];
  for (const [what, run, msg] of cases) {
    const err = await run().then(
      () => undefined,
      (e: unknown) => e as { code?: string; message: string; hint?: string },
    );
    t.ok(err, `${what}: rejected`);
    t.match(err?.message ?? '', msg, `${what}: says what is wrong`);
    t.ok(err?.hint, `${what}: has a hint`);
    t.same(await snapshot(repoDir), before, `${what}: repository unchanged`);
  }
  const vmFile = join(work, 'bad-vm.json');
  await writeFile(vmFile, JSON.stringify({ name: 'web', memoryMiB: 'lots', vcpus: 1, disks: [{ name: 'root' }], nics: [] }));
  t.throws(() => loadVmDefinition(vmFile), /\/memoryMiB: must be integer/, 'a schema-failing VM definition names the field');

  const cfgPath = join(repoDir, 'config.json');
  const cfg = JSON.parse(await readFile(cfgPath, 'utf8')) as Record<string, unknown>;
  await writeFile(cfgPath, JSON.stringify({ ...cfg, version: 99 }));
  const before2 = await snapshot(repoDir);
  await t.rejects(openRepository(repoDir), /format version 99 is newer/, 'an unknown repository version is refused');
  t.same(await snapshot(repoDir), before2, 'unknown version: repository unchanged');
});

t.test('encrypted repository: round trip, keyed digests, wrong and missing key rejected', async (t) => {
  const web = await guestImage('web');
  const repoDir = join(work, 'enc-repo');
  const keyFile = join(work, 'repo.key');
  const repo = await initRepository(repoDir, { keyFile });
  const p = await backupVm({ repo, vm: vmDef('web', [{ name: 'root', format: 'raw' }]), disks: { root: web } });
  t.equal(await restoredSha(repoDir, p.id, 'raw', keyFile), await sha256File(web), 'restores bit-identically with the key');
  // The first 4 MiB of the guest (MBR + boot area) is data: its plain SHA-256 must not name a chunk.
  const first = (await readFile(web)).subarray(0, 4 * MiB);
  const plainDigest = createHash('sha256').update(first).digest('hex');
  t.notOk(
    (await chunkFiles(repoDir)).some((f) => f.endsWith(plainDigest)),
    'chunk names do not leak plaintext hashes',
  );
  const chunk = await readFile(join(repoDir, 'chunks', ...((await chunkFiles(repoDir))[0] as string).split('/')));
  t.equal(chunk.indexOf(Buffer.from('restorelab test')), -1, 'no plaintext in blobs');
  const wrong = join(work, 'wrong.key');
  await writeFile(wrong, 'ab'.repeat(32) + '\n');
  await t.rejects(openRepository(repoDir, { keyFile: wrong }), /does not match/, 'a wrong key is rejected');
  await t.rejects(openRepository(repoDir), /is encrypted: its key is needed/, 'no key: a clear error');
});

t.test('a full repository file system fails the backup with REPO_FULL: no point, no chunk, no temp file left', async (t) => {
  // The chunk workers write the blobs themselves (ChunkStore.insertPlaced): their ENOSPC must still read as a full repository.
  const mnt = join(work, 'full-mnt');
  await mkdir(mnt);
  const mounted = await exec('mount', ['-t', 'tmpfs', '-o', 'size=3m', 'rl-backup-full', mnt]);
  if (mounted.code !== 0) {
    t.fail(`mounting a 3 MiB tmpfs needs root and the mount command: ${mounted.stderr}`);
    return;
  }
  t.teardown(() => exec('umount', ['-l', mnt]));
  const repoDir = join(mnt, 'repo');
  const repo = await initRepository(repoDir, { chunkSize: 256 * KiB });
  const image = join(work, 'full-random.raw');
  await writeFile(image, randomBytes(8 * MiB));
  const err = (await backupVm({ repo, vm: vmDef('full', [{ name: 'root', format: 'raw' }]), disks: { root: image } }).catch(
    (e: unknown) => e,
  )) as RestorelabError;
  t.ok(err instanceof RestorelabError, `a RestorelabError, got ${String(err)}`);
  t.equal(err.code, 'REPO_FULL');
  t.match(err.message, repoDir);
  t.match(err.hint ?? '', /free space/);
  t.same(await repo.listPoints(), [], 'no point');
  t.same(await chunkFiles(repoDir), [], 'the chunks it stored were rolled back');
  t.same(
    (await snapshot(repoDir)).filter((f) => f.includes('.tmp-')),
    [],
    'no temp file left behind',
  );
});

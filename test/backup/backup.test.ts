import t, { type Test } from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { backupImages, backupVm } from '../../src/backup/engine.js';
import { openImage } from '../../src/ingest/open.js';
import type { ImageSource } from '../../src/ingest/contract.js';
import { restoreDisk } from '../../src/backup/restore.js';
import { initRepository, openRepository, verifyRepository } from '../../src/repo/index.js';
import type { VmDefinition } from '../../src/vm/definition.js';
import { loadVmDefinition } from '../../src/vm/definition.js';
import { exec } from '../../src/host/exec.js';
import { guestImage } from '../helpers/guests.js';
import { changeRegions, convert, makeGuestImage, sha256File } from './fixtures/images.js';
import { chunkFiles, snapshot } from './fixtures/repo-state.js';

const KiB = 1024;
const MiB = 1024 * KiB;
/** The engine touches unchanged chunks 256 at a time (REUSE_BATCH): the reuse test spans more than one batch. */
const REUSE_TEST_MIN = 256;

const work = await mkdtemp(join(tmpdir(), 'rl-backup-'));
t.teardown(() => rm(work, { recursive: true, force: true }));

function vmDef(name: string, disks: VmDefinition['disks'] = [{ name: 'root' }]): VmDefinition {
  return { name, memoryMiB: 256, vcpus: 1, disks, nics: [] };
}

async function qemu(tool: string, args: string[]): Promise<void> {
  const r = await exec(tool, args);
  if (r.code !== 0) throw new Error(`${tool} ${args.join(' ')}: ${r.stderr}`);
}

/** A tmpfs of `size` mounted for the test: a disk that fills up. */
async function smallDisk(t: Test, name: string, size: string): Promise<string> {
  const mnt = join(work, name);
  await qemu('mkdir', ['-p', mnt]);
  const m = await exec('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', mnt]);
  if (m.code !== 0) throw new Error(`this test needs to mount a tmpfs (root): ${m.stderr}`);
  t.teardown(async () => {
    await exec('umount', [mnt]);
  });
  return mnt;
}

async function restoredSha(repoDir: string, point: string, format: 'raw' | 'qcow2' = 'raw', keyFile?: string): Promise<string> {
  const repo = await openRepository(repoDir, keyFile ? { keyFile } : {});
  const to = join(work, `out-${point}.${format}`);
  await restoreDisk({ repo, point, disk: 'root', to, format });
  if (format === 'raw') return sha256File(to);
  const raw = `${to}.raw`;
  await qemu('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', to, raw]);
  return sha256File(raw);
}

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

t.test('a full disk (ENOSPC) fails the backup cleanly with nothing partial left', async (t) => {
  const mnt = await smallDisk(t, 'tiny', '6m');
  const img = join(work, 'enospc.raw');
  await makeGuestImage(img, 64, 32);
  const repoDir = join(mnt, 'repo');
  const repo = await initRepository(repoDir);
  const before = await snapshot(repoDir);
  const err = await backupVm({ repo, vm: vmDef('full', [{ name: 'root', format: 'raw' }]), disks: { root: img } }).then(
    () => undefined,
    (e: unknown) => e as Error,
  );
  t.ok(err, 'the backup fails');
  t.match(err?.message ?? '', /ENOSPC|no space/i, `it says the disk is full: ${err?.message}`);
  t.same(await snapshot(repoDir), before, 'no chunk, index, manifest, lock or temp file is left');
  t.same(await repo.listPoints(), [], 'no restore point is visible');
});

t.test('restore keeps zero runs inside a data chunk as holes, and the bytes are still identical', async (t) => {
  const img = join(work, 'holey.raw');
  const fh = await open(img, 'w');
  await fh.truncate(16 * MiB);
  // One 4 MiB chunk: 1 MiB of data, 2 MiB of written zeros, 1 MiB of data.
  await fh.write(Buffer.alloc(MiB, 0x11), 0, MiB, 0);
  await fh.write(Buffer.alloc(2 * MiB), 0, 2 * MiB, MiB);
  await fh.write(Buffer.alloc(MiB, 0x22), 0, MiB, 3 * MiB);
  await fh.close();
  const repo = await initRepository(join(work, 'holey-repo'));
  const p = await backupVm({ repo, vm: vmDef('holey', [{ name: 'root', format: 'raw' }]), disks: { root: img } });
  const out = join(work, 'holey-out.raw');
  const r = await restoreDisk({ repo, point: p.id, disk: 'root', to: out });
  t.equal(await sha256File(out), await sha256File(img), 'bit-identical');
  t.equal(r.bytesWritten, 2 * MiB, 'only the data blocks were written');
  const du = await exec('du', ['-k', out]);
  t.ok(Number(du.stdout.split('\t')[0]) <= 2 * 1024 + 64, `the zeros inside the chunk are holes (${du.stdout.trim()})`);
});

t.test('restore of a point with a corrupt chunk fails with RESTORE_CHUNK_CORRUPT and leaves no file', async (t) => {
  const img = join(work, 'rot.raw');
  await makeGuestImage(img, 32, 8);
  const repoDir = join(work, 'rot-repo');
  const repo = await initRepository(repoDir);
  const p = await backupVm({ repo, vm: vmDef('rot', [{ name: 'root', format: 'raw' }]), disks: { root: img } });
  for (const [what, damage] of [
    [
      'a flipped byte',
      (b: Buffer) => {
        b[b.length - 5] = (b[b.length - 5] as number) ^ 0x01;
        return b;
      },
    ],
    ['a truncated blob', (b: Buffer) => b.subarray(0, b.length >> 1)],
    ['an overlong blob', (b: Buffer) => Buffer.concat([b, Buffer.alloc(5 * MiB, 1)])],
  ] as const) {
    const file = join(repoDir, 'chunks', (await chunkFiles(repoDir))[0] as string);
    const good = await readFile(file);
    await writeFile(file, damage(Buffer.from(good)));
    const to = join(work, 'rot-out.raw');
    const err = await restoreDisk({ repo, point: p.id, disk: 'root', to }).then(
      () => undefined,
      (e: unknown) => e as { code?: string; message: string; hint?: string },
    );
    t.equal(err?.code, 'RESTORE_CHUNK_CORRUPT', `${what}: the restore fails as corrupt (${err?.message})`);
    t.ok(err?.hint, `${what}: with a hint`);
    t.same(
      (await exec('ls', ['-a', work])).stdout.split('\n').filter((n) => n.includes('rot-out')),
      [],
      `${what}: no output or temp file is left`,
    );
    await writeFile(file, good);
  }
  t.equal(await restoredSha(repoDir, p.id), await sha256File(img), 'the mended chunk restores again');
});

t.test('a backup that would reuse a damaged, missing or quarantined chunk writes a good copy instead', async (t) => {
  const img = join(work, 'heal.raw');
  await makeGuestImage(img, 32, 12);
  const repoDir = join(work, 'heal-repo');
  const repo = await initRepository(repoDir, { chunkSize: 256 * KiB });
  const vm = vmDef('heal', [{ name: 'root', format: 'raw' }]);
  const p1 = await backupVm({ repo, vm, disks: { root: img } });
  const files = await chunkFiles(repoDir);
  t.ok(files.length >= 4, `the first backup stored ${files.length} chunks`);
  const path = (f: string): string => join(repoDir, 'chunks', f);
  const digestOf = (f: string): string => f.split('/')[1] as string;
  const [flipped, crcOnly, missing, quarantined] = files.slice(0, 4) as [string, string, string, string];
  const goodCrcOnly = await readFile(path(crcOnly));
  const flip = async (f: string, at: (b: Buffer) => number): Promise<void> => {
    const b = await readFile(path(f));
    const i = at(b);
    b[i] = (b[i] as number) ^ 0x01;
    await writeFile(path(f), b);
  };
  await flip(flipped, (b) => b.length - 5); // a data byte: the blob no longer decodes
  await flip(crcOnly, () => 13); // the CRC field only: the data is good
  await rm(path(missing));
  await repo.chunks.quarantine(digestOf(quarantined));

  const warnings: string[] = [];
  const p2 = await backupVm({ repo, vm, disks: { root: img }, onWarning: (m) => warnings.push(m) });
  t.equal(p2.stats.bytesNew, 4 * 256 * KiB, 'exactly the four unusable chunks were written again');
  t.equal(
    warnings.filter((w) => / was damaged in the repository /.test(w)).length,
    2,
    `the two damaged blobs are reported: ${warnings.join(' | ')}`,
  );
  t.match(
    warnings.find((w) => w.includes(digestOf(flipped))),
    /kept the damaged one as .*\.bad/,
    'the damaged blob is kept in quarantine',
  );
  for (const f of [flipped, crcOnly, missing, quarantined]) {
    t.ok((await chunkFiles(repoDir)).includes(f), `${digestOf(f).slice(0, 12)}: a blob is stored again`);
  }
  t.ok(
    (await readFile(path(crcOnly))).equals(goodCrcOnly),
    'the CRC-damaged blob is a good copy again (byte-identical: same plaintext, same zstd)',
  );
  await t.rejects(readFile(path(crcOnly) + '.bad'), { code: 'ENOENT' }, 'a blob whose data was good is not kept as .bad');
  t.equal(await restoredSha(repoDir, p2.id), await sha256File(img), 'the new point restores bit-identically');
  const report = await verifyRepository(repo);
  t.same([report.ok, report.corrupt, report.repaired], [true, [], []], 'and the repository verifies clean, the old point included');
  t.equal(await restoredSha(repoDir, p1.id), await sha256File(img), 'the old point, which shares the chunks, is whole again');

  // Each digest is checked once per run: a third backup finds everything sound and writes nothing.
  const p3 = await backupVm({ repo, vm, disks: { root: img } });
  t.equal(p3.stats.bytesNew, 0, 'a third backup reuses every chunk');
});

t.test('restore to a full disk fails with RESTORE_WRITE_FAILED and leaves no partial file', async (t) => {
  const mnt = await smallDisk(t, 'tiny-target', '4m');
  const img = join(work, 'big-target.raw');
  await makeGuestImage(img, 32, 16);
  const repo = await initRepository(join(work, 'big-target-repo'));
  const p = await backupVm({ repo, vm: vmDef('big', [{ name: 'root', format: 'raw' }]), disks: { root: img } });
  const err = await restoreDisk({ repo, point: p.id, disk: 'root', to: join(mnt, 'out.raw') }).then(
    () => undefined,
    (e: unknown) => e as { code?: string; message: string; hint?: string },
  );
  t.equal(err?.code, 'RESTORE_WRITE_FAILED', `the restore fails (${err?.message})`);
  t.match(err?.hint ?? '', /free space/, 'and says to free space');
  t.same(
    (await exec('ls', ['-a', mnt])).stdout
      .trim()
      .split('\n')
      .filter((n) => n !== '.' && n !== '..'),
    [],
    'nothing is left on the target',
  );
});

t.test('a reuse plan takes unchanged chunks unread, and reads a chunk the store lost even when nothing changed', async (t) => {
  const img = join(work, 'reuse.raw');
  // Random data: every chunk distinct, more chunks than one touch batch, and a hole at the end.
  const fh = await open(img, 'w');
  await fh.write(randomBytes(300 * 256 * KiB), 0, undefined, 0);
  await fh.truncate(320 * 256 * KiB);
  await fh.close();
  const repoDir = join(work, 'reuse-repo');
  const repo = await initRepository(repoDir, { chunkSize: 256 * KiB });
  const vm = vmDef('reuse', [{ name: 'root', format: 'raw' }]);
  const p1 = await backupVm({ repo, vm, disks: { root: img } });
  const index = await repo.readIndex(p1.disks[0]?.indexDigest as string);
  const stored = index.digests.map((d, i) => ({ d, i })).filter((x): x is { d: string; i: number } => x.d !== null);
  t.ok(stored.length > REUSE_TEST_MIN, `the first point holds ${stored.length} data chunks (more than one touch batch)`);

  // The plan says nothing changed; one chunk is gone from the store.
  const lost = stored[Math.floor(stored.length / 2)] as { d: string; i: number };
  await rm(join(repoDir, 'chunks', lost.d.slice(0, 2), lost.d));
  const source = await openImage(img, { format: 'raw' });
  const reads: number[] = [];
  const counting: ImageSource = {
    size: source.size,
    format: source.format,
    extents: () => source.extents(),
    close: () => source.close(),
    read: (offset, length) => {
      reads.push(offset);
      return source.read(offset, length);
    },
  };
  try {
    const p2 = await backupImages({
      repo,
      vm,
      source: 'test',
      time: new Date(Date.parse(p1.time) + 1000).toISOString(),
      images: [{ name: 'root', source: counting, reuse: { index, changed: new Uint8Array(index.digests.length) } }],
    });
    t.same(reads, [lost.i * 256 * KiB], 'only the lost chunk was read');
    t.equal(p2.stats.bytesNew, 256 * KiB, 'and stored again');
    const again = await repo.readIndex(p2.disks[0]?.indexDigest as string);
    t.same(again.digests, index.digests, 'the new point has the same chunks as the old one');
    t.equal(await restoredSha(repoDir, p2.id), await sha256File(img), 'and restores bit-identically');
  } finally {
    await counting.close();
  }
});

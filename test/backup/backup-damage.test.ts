// The backup engine when things go wrong: full disks, corrupt, missing and
// quarantined chunks, and reuse plans that must notice a lost chunk.
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { open, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { backupImages, backupVm } from '../../src/backup/engine.js';
import { openImage } from '../../src/ingest/open.js';
import type { ImageSource } from '../../src/ingest/contract.js';
import { restoreDisk } from '../../src/backup/restore.js';
import { initRepository, verifyRepository } from '../../src/repo/index.js';
import { exec } from '../../src/host/exec.js';
import { makeGuestImage, sha256File } from './fixtures/images.js';
import { chunkFiles, snapshot } from './fixtures/repo-state.js';
import { backupWork, KiB, MiB, vmDef } from './fixtures/backup-work.js';

const { work, smallDisk, restoredSha } = await backupWork(t);
/** The engine touches unchanged chunks 256 at a time (REUSE_BATCH): the reuse test spans more than one batch. */
const REUSE_TEST_MIN = 256;

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

t.test('restore of a disk whose size is no multiple of 4 KiB: the short tail and every hole come back exact', async (t) => {
  // Full chunks are written with O_DIRECT where the file system takes it; the tail (1.5 KiB past a 4 KiB
  // boundary) cannot be, and goes through the page cache. Both must land, and nothing may show past the end.
  const size = 9 * MiB + 3 * 4 * KiB + 1536;
  const img = join(work, 'odd-size.raw');
  const fh = await open(img, 'w');
  await fh.truncate(size);
  await fh.write(randomBytes(MiB), 0, MiB, 0);
  await fh.write(Buffer.alloc(2 * MiB, 0x33), 0, 2 * MiB, 5 * MiB);
  await fh.write(randomBytes(3 * 4 * KiB + 1536), 0, 3 * 4 * KiB + 1536, 9 * MiB);
  await fh.close();
  const repo = await initRepository(join(work, 'odd-size-repo'));
  const p = await backupVm({ repo, vm: vmDef('odd', [{ name: 'root', format: 'raw' }]), disks: { root: img } });
  const out = join(work, 'odd-size-out.raw');
  const r = await restoreDisk({ repo, point: p.id, disk: 'root', to: out });
  t.equal(r.size, size);
  t.equal((await readFile(out)).length, size, 'the file is exactly the disk, no probe byte past its end');
  t.equal(await sha256File(out), await sha256File(img), 'bit-identical');
  t.equal(r.bytesWritten, 3 * MiB + 3 * 4 * KiB + 1536, 'only the data was written');
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

/** DecodePool over a real repository: the same bytes as in-process decoding; a corrupt chunk is EIO in the caller's thread too. */
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { initRepository, openRepository } from '../../src/repo/repository.js';
import { CHUNKS_DIR } from '../../src/repo/format.js';
import { backupVm } from '../../src/backup/engine.js';
import { DecodePool } from '../../src/disk/decode-pool.js';
import { DiskIoError, PublishedDisk } from '../../src/disk/published-disk.js';
import { patternBytes } from '../publish/fixtures/memory-repository.js';

const CHUNK = 256 * 1024;

t.test('chunks decoded in workers equal the image; corruption fails the read', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rl-pool-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const image = path.join(dir, 'disk.raw');
  const data = patternBytes(CHUNK * 6, 5);
  data.fill(0, CHUNK * 2, CHUNK * 3); // a hole
  fs.writeFileSync(image, data);
  const repo = await initRepository(path.join(dir, 'repo'), { chunkSize: CHUNK });
  const point = await backupVm({
    repo,
    vm: { name: 'p', memoryMiB: 64, vcpus: 1, disks: [{ name: 'sda', format: 'raw' }], nics: [] },
    disks: { sda: image },
  });
  const reader = await openRepository(path.join(dir, 'repo'));
  const source = await reader.openDisk(point.id, 'sda');
  const pool = new DecodePool(path.join(dir, 'repo'), { size: 2 });
  t.teardown(() => pool.close());
  const disk = new PublishedDisk(pool.wrap(source, point.id, 'sda'), { name: 'sda' });
  t.ok((await disk.read(0, data.length)).equals(data), 'whole disk through the pool');
  t.equal(await pool.decode(point.id, 'sda', 2), null, 'a hole is null');
  const slot = Buffer.from(new SharedArrayBuffer(CHUNK));
  const into = await pool.decode(point.id, 'sda', 1, slot);
  t.equal(into?.buffer, slot.buffer, 'decoded into the shared slot, not transferred');
  t.ok(into?.equals(data.subarray(CHUNK, CHUNK * 2)), "with the chunk's bytes");
  await t.rejects(pool.decode(point.id, 'sda', 1, Buffer.alloc(CHUNK)), TypeError, 'memory a worker cannot share is refused');

  const digest = source.chunkId(4)!;
  const file = path.join(dir, 'repo', CHUNKS_DIR, digest.slice(0, 2), digest);
  const blob = fs.readFileSync(file);
  blob.writeUInt8(blob.readUInt8(blob.length - 1) ^ 0xff, blob.length - 1);
  fs.chmodSync(file, 0o644);
  fs.writeFileSync(file, blob);
  const fresh = new PublishedDisk(pool.wrap(source, point.id, 'sda'), { name: 'sda', readaheadChunks: 0 });
  const err = await fresh.read(CHUNK * 4 + 10, 100).catch((e: unknown) => e);
  t.ok(err instanceof DiskIoError && err.code === 'EIO', `corrupt chunk: ${String(err)}`);
  t.ok((await fresh.read(CHUNK * 5, 100)).equals(data.subarray(CHUNK * 5, CHUNK * 5 + 100)), 'other chunks still read');
});

t.test('in the workers, a missing, quarantined or overlong blob is EIO too, and names why', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rl-pool-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const image = path.join(dir, 'disk.raw');
  const data = patternBytes(CHUNK * 4, 9);
  fs.writeFileSync(image, data);
  const repoDir = path.join(dir, 'repo');
  const repo = await initRepository(repoDir, { chunkSize: CHUNK });
  const point = await backupVm({
    repo,
    vm: { name: 'p', memoryMiB: 64, vcpus: 1, disks: [{ name: 'sda', format: 'raw' }], nics: [] },
    disks: { sda: image },
  });
  const source = await (await openRepository(repoDir)).openDisk(point.id, 'sda');
  const file = (i: number): string => path.join(repoDir, CHUNKS_DIR, source.chunkId(i)!.slice(0, 2), source.chunkId(i)!);
  fs.rmSync(file(0));
  fs.renameSync(file(1), `${file(1)}.bad`);
  fs.appendFileSync(file(2), Buffer.alloc(CHUNK + 100, 7));
  const pool = new DecodePool(repoDir, { size: 2 });
  t.teardown(() => pool.close());
  const disk = new PublishedDisk(pool.wrap(source, point.id, 'sda'), { name: 'sda', readaheadChunks: 0 });
  for (const [i, why] of [
    [0, /missing from the store/],
    [1, /quarantined by verify/],
    [2, /longer than any chunk/],
  ] as const) {
    const err = await disk.read(CHUNK * i, 10).catch((e: unknown) => e);
    t.ok(err instanceof DiskIoError && err.code === 'EIO', `chunk ${i}: EIO`);
    t.match(String(err), why, `chunk ${i}: ${String(err)}`);
  }
  t.ok((await disk.read(CHUNK * 3, CHUNK)).equals(data.subarray(CHUNK * 3)), 'the intact chunk still reads');
  const scratch = Buffer.alloc(CHUNK * 2);
  t.ok(source.readChunkSync?.(3, scratch)?.equals((await source.readChunk(3)) as Buffer), 'readChunkSync equals readChunk');
});

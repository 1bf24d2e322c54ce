/** DecodePool over a real repository: the same bytes as in-process decoding; a corrupt chunk is EIO in the caller's thread too. */
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { initRepository, openRepository } from '../../src/repo/repository.js';
import { randomBytes } from 'node:crypto';
import { CHUNK_HEADER_SIZE, CHUNKS_DIR } from '../../src/repo/format.js';
import { directSlotSize } from '../../src/repo/direct-read.js';
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

t.test('a chunk stored as is is read with O_DIRECT into the slot and served where it lies; a flipped byte is still EIO', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rl-pool-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const image = path.join(dir, 'disk.raw');
  // Chunk 0 random (stored as is), chunk 1 text (compressed), chunk 2 random and short (the disk's last).
  const data = Buffer.concat([randomBytes(CHUNK), Buffer.alloc(CHUNK, 'restorelab '), randomBytes(CHUNK / 2 + 7)]);
  fs.writeFileSync(image, data);
  const repoDir = path.join(dir, 'repo');
  const repo = await initRepository(repoDir, { chunkSize: CHUNK });
  const point = await backupVm({
    repo,
    vm: { name: 'p', memoryMiB: 64, vcpus: 1, disks: [{ name: 'sda', format: 'raw' }], nics: [] },
    disks: { sda: image },
  });
  const source = await (await openRepository(repoDir)).openDisk(point.id, 'sda');
  const pool = new DecodePool(repoDir, { size: 1 });
  t.teardown(() => pool.close());
  const wrapped = pool.wrap(source, point.id, 'sda');
  t.equal(wrapped.slotSize, directSlotSize(CHUNK), 'the pool asks for slots with room for a direct read');
  const slot = (): Buffer => Buffer.from(new SharedArrayBuffer(directSlotSize(CHUNK)));
  const raw = await wrapped.readChunkInto!(0, slot());
  t.ok(raw?.equals(data.subarray(0, CHUNK)), 'a random chunk reads back');
  // Its blob was read whole into the slot: the payload starts past the blob header, not copied to the slot's start.
  t.ok(raw!.byteOffset >= CHUNK_HEADER_SIZE, `served from where it was read (offset ${raw!.byteOffset})`);
  const packed = await wrapped.readChunkInto!(1, slot());
  t.equal(packed?.byteOffset, 0, 'a compressed chunk is decoded to the start of the slot');
  t.ok(packed?.equals(data.subarray(CHUNK, CHUNK * 2)), 'with its bytes');
  t.ok((await wrapped.readChunkInto!(2, slot()))?.equals(data.subarray(CHUNK * 2)), 'a short last chunk reads back');

  const digest = source.chunkId(0)!;
  const file = path.join(repoDir, CHUNKS_DIR, digest.slice(0, 2), digest);
  const blob = fs.readFileSync(file);
  blob.writeUInt8(blob.readUInt8(CHUNK_HEADER_SIZE + 1000) ^ 0x01, CHUNK_HEADER_SIZE + 1000);
  fs.chmodSync(file, 0o644);
  fs.writeFileSync(file, blob);
  const disk = new PublishedDisk(wrapped, { name: 'sda', readaheadChunks: 0 });
  const err = await disk.read(900, 200).catch((e: unknown) => e);
  t.ok(err instanceof DiskIoError && err.code === 'EIO', `a flipped byte: ${String(err)}`);
  t.match(String(err), /digest mismatch|CRC mismatch/, 'named as a failed check');
});

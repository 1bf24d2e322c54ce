import t from 'tap';
import { ChunkCache } from '../../src/disk/chunk-cache.js';
import { DiskIoError, PublishedDisk } from '../../src/disk/published-disk.js';
import { MemoryDiskSource, patternBytes } from '../publish/fixtures/memory-repository.js';
import { settle } from '../helpers/ready.js';

const CHUNK = 64 * 1024;

// Read-ahead runs in the background: the tests wait until it is done, at most 5 s.
const readAhead = (done: () => boolean): Promise<boolean> => settle(done, 5000, 2);

t.test('reads any range, across chunk boundaries and clamped at the end', async (t) => {
  const data = patternBytes(CHUNK * 5 + 1000);
  const disk = new PublishedDisk(new MemoryDiskSource(data, CHUNK));
  for (const [off, len] of [
    [0, 10],
    [CHUNK - 3, 7],
    [CHUNK * 2 - 100, CHUNK * 2 + 200],
    [data.length - 500, 4096],
    [0, data.length],
  ] as const) {
    const got = await disk.read(off, len);
    t.same(got.equals(data.subarray(off, Math.min(data.length, off + len))), true, `range ${off}+${len}`);
  }
  t.equal((await disk.read(data.length, 10)).length, 0, 'past the end is empty');
});

t.test('visit hands out the same bytes as read, in order, holes as zeros, clamped at the end', async (t) => {
  const data = patternBytes(CHUNK * 5 + 1000);
  data.fill(0, CHUNK * 2, CHUNK * 3);
  const disk = new PublishedDisk(new MemoryDiskSource(data, CHUNK, new Set([2])), { readaheadChunks: 0 });
  for (const [off, len] of [
    [0, 10],
    [CHUNK - 3, 7],
    [CHUNK * 2 - 100, CHUNK * 2 + 200],
    [data.length - 500, 4096],
    [0, data.length],
  ] as const) {
    const pieces: Buffer[] = [];
    const n = await disk.visit(off, len, (p) => void pieces.push(Buffer.from(p)));
    const want = data.subarray(off, Math.min(data.length, off + len));
    t.equal(n, want.length, `range ${off}+${len}: count`);
    t.ok(Buffer.concat(pieces).equals(want), `range ${off}+${len}: bytes`);
  }
  t.equal(await disk.visit(data.length, 10, () => t.fail('nothing to visit')), 0, 'past the end: nothing');
});

t.test('holes read as zeros without touching the store', async (t) => {
  const data = patternBytes(CHUNK * 4);
  data.fill(0, CHUNK, CHUNK * 2);
  const src = new MemoryDiskSource(data, CHUNK, new Set([1]));
  const disk = new PublishedDisk(src, { readaheadChunks: 0 });
  const got = await disk.read(CHUNK, CHUNK);
  t.ok(got.equals(Buffer.alloc(CHUNK)));
  t.equal(src.reads, 0, 'no chunk read for a hole');
  t.ok((await disk.read(CHUNK - 10, 20)).equals(data.subarray(CHUNK - 10, CHUNK + 10)));
  for (let i = 0; i < 5; i++) {
    // Multi-chunk reads build their buffer without zero-filling it first: the hole part must still be zeros.
    t.ok((await disk.read(CHUNK / 2, CHUNK * 2)).equals(data.subarray(CHUNK / 2, CHUNK / 2 + CHUNK * 2)), `across the hole, try ${i}`);
  }
});

t.test('the LRU stays within its byte bound and evicts the least recently used', async (t) => {
  const data = patternBytes(CHUNK * 8);
  const src = new MemoryDiskSource(data, CHUNK);
  const cache = new ChunkCache(CHUNK * 3);
  const disk = new PublishedDisk(src, { cache, readaheadChunks: 0 });
  for (let i = 0; i < 8; i++) {
    await disk.read(i * CHUNK + (i % 2 ? 17 : 0), 10);
    t.ok(cache.size <= CHUNK * 3, `bounded after chunk ${i}`);
  }
  t.equal(cache.count, 3);
  const before = src.reads;
  await disk.read(7 * CHUNK, 10);
  t.equal(src.reads, before, 'most recent chunk is a hit');
  await disk.read(0, 10);
  t.equal(src.reads, before + 1, 'evicted chunk is read again');
});

t.test('concurrent readers of one chunk share a single decode', async (t) => {
  const src = new MemoryDiskSource(patternBytes(CHUNK * 2), CHUNK);
  src.delayMs = 30;
  const disk = new PublishedDisk(src, { readaheadChunks: 0 });
  const reads = await Promise.all(Array.from({ length: 10 }, (_, i) => disk.read(i * 100, 50)));
  t.equal(src.reads, 1, 'one decode for ten readers');
  t.equal(reads.length, 10);
});

t.test('sequential access prefetches the next chunks, random access does not', async (t) => {
  const src = new MemoryDiskSource(patternBytes(CHUNK * 16), CHUNK);
  const disk = new PublishedDisk(src, { readaheadChunks: 2 });
  for (let off = 0; off < CHUNK * 2; off += 16384) await disk.read(off, 16384);
  await readAhead(() => disk.prefetched >= 2 && src.readsByIndex.get(3) === 1);
  t.ok(disk.prefetched >= 2, `prefetched ${disk.prefetched}`);
  t.equal(src.readsByIndex.get(2), 1, 'chunk 2 was read ahead');
  t.equal(src.readsByIndex.get(3), 1, 'chunk 3 was read ahead');
  await disk.read(CHUNK * 2, 16384);
  t.equal(src.readsByIndex.get(2), 1, 'the sequential reader finds the next chunk cached');

  // Random reads, each more than the sequential slack (2 MiB) away from the last.
  const src2 = new MemoryDiskSource(patternBytes(CHUNK * 256), CHUNK);
  const disk2 = new PublishedDisk(src2, { readaheadChunks: 2 });
  for (const i of [200, 10, 150, 60, 240]) await disk2.read(i * CHUNK + 100, 4096);
  t.equal(disk2.prefetched, 0, 'random reads prefetch nothing');
  t.equal(src2.reads, 5);
});

t.test('a stream read out of order, as a FUSE kernel reading ahead sends it, is still sequential', async (t) => {
  const src = new MemoryDiskSource(patternBytes(CHUNK * 16), CHUNK);
  const disk = new PublishedDisk(src, { readaheadChunks: 2 });
  // 16 KiB requests in flight four at a time, each batch answered backwards.
  for (let batch = 0; batch < CHUNK * 2; batch += 65536) {
    await Promise.all([3, 2, 1, 0].map((k) => disk.read(batch + k * 16384, 16384)));
  }
  await readAhead(() => src.readsByIndex.get(2) === 1 && src.readsByIndex.get(3) === 1);
  t.equal(src.readsByIndex.get(2), 1, 'chunk 2 was read ahead');
  t.equal(src.readsByIndex.get(3), 1, 'chunk 3 was read ahead');
});

t.test('a corrupt chunk fails with EIO, never wrong bytes, and is not cached', async (t) => {
  const src = new MemoryDiskSource(patternBytes(CHUNK * 3), CHUNK);
  src.corrupt.add(1);
  const disk = new PublishedDisk(src, { readaheadChunks: 0, name: 'sda' });
  await t.rejects(disk.read(CHUNK + 5, 10), DiskIoError);
  const err = await disk.read(CHUNK - 5, 10).catch((e: unknown) => e);
  t.ok(err instanceof DiskIoError && err.code === 'EIO' && /sda: chunk 1/.test(err.message), String(err));
  t.equal(src.readsByIndex.get(1), 2, 'the failed decode was retried, not cached');
  src.corrupt.clear();
  t.ok((await disk.read(CHUNK, 10)).equals(src.data.subarray(CHUNK, CHUNK + 10)), 'readable once repaired');
});

t.test('a sequential pass larger than the cache does not evict the chunk a random reader uses', async (t) => {
  const src = new MemoryDiskSource(patternBytes(CHUNK * 256), CHUNK);
  const cache = new ChunkCache(CHUNK * 16);
  const disk = new PublishedDisk(src, { cache, readaheadChunks: 0 });
  // Far (more than the sequential slack) from where the copy runs.
  await disk.read(200 * CHUNK + 5, 100);
  for (let off = 0; off < CHUNK * 64; off += 16384) await disk.read(off, 16384);
  t.equal(src.readsByIndex.get(200), 1);
  await disk.read(200 * CHUNK + 200, 100);
  t.equal(src.readsByIndex.get(200), 1, 'chunk 200 is still cached after 64 chunks streamed through a cache of 16');
  t.ok(cache.size <= CHUNK * 16, `within the bound (${cache.size})`);
});

t.test('reads around one spot are not a stream whose chunks go first, though they look sequential', async (t) => {
  const src = new MemoryDiskSource(patternBytes(CHUNK * 256), CHUNK);
  const cache = new ChunkCache(CHUNK * 16);
  const disk = new PublishedDisk(src, { cache, readaheadChunks: 0 });
  // A guest going back and forth over three chunks (metadata), then a copy elsewhere.
  for (let k = 0; k < 6; k++) await disk.read(100 * CHUNK + (k % 3) * CHUNK, 4096);
  for (let off = 0; off < CHUNK * 64; off += 16384) await disk.read(off, 16384);
  await disk.read(100 * CHUNK, 4096);
  t.equal(src.readsByIndex.get(100), 1, 'the spot is still cached');
});

/**
 * The on-disk chunk cache in front of the S3 store on the RADOS Gateway:
 * GETs to the gateway are counted, the bound and LRU order are checked on
 * the cache directory, and a damaged cached blob is fetched again.
 */
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { ChunkStore, RepoConfig } from '../../src/repo/api.js';
import { CachedChunkStore } from '../../src/repo/cached-chunk-store.js';
import { createCodec } from '../../src/repo/chunk-codec.js';
import { S3ChunkStore } from '../../src/repo/s3-chunk-store.js';
import { s3Scratch } from '../helpers/s3.js';
import { tmpDir } from './fixtures/points.js';

const config: RepoConfig = {
  format: 'restorelab-repository',
  version: 1,
  id: 'cache-test',
  chunkSize: 256 * 1024,
  hash: 'sha256',
  compression: 'zstd',
  encryption: 'none',
  created: new Date().toISOString(),
};
const codec = createCodec(config);

/** Real blobs (header, CRC) of random, incompressible chunks: each about `n` bytes stored. */
function blobs(count: number, n = 20_000): { digest: string; blob: Buffer }[] {
  return Array.from({ length: count }, () => {
    const plain = randomBytes(n);
    return { digest: codec.digest(plain), blob: codec.encode(plain) };
  });
}

/** Counts the GETs that reach the gateway. */
function counting(inner: ChunkStore): { store: ChunkStore; gets: () => number } {
  let gets = 0;
  const store = Object.create(inner, {
    get: {
      value: (digest: string) => {
        gets++;
        return inner.get(digest);
      },
    },
  }) as ChunkStore;
  return { store, gets: () => gets };
}

function cachedFiles(dir: string): string[] {
  return readdirSync(dir)
    .filter((s) => /^[0-9a-f]{2}$/.test(s))
    .flatMap((s) => readdirSync(join(dir, s)))
    .sort();
}

t.test('a chunk is fetched from the gateway once, however often and however concurrently it is read', async (t) => {
  const s = await s3Scratch(t);
  const s3 = new S3ChunkStore({ client: s.client, bucket: s.bucket, prefix: s.prefix });
  const c = counting(s3);
  const dir = tmpDir(t, 'rl-cache-');
  const cache = new CachedChunkStore(c.store, { dir, maxBytes: 1024 * 1024 });
  const bs = blobs(4);
  for (const b of bs) await s3.insert(b.digest, b.blob);
  const reads = await Promise.all(bs.flatMap((b) => Array.from({ length: 8 }, () => cache.get(b.digest))));
  reads.forEach((r, i) => t.ok(r.equals(bs[Math.floor(i / 8)]!.blob)));
  for (const b of bs) t.ok((await cache.get(b.digest)).equals(b.blob));
  t.equal(c.gets(), 4, '4 chunks read 36 times: 4 GETs');
  t.same(cachedFiles(dir), bs.map((b) => b.digest).sort());
  t.equal(statSync(join(dir, bs[0]!.digest.slice(0, 2), bs[0]!.digest)).mode & 0o777, 0o600, 'owner-only');

  // A new process finds the cache on disk: still no GET.
  const again = new CachedChunkStore(c.store, { dir, maxBytes: 1024 * 1024 });
  for (const b of bs) t.ok((await again.get(b.digest)).equals(b.blob));
  t.equal(c.gets(), 4, 'a reopened cache serves from disk');
});

t.test('the cache stays within its bound, evicting the least recently used; a damaged cached blob is fetched again', async (t) => {
  const s = await s3Scratch(t);
  const s3 = new S3ChunkStore({ client: s.client, bucket: s.bucket, prefix: s.prefix });
  const c = counting(s3);
  const dir = tmpDir(t, 'rl-cache-');
  const bs = blobs(4);
  const size = bs[0]!.blob.length;
  // Room for three blobs, not four.
  const cache = new CachedChunkStore(c.store, { dir, maxBytes: Math.floor(3.5 * size) });
  for (const b of bs) await s3.insert(b.digest, b.blob);
  const [a, b, cc, d] = bs as [(typeof bs)[0], (typeof bs)[0], (typeof bs)[0], (typeof bs)[0]];
  for (const x of [a, b, cc, a, d]) await cache.get(x.digest);
  t.equal(c.gets(), 4);
  t.same(cachedFiles(dir), [a, cc, d].map((x) => x.digest).sort(), 'b, the least recently used, was evicted; a was used again and stays');
  t.ok(cache.cachedBytes <= 3.5 * size);
  await cache.get(a.digest);
  t.equal(c.gets(), 4, 'a hit');
  await cache.get(b.digest);
  t.equal(c.gets(), 5, 'b is fetched again');

  // A bit flipped in a cached file: never served, fetched again and cached anew.
  const file = join(dir, d.digest.slice(0, 2), d.digest);
  const bad = Buffer.from(d.blob);
  bad[bad.length - 1] = (bad[bad.length - 1] as number) ^ 1;
  writeFileSync(file, bad);
  t.ok((await cache.get(d.digest)).equals(d.blob), 'the good blob');
  t.equal(c.gets(), 6);
  t.equal(cache.stats.dropped, 1);
});

/**
 * The process-wide frontend and cache counters, and how the server's metrics
 * expose them. The counters are global to the process, so every check is on
 * the difference between two snapshots.
 */
import t from 'tap';
import { cacheStats, countBytes, countCacheLookup, countOp, frontendStats } from '../../src/telemetry/counters.js';
import { ChunkCache } from '../../src/disk/chunk-cache.js';
import { Metrics } from '../../src/api/metrics.js';
import { execFileSync } from 'node:child_process';

t.test('ops are counted by name per frontend, bytes by direction', async (t) => {
  const nfs0 = frontendStats('nfs');
  const fuse0 = frontendStats('fuse');
  countOp('nfs', 'READ');
  countOp('nfs', 'READ');
  countOp('nfs', 'GETATTR');
  countBytes('nfs', 'read', 4096);
  countBytes('nfs', 'write', 100);
  countOp('fuse', 'write');
  countBytes('fuse', 'write', 7);
  const nfs = frontendStats('nfs');
  const fuse = frontendStats('fuse');
  t.equal((nfs.ops.READ ?? 0) - (nfs0.ops.READ ?? 0), 2);
  t.equal((nfs.ops.GETATTR ?? 0) - (nfs0.ops.GETATTR ?? 0), 1);
  t.equal(nfs.bytesRead - nfs0.bytesRead, 4096);
  t.equal(nfs.bytesWritten - nfs0.bytesWritten, 100);
  t.equal((fuse.ops.write ?? 0) - (fuse0.ops.write ?? 0), 1);
  t.equal(fuse.bytesWritten - fuse0.bytesWritten, 7);
  t.equal(fuse.bytesRead, fuse0.bytesRead, 'NFS traffic is not counted as FUSE');
  t.equal(fuse.ops.READ, fuse0.ops.READ, 'op names are per frontend');
  nfs.ops.READ = -1;
  t.not(frontendStats('nfs').ops.READ, -1, 'a snapshot is a copy');
});

t.test('every ChunkCache of the process feeds the hit ratio', async (t) => {
  const before = cacheStats();
  const a = new ChunkCache(1 << 20);
  const b = new ChunkCache(1 << 20);
  const chunk = async (): Promise<Buffer> => Buffer.alloc(16, 1);
  const get = (cache: ChunkCache, key: string): Promise<number> => cache.withChunk(key, chunk, (bytes) => bytes.length);
  await get(a, 'x'); // miss
  await get(a, 'x'); // hit
  await get(a, 'x'); // hit
  await get(b, 'x'); // miss: another cache
  // Two concurrent readers of one chunk share a decode: one miss, one hit.
  await Promise.all([get(b, 'y'), get(b, 'y')]);
  const after = cacheStats();
  t.equal(after.hits - before.hits, 3);
  t.equal(after.misses - before.misses, 3);
  t.equal(a.hits + b.hits, 3, 'each cache still keeps its own counts');
  t.equal(after.hitRatio, after.hits / (after.hits + after.misses));
  countCacheLookup(true);
  t.equal(cacheStats().hits, after.hits + 1);
});

t.test('/metrics text: frontend ops and bytes, cache counters and ratio, stable across scrapes', async (t) => {
  const m = new Metrics({
    publications: () => 2,
    sessionsByState: async () => ({ running: 1 }),
    jobRunsByResult: async () => ({ success: 3 }),
  });
  countOp('nfs', 'LOOKUP');
  countBytes('nfs', 'read', 10);
  countOp('fuse', 'read');
  countBytes('fuse', 'read', 5);
  countCacheLookup(true);
  const first = (await m.render()).body;
  const second = (await m.render()).body;
  const value = (text: string, series: string): number => {
    const line = text.split('\n').find((l) => l.startsWith(`${series} `));
    if (!line) throw new Error(`no series ${series} in\n${text}`);
    return Number(line.slice(series.length + 1));
  };
  const nfs = frontendStats('nfs');
  const fuse = frontendStats('fuse');
  const cache = cacheStats();
  t.equal(value(first, 'restorelab_nfs_ops_total{op="LOOKUP"}'), nfs.ops.LOOKUP);
  t.equal(value(first, 'restorelab_nfs_bytes_total{direction="read"}'), nfs.bytesRead);
  t.equal(value(first, 'restorelab_nfs_bytes_total{direction="write"}'), nfs.bytesWritten);
  t.equal(value(first, 'restorelab_fuse_ops_total{op="read"}'), fuse.ops.read);
  t.equal(value(first, 'restorelab_fuse_bytes_total{direction="read"}'), fuse.bytesRead);
  t.equal(value(first, 'restorelab_chunk_cache_hits_total'), cache.hits);
  t.equal(value(first, 'restorelab_chunk_cache_misses_total'), cache.misses);
  t.equal(value(first, 'restorelab_chunk_cache_hit_ratio'), cache.hitRatio);
  t.match(first, /# TYPE restorelab_nfs_ops_total counter/);
  t.match(first, /# TYPE restorelab_chunk_cache_hit_ratio gauge/);
  // Values are set from the process counters, not added up on every scrape.
  t.equal(value(second, 'restorelab_chunk_cache_hits_total'), cache.hits, 'a second scrape does not double the counters');
  t.equal(value(second, 'restorelab_nfs_ops_total{op="LOOKUP"}'), nfs.ops.LOOKUP);
  t.equal(value(first, 'restorelab_publications'), 2);
  t.equal(value(first, 'restorelab_sessions{state="running"}'), 1);
  t.equal(value(first, 'restorelab_job_runs{result="success"}'), 3);
});

t.test('before the first lookup the ratio is unknown (null, NaN in /metrics), not 0', async (t) => {
  // A fresh process: this one has counted lookups already.
  const metrics = new URL('../../src/api/metrics.js', import.meta.url).href;
  const out = execFileSync(
    process.execPath,
    [
      '--input-type=module',
      '-e',
      `
    const { Metrics } = await import(${JSON.stringify(metrics)});
    const { cacheStats } = await import(${JSON.stringify(new URL('../../src/telemetry/counters.js', import.meta.url).href)});
    const m = new Metrics({ publications: () => 0, sessionsByState: async () => ({}), jobRunsByResult: () => ({}) });
    const text = (await m.render()).body;
    console.log(JSON.stringify({ ratio: cacheStats().hitRatio, line: text.split('\\n').find((l) => l.startsWith('restorelab_chunk_cache_hit_ratio ')) }));
  `,
    ],
    { encoding: 'utf8' },
  );
  const r = JSON.parse(out) as { ratio: number | null; line: string };
  t.equal(r.ratio, null);
  // prom-client writes "Nan"; Prometheus parses floats case-insensitively.
  t.match(r.line, /^restorelab_chunk_cache_hit_ratio nan$/i);
});

/**
 * Process-wide I/O counters of the frontends (NFS, FUSE) and the chunk cache.
 *
 * Words: an *op* is one request a frontend served (an NFS procedure such as
 * READ, a FUSE callback such as read); *bytes* are payload bytes of reads
 * (sent to the client) and writes (received from it); a cache *hit* is a
 * chunk lookup answered from memory or joined to a decode already running, a
 * *miss* one that had to read and decode the chunk.
 *
 * Why plain numbers in a module instead of prom-client metrics: the frontends
 * and the disk layer must not depend on the server's metrics library (they
 * also run in `publish` and session supervisor processes, which serve no
 * /metrics), and these calls sit on the hot path of every read. Each call is
 * a property access plus one Map lookup on a key the caller passes as a
 * constant string, with no allocation. The server's metrics read a snapshot
 * on scrape (src/api/metrics.ts). Counters only grow; they count every
 * frontend and cache of this process, across publications.
 */

export type Frontend = 'nfs' | 'fuse';
export type Direction = 'read' | 'write';

interface FrontendCounters {
  /** Ops by name; names are the frontend's fixed procedure/callback names, so the map stays small. */
  readonly ops: Map<string, number>;
  bytesRead: number;
  bytesWritten: number;
}

const frontends: Record<Frontend, FrontendCounters> = {
  nfs: { ops: new Map(), bytesRead: 0, bytesWritten: 0 },
  fuse: { ops: new Map(), bytesRead: 0, bytesWritten: 0 },
};

const cache = { hits: 0, misses: 0 };

/** Counts one op served by `frontend` (its bytes, if any, go through countBytes). */
export function countOp(frontend: Frontend, op: string): void {
  const c = frontends[frontend];
  c.ops.set(op, (c.ops.get(op) ?? 0) + 1);
}

/**
 * Counts payload bytes. Separate from countOp because the op is counted where
 * a request is dispatched, and its bytes are known only once the handler has
 * read or written them (a failed READ counts as an op but moves no bytes).
 */
export function countBytes(frontend: Frontend, direction: Direction, bytes: number): void {
  const c = frontends[frontend];
  if (direction === 'read') c.bytesRead += bytes;
  else c.bytesWritten += bytes;
}

/** Counts one chunk cache lookup. */
export function countCacheLookup(hit: boolean): void {
  if (hit) cache.hits++;
  else cache.misses++;
}

export interface FrontendSnapshot {
  ops: Record<string, number>;
  bytesRead: number;
  bytesWritten: number;
}

export interface CacheSnapshot {
  hits: number;
  misses: number;
  /** hits / (hits + misses), or null before the first lookup (a ratio of nothing is not 0). */
  hitRatio: number | null;
}

/** A copy of one frontend's counters (allocates; meant for scrapes and tests, not the hot path). */
export function frontendStats(frontend: Frontend): FrontendSnapshot {
  const c = frontends[frontend];
  return { ops: Object.fromEntries(c.ops), bytesRead: c.bytesRead, bytesWritten: c.bytesWritten };
}

/** The chunk cache counters of every ChunkCache of this process. */
export function cacheStats(): CacheSnapshot {
  const total = cache.hits + cache.misses;
  return { hits: cache.hits, misses: cache.misses, hitRatio: total === 0 ? null : cache.hits / total };
}

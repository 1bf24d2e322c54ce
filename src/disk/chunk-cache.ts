/**
 * ChunkCache: a bounded LRU of decompressed chunks keyed by chunk id (digest).
 *
 * Keyed by digest rather than (disk, index) because equal digests mean equal
 * bytes: a chunk shared by several disks or points is decoded once. Lookups go
 * through get-or-compute, so concurrent readers of one chunk share a single
 * decode; a failed decode is never cached, so a transient error is retried by
 * the next reader and a corrupt chunk keeps failing.
 *
 * Every lookup is also counted process-wide (src/telemetry/counters.ts) for
 * the server's chunk cache hit ratio; `hits`/`misses` here are this cache's own.
 */
import { countCacheLookup } from '../telemetry/counters.js';

export class ChunkCache {
  private readonly entries = new Map<string, Buffer>();
  private readonly inflight = new Map<string, Promise<Buffer | null>>();
  private bytes = 0;
  hits = 0;
  misses = 0;

  constructor(readonly maxBytes: number) {}

  get size(): number {
    return this.bytes;
  }

  get count(): number {
    return this.entries.size;
  }

  has(key: string): boolean {
    return this.entries.has(key) || this.inflight.has(key);
  }

  /** The cached chunk, or the result of `compute` (shared with concurrent callers for the same key). */
  async getOrCompute(key: string, compute: () => Promise<Buffer | null>): Promise<Buffer | null> {
    const hit = this.entries.get(key);
    if (hit) {
      // Re-insert to mark as most recently used (Map keeps insertion order).
      this.entries.delete(key);
      this.entries.set(key, hit);
      this.hits++;
      countCacheLookup(true);
      return hit;
    }
    const running = this.inflight.get(key);
    if (running) {
      this.hits++;
      countCacheLookup(true);
      return running;
    }
    this.misses++;
    countCacheLookup(false);
    const p = compute().then(
      (buf) => {
        this.inflight.delete(key);
        if (buf) this.insert(key, buf);
        return buf;
      },
      (err: unknown) => {
        this.inflight.delete(key);
        throw err;
      },
    );
    this.inflight.set(key, p);
    return p;
  }

  private insert(key: string, buf: Buffer): void {
    if (buf.length > this.maxBytes) return;
    const old = this.entries.get(key);
    if (old) {
      this.bytes -= old.length;
      this.entries.delete(key);
    }
    this.entries.set(key, buf);
    this.bytes += buf.length;
    for (const [k, v] of this.entries) {
      if (this.bytes <= this.maxBytes) break;
      this.entries.delete(k);
      this.bytes -= v.length;
    }
  }

  clear(): void {
    this.entries.clear();
    this.bytes = 0;
  }
}

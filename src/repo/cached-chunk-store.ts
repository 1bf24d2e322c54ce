/**
 * A ChunkStore wrapper that keeps the blobs it reads in a bounded cache
 * directory on local disk, so a VM running from a point on object storage
 * does not fetch the same chunk twice (issue 19). Words:
 *
 * - *cache dir*: `<dir>/<2 hex>/<digest>`, one file per blob, owner-only.
 *   Written temp + rename, so a crash leaves a whole file or a `.tmp-*` one
 *   (removed when the cache opens), never a torn blob under a digest's name.
 *   Not fsynced: a cached blob whose CRC fails (a torn write after a power
 *   loss, a flipped bit) is dropped and fetched again, never served.
 * - *bound*: `maxBytes` of blobs; the least recently used go first. The
 *   index is one entry per cached chunk (digest and size), so memory grows
 *   with the cache's bound / chunk size, not with the disk.
 * - *in flight*: concurrent get()s of one chunk share one fetch.
 *
 * Only reads are cached; writes, touches and listings go to the store it
 * wraps. The digest is still checked where it always is (the codec's decode
 * by every reader): the cache only saves the round trip.
 */
import { mkdir, open, readdir, readFile, rename, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { ChunkStore, StoredChunk } from './api.js';
import { assertDigest } from './chunk-store.js';
import { crcMatches } from './chunk-codec.js';
import { TEMP_PREFIX, tempName } from '../host/atomic-file.js';
import { PRIVATE_DIR_MODE } from '../host/private-files.js';

export interface ChunkCacheOptions {
  dir: string;
  /** Bytes of blobs kept; at least one blob always fits (the one just read). */
  maxBytes: number;
}

export class CachedChunkStore implements ChunkStore {
  readonly path: string;
  readonly minGcMarginMs: number | undefined;
  /** digest → size, oldest use first (a Map iterates in insertion order; a use re-inserts). */
  private readonly lru = new Map<string, number>();
  private bytes = 0;
  private readonly inFlight = new Map<string, Promise<Buffer>>();
  private ready: Promise<void> | undefined;
  /** Reads served from the cache and fetched from the wrapped store, for tests and metrics. */
  readonly stats = { hits: 0, misses: 0, evictions: 0, dropped: 0 };

  constructor(
    private readonly inner: ChunkStore,
    private readonly opts: ChunkCacheOptions,
  ) {
    if (!(opts.maxBytes > 0)) throw new RangeError(`chunk cache bound ${opts.maxBytes} is not a positive number of bytes`);
    this.path = inner.path;
    this.minGcMarginMs = inner.minGcMarginMs;
  }

  private file(digest: string): string {
    assertDigest(digest, `chunk cache ${this.opts.dir}`);
    return join(this.opts.dir, digest.slice(0, 2), digest);
  }

  /** Loads what an earlier process cached (oldest mtime first) and removes its temp files. */
  private open(): Promise<void> {
    this.ready ??= (async () => {
      await mkdir(this.opts.dir, { recursive: true, mode: PRIVATE_DIR_MODE });
      const found: { digest: string; size: number; mtimeMs: number }[] = [];
      for (const shard of await readdir(this.opts.dir)) {
        if (!/^[0-9a-f]{2}$/.test(shard)) continue;
        for (const name of await readdir(join(this.opts.dir, shard))) {
          const p = join(this.opts.dir, shard, name);
          if (name.startsWith(TEMP_PREFIX)) await unlink(p).catch(() => undefined);
          else if (/^[0-9a-f]{64}$/.test(name) && name.startsWith(shard)) {
            const st = await stat(p).catch(() => undefined);
            if (st) found.push({ digest: name, size: st.size, mtimeMs: st.mtimeMs });
          }
        }
      }
      found.sort((a, b) => a.mtimeMs - b.mtimeMs);
      for (const f of found) this.remember(f.digest, f.size);
      await this.evict();
    })();
    return this.ready;
  }

  private remember(digest: string, size: number): void {
    const old = this.lru.get(digest);
    if (old !== undefined) {
      this.lru.delete(digest);
      this.bytes -= old;
    }
    this.lru.set(digest, size);
    this.bytes += size;
  }

  private async forget(digest: string): Promise<void> {
    const size = this.lru.get(digest);
    if (size === undefined) return;
    this.lru.delete(digest);
    this.bytes -= size;
    await unlink(this.file(digest)).catch(() => undefined);
  }

  /** Drops the least recently used blobs until the cache is within its bound, keeping the newest one. */
  private async evict(): Promise<void> {
    while (this.bytes > this.opts.maxBytes && this.lru.size > 1) {
      const oldest = this.lru.keys().next().value as string;
      this.stats.evictions++;
      await this.forget(oldest);
    }
  }

  async get(digest: string): Promise<Buffer> {
    await this.open();
    const file = this.file(digest);
    if (this.lru.has(digest)) {
      const blob = await readFile(file).catch(() => undefined);
      if (blob && sound(digest, blob)) {
        this.stats.hits++;
        this.remember(digest, blob.length);
        return blob;
      }
      this.stats.dropped++;
      await this.forget(digest);
    }
    const pending = this.inFlight.get(digest);
    if (pending) return pending;
    const fetch = this.fetch(digest, file).finally(() => this.inFlight.delete(digest));
    this.inFlight.set(digest, fetch);
    return fetch;
  }

  private async fetch(digest: string, file: string): Promise<Buffer> {
    this.stats.misses++;
    const blob = await this.inner.get(digest);
    // A blob that fails its CRC is not kept: the reader's decode reports it, and the next read asks the store again.
    if (!sound(digest, blob)) return blob;
    try {
      await mkdir(join(this.opts.dir, digest.slice(0, 2)), { recursive: true, mode: PRIVATE_DIR_MODE });
      const tmp = join(this.opts.dir, digest.slice(0, 2), tempName());
      const fh = await open(tmp, 'wx', 0o600);
      try {
        await fh.writeFile(blob);
      } finally {
        await fh.close();
      }
      await rename(tmp, file);
      this.remember(digest, blob.length);
      await this.evict();
    } catch {
      // A full or broken cache disk costs the cache, not the read.
    }
    return blob;
  }

  has(digest: string): Promise<boolean> {
    return this.inner.has(digest);
  }
  touch(digest: string): Promise<boolean> {
    return this.inner.touch(digest);
  }
  insert(digest: string, blob: Buffer): Promise<{ existed: boolean; size: number }> {
    return this.inner.insert(digest, blob);
  }
  async replace(digest: string, blob: Buffer, opts: { keepDamaged: boolean }): Promise<void> {
    await this.open();
    await this.forget(digest);
    await this.inner.replace(digest, blob, opts);
  }
  sync(): Promise<void> {
    return this.inner.sync();
  }
  list(): AsyncIterable<StoredChunk> {
    return this.inner.list();
  }
  listQuarantined(): AsyncIterable<StoredChunk> {
    return this.inner.listQuarantined();
  }
  async quarantine(digest: string): Promise<void> {
    await this.open();
    await this.forget(digest);
    await this.inner.quarantine(digest);
  }
  async remove(digest: string): Promise<number> {
    await this.open();
    await this.forget(digest);
    return this.inner.remove(digest);
  }
  async removeIfUnused(digest: string, cutoffMs: number, guard?: () => void): Promise<number> {
    const freed = await this.inner.removeIfUnused(digest, cutoffMs, guard);
    if (freed > 0) {
      await this.open();
      await this.forget(digest);
    }
    return freed;
  }

  /** Bytes of blobs cached now. */
  get cachedBytes(): number {
    return this.bytes;
  }
}

/** Whether a blob's header parses and its CRC matches (a cheap check; the digest is the reader's). */
function sound(digest: string, blob: Buffer): boolean {
  try {
    return crcMatches(digest, blob);
  } catch {
    return false;
  }
}

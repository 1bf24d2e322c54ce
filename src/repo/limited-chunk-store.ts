/**
 * A ChunkStore wrapper that bounds the operations in flight on the store it
 * wraps (after restic's sema backend): a backup engine or a restore with
 * many lanes, or a publication serving many readers, issues at most
 * `limit` requests at once, so sockets, gateway load and the blobs held in
 * memory stay bounded. Waiters are served first come, first served.
 *
 * Listing is not limited: it is one request at a time already, and a caller
 * that consumes the listing slowly must not hold a slot meanwhile.
 */
import type { ChunkStore, StoredChunk } from './api.js';

/** A counting semaphore; release() hands the slot straight to the next waiter. */
export class Semaphore {
  private used = 0;
  private readonly waiting: (() => void)[] = [];

  constructor(readonly limit: number) {
    if (!Number.isInteger(limit) || limit < 1) throw new RangeError(`semaphore limit ${limit} is not a positive integer`);
  }

  /** Operations holding a slot now. */
  get inFlight(): number {
    return this.used;
  }

  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.used < this.limit) this.used++;
    // The releasing holder keeps `used` as it is and passes its slot on, so nobody can slip in between.
    else await new Promise<void>((go) => this.waiting.push(go));
    try {
      return await fn();
    } finally {
      const next = this.waiting.shift();
      if (next) next();
      else this.used--;
    }
  }
}

export class LimitedChunkStore implements ChunkStore {
  readonly path: string;
  readonly minGcMarginMs: number | undefined;
  readonly fileOf: ((digest: string) => string) | undefined;
  readonly insertPlaced: ChunkStore['insertPlaced'];
  private readonly sema: Semaphore;

  constructor(
    private readonly inner: ChunkStore,
    limit: number,
  ) {
    this.path = inner.path;
    this.minGcMarginMs = inner.minGcMarginMs;
    // Only a store with files offers fileOf; the wrapper must not pretend otherwise.
    this.fileOf = inner.fileOf ? (digest) => (inner.fileOf as (d: string) => string).call(inner, digest) : undefined;
    this.sema = new Semaphore(limit);
    const placed = inner.insertPlaced?.bind(inner);
    this.insertPlaced = placed ? (digest, place) => this.sema.run(() => placed(digest, place)) : undefined;
  }

  get inFlight(): number {
    return this.sema.inFlight;
  }

  has(digest: string): Promise<boolean> {
    return this.sema.run(() => this.inner.has(digest));
  }
  touch(digest: string): Promise<boolean> {
    return this.sema.run(() => this.inner.touch(digest));
  }
  insert(digest: string, blob: Buffer): Promise<{ existed: boolean; size: number }> {
    return this.sema.run(() => this.inner.insert(digest, blob));
  }
  replace(digest: string, blob: Buffer, opts: { keepDamaged: boolean }): Promise<void> {
    return this.sema.run(() => this.inner.replace(digest, blob, opts));
  }
  sync(): Promise<void> {
    return this.inner.sync();
  }
  get(digest: string): Promise<Buffer> {
    return this.sema.run(() => this.inner.get(digest));
  }
  list(): AsyncIterable<StoredChunk> {
    return this.inner.list();
  }
  listQuarantined(): AsyncIterable<StoredChunk> {
    return this.inner.listQuarantined();
  }
  quarantine(digest: string): Promise<void> {
    return this.sema.run(() => this.inner.quarantine(digest));
  }
  remove(digest: string): Promise<number> {
    return this.sema.run(() => this.inner.remove(digest));
  }
  removeIfUnused(digest: string, cutoffMs: number, guard?: () => void): Promise<number> {
    return this.sema.run(() => this.inner.removeIfUnused(digest, cutoffMs, guard));
  }
}

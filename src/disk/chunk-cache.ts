/**
 * ChunkCache: a bounded LRU of decompressed chunks keyed by chunk id (digest).
 *
 * Keyed by digest rather than (disk, index) because equal digests mean equal
 * bytes: a chunk shared by several disks or points is decoded once. Lookups go
 * through withChunk, so concurrent readers of one chunk share a single
 * decode; a failed decode is never cached, so a transient error is retried by
 * the next reader and a corrupt chunk keeps failing.
 *
 * Memory comes in *slots*: SharedArrayBuffers that decode workers write into
 * directly, reused when their chunk is evicted. A fresh buffer per decoded
 * chunk cost a third of a cold read's CPU (page faults, zeroing, and garbage
 * collections forced by external memory). Because a slot is rewritten once
 * its chunk is evicted, nobody may keep a view of cached bytes: withChunk
 * hands them to a synchronous `use` callback, which copies what it needs.
 * Eviction only takes chunks that are complete, that no reader waiting for
 * their decode still has to see, and only while the main thread runs, so
 * the bytes cannot change during `use`.
 *
 * A chunk read by a sequential stream (a copy, a migration's mirror, a
 * readahead) is *streamed*: that reader will not come back for it, so it is
 * evicted before any other chunk, and a pass over a disk larger than the
 * cache does not push out what random readers (a running guest) use again.
 * A lookup that is not streaming makes a streamed chunk an ordinary one.
 *
 * Every lookup is also counted process-wide (src/telemetry/counters.ts) for
 * the server's chunk cache hit ratio; `hits`/`misses` here are this cache's own.
 */
import { countCacheLookup } from '../telemetry/counters.js';

interface Entry {
  bytes: Buffer;
  /** Bytes charged against the bound: the slot's size, or the buffer's. */
  cost: number;
  /** The slot holding `bytes`, reused once the entry is evicted. */
  slot?: SharedArrayBuffer;
  /** Readers that waited for this fill and have not had the bytes yet: it is not evicted before they have. */
  pins: number;
  /** Only sequential streams have asked for it: evicted first. */
  streamed: boolean;
}

/** A fill under way, and how many readers wait for it. */
interface Flight {
  waiters: number;
  /** Every waiter so far is a sequential stream. */
  streamed: boolean;
  done: Promise<Entry>;
}

/** Asks the cache for a slot of `size` bytes to decode into (a view of shared memory). */
export type SlotRequest = (size: number) => Buffer;

/**
 * Produces a chunk's bytes: either a view of a slot it requested, or a buffer
 * of its own (the cache then keeps that buffer and takes the slot back).
 */
export type ChunkFill = (slot: SlotRequest) => Promise<Buffer>;

export class ChunkCache {
  private readonly entries = new Map<string, Entry>();
  private readonly inflight = new Map<string, Flight>();
  /** Slots of evicted chunks, reused before new ones are made. */
  private readonly spare: SharedArrayBuffer[] = [];
  /** Bytes of cached entries, of slots lent to running fills, and of spare slots. */
  private bytes = 0;
  private lent = 0;
  private spareBytes = 0;
  hits = 0;
  misses = 0;

  constructor(readonly maxBytes: number) {}

  /** Bytes held by cached chunks. */
  get size(): number {
    return this.bytes;
  }

  get count(): number {
    return this.entries.size;
  }

  has(key: string): boolean {
    return this.entries.has(key) || this.inflight.has(key);
  }

  /**
   * Calls `use` with the bytes of chunk `key`, running `fill` first on a miss
   * (shared with concurrent callers for the same key). `use` runs
   * synchronously and must copy what it keeps: the bytes may belong to a slot
   * that is rewritten after `use` returns.
   */
  async withChunk<T>(key: string, fill: ChunkFill, use: (bytes: Buffer) => T, opts: { streaming?: boolean } = {}): Promise<T> {
    const streaming = opts.streaming === true;
    const hit = this.entries.get(key);
    if (hit) {
      if (!streaming) hit.streamed = false;
      // Re-insert to mark as most recently used (Map keeps insertion order).
      this.entries.delete(key);
      this.entries.set(key, hit);
      this.tally(true);
      return use(hit.bytes);
    }
    let flight = this.inflight.get(key);
    this.tally(flight !== undefined);
    if (!flight) {
      flight = { waiters: 0, streamed: true } as Flight;
      this.inflight.set(key, flight);
      flight.done = this.fill(key, fill, flight);
    }
    flight.waiters++;
    if (!streaming) flight.streamed = false;
    // The entry arrives pinned once per waiter, so no other fill can evict it
    // (and rewrite its slot) before every waiter has had its bytes.
    const entry = await flight.done;
    entry.pins--;
    return use(entry.bytes);
  }

  private tally(hit: boolean): void {
    if (hit) this.hits++;
    else this.misses++;
    countCacheLookup(hit);
  }

  private async fill(key: string, fill: ChunkFill, flight: Flight): Promise<Entry> {
    let slot: SharedArrayBuffer | undefined;
    const request: SlotRequest = (size) => {
      if (slot) throw new Error('a chunk fill asked for a second slot');
      slot = this.lend(size);
      return Buffer.from(slot);
    };
    let bytes: Buffer;
    try {
      bytes = await fill(request);
    } catch (err) {
      this.inflight.delete(key);
      // A failed fill's slot is dropped, not reused: a worker that died mid-decode may still be writing it.
      if (slot) this.lent -= slot.byteLength;
      throw err;
    }
    this.inflight.delete(key);
    if (slot) this.lent -= slot.byteLength;
    const own = slot !== undefined && bytes.buffer === slot;
    if (slot && !own) this.putSpare(slot);
    const entry: Entry = own
      ? { bytes, cost: slot!.byteLength, slot, pins: flight.waiters, streamed: flight.streamed }
      : { bytes, cost: bytes.length, pins: flight.waiters, streamed: flight.streamed };
    this.entries.set(key, entry);
    this.bytes += entry.cost;
    this.trim();
    return entry;
  }

  /** A slot for a fill: a spare one, one taken from the least recently used chunk, or a new one. */
  private lend(size: number): SharedArrayBuffer {
    let slot = this.takeSpare(size);
    while (!slot && this.bytes + this.lent + this.spareBytes + size > this.maxBytes && this.evictOldest()) slot = this.takeSpare(size);
    // Over the bound only while every byte is lent to running fills; trim() gives it back.
    slot ??= new SharedArrayBuffer(size);
    this.lent += size;
    return slot;
  }

  private takeSpare(size: number): SharedArrayBuffer | undefined {
    const i = this.spare.findIndex((s) => s.byteLength === size);
    if (i < 0) return undefined;
    const [slot] = this.spare.splice(i, 1);
    this.spareBytes -= size;
    return slot;
  }

  private putSpare(slot: SharedArrayBuffer): void {
    this.spare.push(slot);
    this.spareBytes += slot.byteLength;
  }

  /**
   * Evicts the least recently used streamed chunk, else the least recently
   * used chunk, that no waiting reader has pinned; false when there is none.
   */
  private evictOldest(): boolean {
    let victim: string | undefined;
    for (const [key, entry] of this.entries) {
      if (entry.pins > 0) continue;
      if (entry.streamed) {
        victim = key;
        break;
      }
      victim ??= key;
    }
    if (victim === undefined) return false;
    const entry = this.entries.get(victim)!;
    this.entries.delete(victim);
    this.bytes -= entry.cost;
    if (entry.slot) this.putSpare(entry.slot);
    return true;
  }

  /** Back within the bound: spare slots go first, then the least recently used chunks. */
  private trim(): void {
    while (this.bytes + this.lent + this.spareBytes > this.maxBytes) {
      if (this.spare.length > 0) this.spareBytes -= this.spare.pop()!.byteLength;
      else if (!this.evictOldest()) break;
    }
  }

  clear(): void {
    this.entries.clear();
    this.spare.length = 0;
    this.bytes = 0;
    this.spareBytes = 0;
  }
}

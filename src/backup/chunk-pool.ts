/**
 * A pool of worker threads that hash and compress chunks, one per
 * core, over a fixed set of shared-memory slots.
 *
 * Words:
 * - *slot*: one chunk-sized window of a SharedArrayBuffer. The reader fills a
 *   slot, workers hash and compress straight from it, then it is released.
 *   The slots are the whole of the pool's chunk memory: memory stays bounded
 *   whatever the image size, and no chunk buffer is allocated (or page-
 *   faulted in) per chunk.
 *
 * A chunk goes through two steps, so that data the repository already holds
 * is hashed but never compressed: `digest(slot)` (null for all zeros), then
 * `encode(slot)` only when the store lacks it (or holds a damaged copy:
 * `checkStored(slot)` decides that for a chunk the store has).
 */
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import type { CodecInit } from './chunk-worker.js';

export type { CodecInit } from './chunk-worker.js';

export interface Slot {
  readonly index: number;
  /** The slot's memory (chunkSize bytes); fill it before digest(). */
  readonly buffer: Buffer;
}

type Reply = { id: number; digest?: string | null; data?: Uint8Array; damage?: StoredDamage | null; error?: string };

/** What is wrong with a stored blob (see storedDamage in chunk-worker.ts). */
export interface StoredDamage {
  reason: string;
  /** The blob decodes to the right bytes; only its CRC field is wrong. */
  dataOk: boolean;
}

interface Pending {
  resolve(r: Reply): void;
  reject(e: Error): void;
}

export class ChunkPool {
  private readonly workers: Worker[] = [];
  private readonly pending = new Map<number, Pending>();
  private readonly load: number[] = [];
  private readonly free: number[] = [];
  private readonly waiting: (() => void)[] = [];
  private readonly memory: SharedArrayBuffer;
  private nextId = 1;
  private failure: Error | undefined;

  constructor(
    init: CodecInit,
    readonly size = Math.max(1, Math.min(availableParallelism(), 8)),
    /** Two per worker: one being read while the other is hashed or compressed. */
    readonly slots = size * 2,
  ) {
    const slotSize = init.config.chunkSize;
    this.memory = new SharedArrayBuffer(slots * slotSize);
    for (let i = 0; i < slots; i++) this.free.push(i);
    for (let i = 0; i < size; i++) {
      const w = new Worker(new URL('./chunk-worker.js', import.meta.url), { workerData: { ...init, memory: this.memory } });
      w.on('message', (m: Reply) => this.settle(m));
      w.on('error', (e) => this.fail(e));
      w.on('exit', (code) => { if (code !== 0) this.fail(new Error(`chunk worker exited with code ${code}`)); });
      this.workers.push(w);
      this.load.push(0);
    }
  }

  /** Waits for a free slot. */
  async acquire(): Promise<Slot> {
    while (this.free.length === 0) {
      if (this.failure) throw this.failure;
      await new Promise<void>((r) => this.waiting.push(r));
    }
    const index = this.free.shift() as number;
    const size = this.memory.byteLength / this.slots;
    return { index, buffer: Buffer.from(this.memory, index * size, size) };
  }

  release(slot: Slot): void {
    this.free.push(slot.index);
    this.waiting.shift()?.();
  }

  /** Digest of the first `length` bytes of the slot, or null when they are all zeros. */
  async digest(slot: Slot, length: number): Promise<string | null> {
    const r = await this.call({ op: 'digest', slot: slot.index, length });
    return r.digest ?? null;
  }

  /**
   * Checks the stored blob (in `file`) of the chunk in the slot before it is
   * reused: null when it is sound, else what is wrong with it.
   */
  async checkStored(slot: Slot, length: number, digest: string, file: string): Promise<StoredDamage | null> {
    return (await this.call({ op: 'stored', slot: slot.index, length, digest, file })).damage ?? null;
  }

  /** The blob of the first `length` bytes of the slot. */
  async encode(slot: Slot, length: number): Promise<Buffer> {
    return asBuffer((await this.call({ op: 'encode', slot: slot.index, length })).data);
  }

  async close(): Promise<void> {
    const ws = this.workers.splice(0);
    await Promise.all(ws.map((w) => w.terminate()));
    this.fail(new Error('chunk pool closed'));
  }

  private call(msg: Record<string, unknown>): Promise<Reply> {
    if (this.failure) return Promise.reject(this.failure);
    let worker = 0;
    for (let i = 1; i < this.load.length; i++) if ((this.load[i] as number) < (this.load[worker] as number)) worker = i;
    const id = this.nextId++;
    this.load[worker] = (this.load[worker] as number) + 1;
    const done = (): void => { this.load[worker] = (this.load[worker] as number) - 1; };
    return new Promise<Reply>((resolve, reject) => {
      this.pending.set(id, {
        resolve: (r) => {
          done();
          if (r.error === undefined) resolve(r);
          else reject(new Error(r.error));
        },
        reject: (e) => { done(); reject(e); },
      });
      (this.workers[worker] as Worker).postMessage({ ...msg, id });
    });
  }

  private settle(m: Reply): void {
    const p = this.pending.get(m.id);
    if (!p) return;
    this.pending.delete(m.id);
    p.resolve(m);
  }

  private fail(e: Error): void {
    this.failure ??= e;
    for (const p of this.pending.values()) p.reject(e);
    this.pending.clear();
    for (const w of this.waiting.splice(0)) w();
  }
}

function asBuffer(u: Uint8Array | undefined): Buffer {
  if (!u) throw new Error('chunk worker replied without data');
  return Buffer.from(u.buffer, u.byteOffset, u.byteLength);
}

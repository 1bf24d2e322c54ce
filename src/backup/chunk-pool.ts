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
import { WorkerPool, type WithoutId } from '../host/worker-pool.js';
import type { ChunkRequest, CodecInit } from './chunk-worker.js';
import type { BlobSource } from '../repo/chunk-store.js';
import type { PlacedBlob } from '../repo/api.js';

export type { CodecInit } from './chunk-worker.js';

export interface Slot {
  readonly index: number;
  /** The slot's memory (chunkSize bytes); fill it before digest(). */
  readonly buffer: Buffer;
}

type Reply = {
  id: number;
  digest?: string | null;
  data?: Uint8Array;
  damage?: StoredDamage | null;
  placed?: PlacedChunk;
  error?: string;
  code?: string;
};

/** A blob a worker wrote (place): its size, and what SignalsRecorder.newChunk counts. */
export interface PlacedChunk {
  size: number;
  stored: number;
  incompressible: boolean;
}

/** What is wrong with a stored blob (see storedDamage in chunk-worker.ts). */
export interface StoredDamage {
  reason: string;
  /** The blob decodes to the right bytes; only its CRC field is wrong. */
  dataOk: boolean;
}

/** Slot memory the pool grows to (above four slots per worker) when the chunks are small enough. */
const SLOT_BYTES_WANTED = 16 * 1024 * 1024;

export class ChunkPool {
  private readonly pool: WorkerPool<ChunkRequest, Reply>;
  private readonly free: number[] = [];
  private readonly waiting: (() => void)[] = [];
  private readonly memory: SharedArrayBuffer;

  constructor(
    init: CodecInit,
    readonly size = Math.max(1, Math.min(availableParallelism(), 8)),
    /**
     * At least four per worker: a read from an NBD export (a live backup)
     * waits on the VM's QEMU, so with two a worker sat idle while its next
     * chunk was still on the wire. Up to eight per worker while they hold at
     * most SLOT_BYTES_WANTED: a full live backup of 1 GiB read 10% faster
     * with 16 slots of 1 MiB than with 8 (docs/backup.md, run 7). 16 MiB
     * with two workers and 1 MiB chunks, 32 MiB with 4 MiB chunks.
     */
    readonly slots = Math.max(size * 4, Math.min(size * 8, Math.floor(SLOT_BYTES_WANTED / init.config.chunkSize))),
  ) {
    const slotSize = init.config.chunkSize;
    this.memory = new SharedArrayBuffer(slots * slotSize);
    for (let i = 0; i < slots; i++) this.free.push(i);
    this.pool = new WorkerPool({
      script: new URL('./chunk-worker.js', import.meta.url),
      workerData: { ...init, memory: this.memory },
      size,
      name: 'chunk',
      // A reader waiting for a slot must hear of the failure, not wait forever.
      onFailure: () => {
        for (const w of this.waiting.splice(0)) w();
      },
    });
  }

  /** Waits for a free slot. */
  async acquire(): Promise<Slot> {
    while (this.free.length === 0) {
      if (this.pool.failure) throw this.pool.failure;
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
  async checkStored(slot: Slot, length: number, digest: string, source: BlobSource): Promise<StoredDamage | null> {
    return (await this.call({ op: 'stored', slot: slot.index, length, digest, source })).damage ?? null;
  }

  /** The blob of the first `length` bytes of the slot. */
  async encode(slot: Slot, length: number): Promise<Buffer> {
    return asBuffer((await this.call({ op: 'encode', slot: slot.index, length })).data);
  }

  /** Encodes the first `length` bytes of the slot and writes the blob where the store says (ChunkStore.insertPlaced). */
  async place(slot: Slot, length: number, where: PlacedBlob): Promise<PlacedChunk> {
    const r = await this.call({ op: 'place', slot: slot.index, length, ...where });
    if (!r.placed) throw new Error('chunk worker replied without the placed blob');
    return r.placed;
  }

  async close(): Promise<void> {
    await this.pool.close();
  }

  private async call(msg: WithoutId<ChunkRequest>): Promise<Reply> {
    const r = await this.pool.request(msg);
    if (r.error !== undefined) throw Object.assign(new Error(r.error), r.code ? { code: r.code } : {});
    return r;
  }
}

function asBuffer(u: Uint8Array | undefined): Buffer {
  if (!u) throw new Error('chunk worker replied without data');
  return Buffer.from(u.buffer, u.byteOffset, u.byteLength);
}

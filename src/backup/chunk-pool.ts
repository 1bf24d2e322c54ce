/**
 * A pool of worker threads that hash and compress chunks, one per core.
 *
 * A chunk goes through two steps, so that data the repository already holds
 * is hashed but never compressed:
 *  1. `digest(plain)`: the worker checks for all zeros, then hashes. The
 *     plaintext stays in the worker (it was transferred, not copied).
 *  2. `encode(ticket)` compresses (and seals) it into a blob, or `drop(ticket)`
 *     frees it when the chunk is already stored.
 * The caller bounds how many chunks are in flight; the pool never queues
 * more than it is given.
 */
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import type { CodecInit } from './chunk-worker.js';

export type { CodecInit } from './chunk-worker.js';

export interface DigestResult {
  /** Pass to encode() or drop(); null when the chunk is all zeros (nothing kept). */
  ticket: Ticket | null;
  digest: string | null;
}

export interface Ticket {
  readonly worker: number;
  readonly id: number;
}

type Reply = { id: number; digest?: string | null; blob?: Uint8Array; error?: string };

interface Pending {
  resolve(r: Reply): void;
  reject(e: Error): void;
}

export class ChunkPool {
  private readonly workers: Worker[] = [];
  private readonly pending = new Map<number, Pending>();
  private readonly load: number[] = [];
  private nextId = 1;
  private failure: Error | undefined;

  constructor(init: CodecInit, readonly size = Math.max(1, Math.min(availableParallelism(), 8))) {
    for (let i = 0; i < size; i++) {
      const w = new Worker(new URL('./chunk-worker.js', import.meta.url), { workerData: init });
      w.on('message', (m: Reply) => this.settle(m));
      w.on('error', (e) => this.fail(e));
      w.on('exit', (code) => { if (code !== 0) this.fail(new Error(`chunk worker exited with code ${code}`)); });
      this.workers.push(w);
      this.load.push(0);
    }
  }

  /** Moves `plain`'s memory to a worker (the buffer is unusable afterwards). */
  async digest(plain: Buffer): Promise<DigestResult> {
    const worker = this.leastLoaded();
    const id = this.nextId++;
    const ab = plain.buffer;
    const whole = plain.byteOffset === 0 && plain.byteLength === ab.byteLength && ab instanceof ArrayBuffer;
    const r = await this.call(worker, { op: 'digest', id, plain: whole ? plain : Buffer.from(plain) }, whole ? [ab] : undefined);
    if (r.digest === null || r.digest === undefined) return { ticket: null, digest: null };
    return { ticket: { worker, id }, digest: r.digest };
  }

  async encode(t: Ticket): Promise<Buffer> {
    const r = await this.call(t.worker, { op: 'encode', id: t.id });
    const blob = r.blob as Uint8Array;
    return Buffer.from(blob.buffer, blob.byteOffset, blob.byteLength);
  }

  drop(t: Ticket): void {
    this.workers[t.worker]?.postMessage({ op: 'drop', id: t.id });
  }

  async close(): Promise<void> {
    const ws = this.workers.splice(0);
    await Promise.all(ws.map((w) => w.terminate()));
    this.fail(new Error('chunk pool closed'));
  }

  private leastLoaded(): number {
    let best = 0;
    for (let i = 1; i < this.load.length; i++) if ((this.load[i] as number) < (this.load[best] as number)) best = i;
    return best;
  }

  private call(worker: number, msg: { op: string; id: number; plain?: Buffer }, transfer?: ArrayBuffer[]): Promise<Reply> {
    if (this.failure) return Promise.reject(this.failure);
    const w = this.workers[worker] as Worker;
    // Replies are keyed by message id; encode reuses the digest's id, so give it its own slot.
    const key = msg.op === 'encode' ? -msg.id : msg.id;
    this.load[worker] = (this.load[worker] as number) + 1;
    return new Promise<Reply>((resolve, reject) => {
      this.pending.set(key, {
        resolve: (r) => { this.load[worker] = (this.load[worker] as number) - 1; if (r.error) reject(new Error(r.error)); else resolve(r); },
        reject: (e) => { this.load[worker] = (this.load[worker] as number) - 1; reject(e); },
      });
      w.postMessage(msg, transfer);
    });
  }

  private settle(m: Reply & { op?: string }): void {
    const key = m.op === 'encode' ? -m.id : m.id;
    const p = this.pending.get(key);
    if (!p) return;
    this.pending.delete(key);
    p.resolve(m);
  }

  private fail(e: Error): void {
    this.failure ??= e;
    for (const p of this.pending.values()) p.reject(e);
    this.pending.clear();
  }
}

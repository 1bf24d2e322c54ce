/**
 * DecodePool: chunk decoding (read, decompress, verify) on worker threads, so
 * the thread answering FUSE/NFS requests only copies bytes. Each worker opens
 * the repository itself through the RepositoryReader contract; `wrap` turns a
 * DiskSource into one whose readChunk runs in the pool (chunk ids still come
 * from the in-process index, so holes and cache keys cost no round trip).
 * readChunkInto with shared memory (a ChunkCache slot) is the fast way: the
 * worker decodes into it and only a length comes back.
 */
import { Worker } from 'node:worker_threads';
import { availableParallelism } from 'node:os';
import { CorruptChunkError, type DiskSource } from '../repo/contract.js';
import type { DecodeReply, DecodeRequest } from './decode-worker.js';

interface Pending {
  resolve: (b: Buffer | null) => void;
  reject: (e: Error) => void;
  /** The shared memory the worker decodes into, if any. */
  into?: Buffer;
}

export class DecodePool {
  private readonly workers: Array<{ worker: Worker; busy: number }> = [];
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private failure: Error | undefined;
  private closing = false;

  constructor(repo: string, opts: { keyFile?: string; size?: number } = {}) {
    const size = Math.max(1, opts.size ?? availableParallelism());
    for (let i = 0; i < size; i++) {
      const worker = new Worker(new URL('./decode-worker.js', import.meta.url), { workerData: { repo, keyFile: opts.keyFile } });
      const slot = { worker, busy: 0 };
      worker.on('message', (reply: DecodeReply) => {
        slot.busy--;
        const p = this.pending.get(reply.id);
        this.pending.delete(reply.id);
        if (this.pending.size === 0) this.setRef(false);
        if (!p) return;
        if (reply.ok && 'length' in reply) p.resolve(reply.length === null ? null : p.into!.subarray(0, reply.length));
        else if (reply.ok) p.resolve(reply.data ? Buffer.from(reply.data.buffer, reply.data.byteOffset, reply.data.byteLength) : null);
        else if (reply.corrupt) p.reject(new CorruptChunkError(reply.corrupt.digest, reply.corrupt.reason, reply.corrupt.store));
        else p.reject(new Error(reply.message));
      });
      worker.on('error', (err) => this.fail(err));
      worker.on('exit', (code) => { if (code !== 0 && !this.closing) this.fail(new Error(`decode worker exited with code ${code}`)); });
      // Idle workers must not keep the process alive; busy ones must.
      worker.unref();
      this.workers.push(slot);
    }
  }

  private setRef(on: boolean): void {
    for (const w of this.workers) {
      if (on) w.worker.ref();
      else w.worker.unref();
    }
  }

  private fail(err: Error): void {
    this.failure ??= err;
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
    this.setRef(false);
  }

  /**
   * Chunk `index` of `disk` of `point`, decoded in a worker: into `into` when
   * given (it must be backed by a SharedArrayBuffer; the result is a view of
   * it), else into memory transferred from the worker.
   */
  decode(point: string, disk: string, index: number, into?: Buffer): Promise<Buffer | null> {
    if (this.failure) return Promise.reject(this.failure);
    if (into && !(into.buffer instanceof SharedArrayBuffer)) return Promise.reject(new TypeError('a decode target must be shared memory'));
    const slot = this.workers.reduce((a, b) => (b.busy < a.busy ? b : a));
    const id = this.nextId++;
    slot.busy++;
    if (this.pending.size === 0) this.setRef(true);
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, ...(into ? { into } : {}) });
      const request: DecodeRequest = { id, point, disk, index };
      if (into) request.into = new Uint8Array(into.buffer, into.byteOffset, into.length);
      slot.worker.postMessage(request);
    });
  }

  /** `source` (of `point`/`disk`) with its chunk reads done in the pool. */
  wrap(source: DiskSource, point: string, disk: string): DiskSource {
    return {
      size: source.size,
      chunkSize: source.chunkSize,
      chunkCount: source.chunkCount,
      chunkId: (i) => source.chunkId(i),
      readChunk: (i) => (source.chunkId(i) === null ? Promise.resolve(null) : this.decode(point, disk, i)),
      readChunkInto: (i, into) => {
        if (source.chunkId(i) === null) return Promise.resolve(null);
        // Memory a worker cannot share is decoded the transferring way and copied.
        if (!(into.buffer instanceof SharedArrayBuffer)) return this.decode(point, disk, i).then((b) => (b ? into.subarray(0, b.copy(into)) : null));
        return this.decode(point, disk, i, into);
      },
    };
  }

  async close(): Promise<void> {
    this.closing = true;
    await Promise.all(this.workers.map((w) => w.worker.terminate()));
    this.workers.length = 0;
  }
}

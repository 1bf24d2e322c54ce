/**
 * DecodePool: chunk decoding (read, decompress, verify) on worker threads, so
 * the thread answering FUSE/NFS requests only copies bytes. Each worker opens
 * the repository itself through the RepositoryReader contract; `wrap` turns a
 * DiskSource into one whose readChunk runs in the pool (chunk ids still come
 * from the in-process index, so holes and cache keys cost no round trip).
 * readChunkInto with shared memory (a ChunkCache slot) is the fast way: the
 * worker decodes into it and only a length comes back.
 */
import { availableParallelism } from 'node:os';
import { WorkerPool } from '../host/worker-pool.js';
import { CorruptChunkError, type DiskSource } from '../repo/contract.js';
import type { DecodeReply, DecodeRequest } from './decode-worker.js';
import { directSlotSize } from '../repo/direct-read.js';

export class DecodePool {
  private readonly pool: WorkerPool<DecodeRequest, DecodeReply>;

  constructor(repo: string, opts: { keyFile?: string; size?: number } = {}) {
    this.pool = new WorkerPool({
      script: new URL('./decode-worker.js', import.meta.url),
      workerData: { repo, keyFile: opts.keyFile },
      size: opts.size ?? availableParallelism(),
      name: 'decode',
      // A server's publications live as long as it does: idle decoders must not keep a process alive.
      unrefWhenIdle: true,
    });
  }

  /**
   * Chunk `index` of `disk` of `point`, decoded in a worker: into `into` when
   * given (it must be backed by a SharedArrayBuffer; the result is a view of
   * it), else into memory transferred from the worker.
   */
  async decode(point: string, disk: string, index: number, into?: Buffer): Promise<Buffer | null> {
    if (into && !(into.buffer instanceof SharedArrayBuffer)) throw new TypeError('a decode target must be shared memory');
    const request: Omit<DecodeRequest, 'id'> = { point, disk, index };
    if (into) request.into = new Uint8Array(into.buffer, into.byteOffset, into.length);
    const reply = await this.pool.request(request);
    if (reply.ok && 'length' in reply) {
      const at = reply.offset ?? 0;
      return reply.length === null ? null : (into as Buffer).subarray(at, at + reply.length);
    }
    if (reply.ok) return reply.data ? Buffer.from(reply.data.buffer, reply.data.byteOffset, reply.data.byteLength) : null;
    if (reply.corrupt) throw new CorruptChunkError(reply.corrupt.digest, reply.corrupt.reason, reply.corrupt.store);
    throw new Error(reply.message);
  }

  /** `source` (of `point`/`disk`) with its chunk reads done in the pool. */
  wrap(source: DiskSource, point: string, disk: string): DiskSource {
    return {
      size: source.size,
      chunkSize: source.chunkSize,
      chunkCount: source.chunkCount,
      // Room for the workers' O_DIRECT reads of a local store's chunk files (src/repo/direct-read.ts).
      slotSize: directSlotSize(source.chunkSize),
      chunkId: (i) => source.chunkId(i),
      readChunk: (i) => (source.chunkId(i) === null ? Promise.resolve(null) : this.decode(point, disk, i)),
      readChunkInto: (i, into) => {
        if (source.chunkId(i) === null) return Promise.resolve(null);
        // Memory a worker cannot share is decoded the transferring way and copied.
        if (!(into.buffer instanceof SharedArrayBuffer))
          return this.decode(point, disk, i).then((b) => (b ? into.subarray(0, b.copy(into)) : null));
        return this.decode(point, disk, i, into);
      },
    };
  }

  async close(): Promise<void> {
    await this.pool.close();
  }
}

/**
 * A small pool of codec worker threads (one per core by default). verify
 * uses check(); the backup engine may use encode(). Buffers are transferred,
 * not copied, when they own their whole ArrayBuffer.
 */
import { availableParallelism } from 'node:os';
import { WorkerPool } from '../host/worker-pool.js';
import type { RepoConfig } from './api.js';
import { CorruptChunkError } from './contract.js';
import type { CodecReply, CodecRequest } from './codec-worker.js';

function transferable(buf: Uint8Array): { view: Uint8Array; transfer: ArrayBuffer[] } {
  if (buf.byteOffset === 0 && buf.byteLength === buf.buffer.byteLength && buf.buffer instanceof ArrayBuffer) {
    return { view: buf, transfer: [buf.buffer] };
  }
  const copy = new Uint8Array(buf);
  return { view: copy, transfer: [copy.buffer] };
}

export class CodecPool {
  private readonly pool: WorkerPool<CodecRequest, CodecReply>;

  constructor(config: RepoConfig, key?: Buffer, size = availableParallelism()) {
    this.pool = new WorkerPool({
      script: new URL('./codec-worker.js', import.meta.url),
      workerData: { config, key: key ? new Uint8Array(key) : undefined },
      size,
      name: 'codec',
    });
  }

  get size(): number {
    return this.pool.size;
  }

  /**
   * Decodes and checks a blob; resolves with the plaintext length, rejects
   * with CorruptChunkError when its data is wrong. When only its CRC field is
   * wrong (the data decodes to the digest), `crcFixed` is the blob with a
   * correct CRC, for the caller to store. The blob is consumed.
   */
  async check(digest: string, blob: Buffer, expectedLength?: number): Promise<{ length: number; crcFixed?: Buffer }> {
    const { view, transfer } = transferable(blob);
    const reply = await this.pool.request({ op: 'check', digest, blob: view, expectedLength }, transfer);
    if (!reply.ok) {
      if (reply.corrupt) throw new CorruptChunkError(digest, reply.reason);
      throw new Error(reply.reason);
    }
    const fixed = reply.blob;
    return { length: reply.length ?? 0, ...(fixed ? { crcFixed: Buffer.from(fixed.buffer, fixed.byteOffset, fixed.byteLength) } : {}) };
  }

  /** Digest and blob of a chunk, computed in a worker. The plaintext buffer is consumed. */
  async encode(plain: Buffer): Promise<{ digest: string; blob: Buffer }> {
    const { view, transfer } = transferable(plain);
    const reply = await this.pool.request({ op: 'encode', plain: view }, transfer);
    if (!reply.ok) throw new Error(reply.reason);
    const blob = reply.blob ?? new Uint8Array();
    return { digest: reply.digest ?? '', blob: Buffer.from(blob.buffer, blob.byteOffset, blob.byteLength) };
  }

  async close(): Promise<void> {
    await this.pool.close();
  }
}

/**
 * A small pool of codec worker threads (one per core by default). verify
 * uses check(); the backup engine may use encode(). Buffers are transferred,
 * not copied, when they own their whole ArrayBuffer.
 */
import { Worker } from 'node:worker_threads';
import { availableParallelism } from 'node:os';
import type { RepoConfig } from './api.js';
import { CorruptChunkError } from './contract.js';
import type { CodecReply, CodecRequest } from './codec-worker.js';

type Request = CodecRequest extends infer R ? (R extends { id: number } ? Omit<R, 'id'> : never) : never;
type Pending = { resolve: (r: CodecReply) => void; reject: (e: Error) => void };

function transferable(buf: Uint8Array): { view: Uint8Array; transfer: ArrayBuffer[] } {
  if (buf.byteOffset === 0 && buf.byteLength === buf.buffer.byteLength && buf.buffer instanceof ArrayBuffer) {
    return { view: buf, transfer: [buf.buffer] };
  }
  const copy = new Uint8Array(buf);
  return { view: copy, transfer: [copy.buffer] };
}

export class CodecPool {
  private readonly workers: { worker: Worker; busy: number }[] = [];
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private failure: Error | undefined;
  private closing = false;

  constructor(config: RepoConfig, key?: Buffer, size = availableParallelism()) {
    for (let i = 0; i < Math.max(1, size); i++) {
      const worker = new Worker(new URL('./codec-worker.js', import.meta.url), { workerData: { config, key: key ? new Uint8Array(key) : undefined } });
      const slot = { worker, busy: 0 };
      worker.on('message', (reply: CodecReply) => {
        slot.busy--;
        const p = this.pending.get(reply.id);
        this.pending.delete(reply.id);
        p?.resolve(reply);
      });
      worker.on('error', (err) => this.fail(err));
      worker.on('exit', (code) => {
        if (code !== 0 && !this.closing) this.fail(new Error(`codec worker exited with code ${code}`));
      });
      this.workers.push(slot);
    }
  }

  get size(): number {
    return this.workers.length;
  }

  private fail(err: Error): void {
    this.failure ??= err;
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }

  private send(req: Request, transfer: ArrayBuffer[]): Promise<CodecReply> {
    if (this.failure) return Promise.reject(this.failure);
    const slot = this.workers.reduce((a, b) => (b.busy < a.busy ? b : a));
    const id = this.nextId++;
    slot.busy++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      slot.worker.postMessage({ ...req, id }, transfer);
    });
  }

  /**
   * Decodes and checks a blob; resolves with the plaintext length, rejects
   * with CorruptChunkError when its data is wrong. When only its CRC field is
   * wrong (the data decodes to the digest), `crcFixed` is the blob with a
   * correct CRC, for the caller to store. The blob is consumed.
   */
  async check(digest: string, blob: Buffer, expectedLength?: number): Promise<{ length: number; crcFixed?: Buffer }> {
    const { view, transfer } = transferable(blob);
    const reply = await this.send({ op: 'check', digest, blob: view, expectedLength }, transfer);
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
    const reply = await this.send({ op: 'encode', plain: view }, transfer);
    if (!reply.ok) throw new Error(reply.reason);
    const blob = reply.blob ?? new Uint8Array();
    return { digest: reply.digest ?? '', blob: Buffer.from(blob.buffer, blob.byteOffset, blob.byteLength) };
  }

  async close(): Promise<void> {
    this.closing = true;
    await Promise.all(this.workers.map((w) => w.worker.terminate()));
    this.workers.length = 0;
  }
}

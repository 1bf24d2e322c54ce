/**
 * One thread of a full restore (restore.ts): it reads a chunk's blob, checks
 * and decodes it, and writes the plaintext straight into the output file at
 * its offset. No chunk crosses a thread boundary, and the two buffers below
 * are the thread's whole chunk memory: a restore allocates nothing per chunk,
 * so it neither churns the garbage collector nor grows with the disk.
 *
 * I/O is synchronous on purpose: this thread has nothing else to do while it
 * waits, and there are as many of them as cores.
 */
import { writeSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { CorruptChunkError } from '../repo/contract.js';
import { createCodec } from '../repo/chunk-codec.js';
import { readBlobFrom, type BlobSource } from '../repo/chunk-store.js';
import { maxBlobSize } from '../repo/format.js';
import type { CodecInit } from './chunk-worker.js';

export interface RestoreJob {
  id: number;
  digest: string;
  /** The chunk's blob: its file (ChunkStore.fileOf) or its bytes (a store without files). */
  source: BlobSource;
  /** Byte offset of the chunk in the output file. */
  position: number;
}

export type RestoreJobResult =
  { id: number; written: number } | { id: number; error: string; corrupt: boolean; stage: 'read' | 'write'; code?: string };

const init = workerData as CodecInit & { fd: number };
const codec = createCodec(init.config, init.key ? Buffer.from(init.key) : undefined);
const chunkSize = init.config.chunkSize;
// One byte past the largest valid blob tells a blob that is too long.
const blob = Buffer.allocUnsafeSlow(maxBlobSize(chunkSize) + 1);
const plain = Buffer.allocUnsafeSlow(chunkSize);
/** The hole granularity of the output: a filesystem block multiple, small enough to keep a guest's free space sparse. */
const SPARSE_BLOCK = 64 * 1024;
const zeros = Buffer.alloc(SPARSE_BLOCK);

/** Which half of a job failed: a read error is the repository's, a write error the target's. */
let stage: 'read' | 'write' = 'read';

function restore(job: RestoreJob): number {
  stage = 'read';
  const data = readBlobFrom(job.digest, job.source, blob);
  const out = codec.decodeInto(job.digest, data, plain);
  stage = 'write';
  // Zero runs inside a chunk stay holes too (the output starts as one big hole), at SPARSE_BLOCK granularity.
  let written = 0;
  for (let start = 0; start < out.length;) {
    while (start < out.length && isZero(out, start)) start += SPARSE_BLOCK;
    if (start >= out.length) break;
    let end = start;
    while (end < out.length && !isZero(out, end)) end += SPARSE_BLOCK;
    end = Math.min(end, out.length);
    for (let off = start; off < end;) off += writeSync(init.fd, out, off, end - off, job.position + off);
    written += end - start;
    start = end;
  }
  return written;
}

function isZero(b: Buffer, at: number): boolean {
  const end = Math.min(at + SPARSE_BLOCK, b.length);
  return b.subarray(at, end).equals(zeros.subarray(0, end - at));
}

const port = parentPort;
if (!port) throw new Error('restore-worker must run as a worker thread');
port.on('message', (job: RestoreJob) => {
  try {
    port.postMessage({ id: job.id, written: restore(job) } satisfies RestoreJobResult);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    port.postMessage({
      id: job.id,
      error: err instanceof CorruptChunkError ? err.reason : (err as Error).message,
      corrupt: err instanceof CorruptChunkError,
      stage,
      ...(code ? { code } : {}),
    } satisfies RestoreJobResult);
  }
});

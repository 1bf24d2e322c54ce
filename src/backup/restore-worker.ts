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
import { ftruncateSync, writeSync } from 'node:fs';
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

/** `directFd`: the output opened with O_DIRECT, when its file system allows it; `size`: the disk's. */
const init = workerData as CodecInit & { fd: number; directFd?: number; size?: number };
const codec = createCodec(init.config, init.key ? Buffer.from(init.key) : undefined);
const chunkSize = init.config.chunkSize;
// One byte past the largest valid blob tells a blob that is too long.
const blob = Buffer.allocUnsafeSlow(maxBlobSize(chunkSize) + 1);
/** The hole granularity of the output: a filesystem block multiple, small enough to keep a guest's free space sparse. */
const SPARSE_BLOCK = 64 * 1024;
const zeros = Buffer.alloc(SPARSE_BLOCK);
/** What O_DIRECT asks of a write: memory address, file offset and length all multiples of it (4 KiB covers every block size in use). */
const DIRECT_ALIGN = 4096;

/**
 * The output written with O_DIRECT when the file system takes it (restore.ts opens `directFd`): the bytes
 * go from our buffer to the disk, not through the page cache. On this kind of host a buffered write of a
 * restored disk cost more CPU than decoding it (580 MiB: 0.6-1.75 s of system time against 0.06 s direct,
 * docs/operations.md), and restore fsyncs at the end anyway, so the cache bought nothing. O_DIRECT needs
 * an aligned buffer, which JavaScript cannot ask for: `plain` is placed at the first offset of a larger
 * allocation that a probe write accepts, past the end of the disk (cut off again at once). No offset
 * found: buffered writes.
 */
function directOutput(): { fd: number; plain: Buffer } | undefined {
  if (init.directFd === undefined || init.size === undefined) return undefined;
  const raw = Buffer.allocUnsafeSlow(chunkSize + DIRECT_ALIGN);
  const past = Math.ceil(init.size / DIRECT_ALIGN) * DIRECT_ALIGN;
  let at: number | undefined;
  // Allocations are at least 16-byte aligned; a misaligned buffer fails with EINVAL before any I/O.
  for (let k = 0; k < DIRECT_ALIGN && at === undefined; k += 16) {
    try {
      writeSync(init.directFd, raw, k, DIRECT_ALIGN, past);
      at = k;
    } catch (err) {
      // EINVAL: not aligned there, try the next offset; anything else (ENOSPC, EIO) ends the probe.
      if ((err as NodeJS.ErrnoException).code !== 'EINVAL') break;
    }
  }
  // Every thread probes past the end and cuts back to the disk's size: no byte of the disk is touched.
  if (at !== undefined) ftruncateSync(init.directFd, init.size);
  return at === undefined ? undefined : { fd: init.directFd, plain: raw.subarray(at, at + chunkSize) };
}
let direct = directOutput();

/**
 * One write of the output: direct when the run is aligned, else through the page cache. A direct write
 * the file system refuses (EINVAL though the probe passed: a block size above DIRECT_ALIGN) is done
 * buffered, and this thread writes buffered from then on.
 */
function writeAt(aligned: boolean, buf: Buffer, off: number, len: number, position: number): number {
  if (direct && aligned) {
    try {
      return writeSync(direct.fd, buf, off, len, position);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EINVAL') throw err;
      direct = undefined;
    }
  }
  return writeSync(init.fd, buf, off, len, position);
}
const plain = direct?.plain ?? Buffer.allocUnsafeSlow(chunkSize);

/** Which half of a job failed: a read error is the repository's, a write error the target's. */
let stage: 'read' | 'write' = 'read';

function restore(job: RestoreJob): number {
  stage = 'read';
  const data = readBlobFrom(job.digest, job.source, blob);
  let out = codec.decodeInto(job.digest, data, plain);
  stage = 'write';
  // A blob stored uncompressed decodes to a view of itself: O_DIRECT needs the aligned buffer.
  if (direct && (out.buffer !== plain.buffer || out.byteOffset !== plain.byteOffset)) out = plain.subarray(0, out.copy(plain));
  // Zero runs inside a chunk stay holes too (the output starts as one big hole), at SPARSE_BLOCK granularity.
  let written = 0;
  for (let start = 0; start < out.length;) {
    while (start < out.length && isZero(out, start)) start += SPARSE_BLOCK;
    if (start >= out.length) break;
    let end = start;
    while (end < out.length && !isZero(out, end)) end += SPARSE_BLOCK;
    end = Math.min(end, out.length);
    // A run that does not end on an aligned boundary (the short last chunk of an odd-sized disk) goes through the page cache.
    const aligned = (end - start) % DIRECT_ALIGN === 0 && (job.position + start) % DIRECT_ALIGN === 0;
    for (let off = start; off < end;) off += writeAt(aligned, out, off, end - off, job.position + off);
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

/**
 * Reading a chunk file with O_DIRECT, straight into the memory it will be
 * served from (a chunk cache slot), for the decode workers.
 *
 * Why: a cold sequential read of a published disk reads every chunk file once
 * and never again through the page cache (the decoded chunk is what is
 * cached). Through the page cache each 1 MiB chunk cost the kernel a page
 * allocation and memory-cgroup charge per 4 KiB, the copy to user space, and
 * later the reclaim of those pages: 0.40 CPU-s per GiB on one thread against
 * 0.16 with O_DIRECT, where the device writes into our memory (measured on
 * this host, 1024 chunk files, page cache dropped; docs/nbd.md "Measured").
 * A chunk stored as is (random data does not compress) is then hashed where
 * it lies and served from there: no copy at all.
 *
 * O_DIRECT wants the memory, the file offset and the length aligned to the
 * device's block (512 bytes here, 4096 on some devices). Offset 0 and a
 * length rounded up to DIRECT_ALIGN are. JavaScript cannot see the address
 * of its memory, so the read itself finds an aligned place in the target:
 * EINVAL means "not aligned" and the next candidate is tried; the offset
 * that worked is tried first next time (memory from one allocator comes back
 * with the same alignment). A file system without O_DIRECT (EINVAL on open,
 * or on every candidate) turns the direct path off for the process, and the
 * caller reads the ordinary way.
 */
import { closeSync, constants, openSync, readSync } from 'node:fs';
import { isErrno } from '../errors.js';
import { CorruptChunkError } from './contract.js';
import { maxBlobSize } from './format.js';

/** Length and file offset granularity of a direct read: a multiple of every device block size we meet. */
export const DIRECT_ALIGN = 4096;
/** Steps between the candidate memory offsets: every allocator returns at least 16-byte aligned memory. */
const PROBE_STEP = 16;

const roundUp = (n: number, to: number): number => Math.ceil(n / to) * to;

/** The longest direct read for a repository's chunk size: one block past the largest blob, so a longer file is seen. */
function directReadLength(chunkSize: number): number {
  return roundUp(maxBlobSize(chunkSize) + 1, DIRECT_ALIGN);
}

/** Bytes a target needs for readBlobDirectSync at any alignment: the longest read plus room to find an aligned start. */
export function directSlotSize(chunkSize: number): number {
  return directReadLength(chunkSize) + DIRECT_ALIGN;
}

/** Whether direct reads work here (false once the file system refused them); the offset that was aligned last. */
let supported = true;
let lastOffset = 0;

/**
 * The blob of `digest` in `file`, read with O_DIRECT into `into` (at least
 * directSlotSize(chunkSize) bytes) at an aligned offset: a view of `into`.
 * Undefined when the file system does not do direct I/O (read it the
 * ordinary way). Throws CorruptChunkError for a file longer than any blob,
 * and the system's error (ENOENT, EIO) otherwise.
 */
export function readBlobDirectSync(digest: string, file: string, chunkSize: number, into: Buffer): Buffer | undefined {
  if (!supported) return undefined;
  const want = directReadLength(chunkSize);
  if (into.length < want + DIRECT_ALIGN)
    throw new RangeError(`a direct read target of ${into.length} bytes is too small (${want + DIRECT_ALIGN})`);
  let fd: number;
  try {
    fd = openSync(file, constants.O_RDONLY | constants.O_DIRECT);
  } catch (err) {
    if (!isErrno(err, 'EINVAL')) throw err;
    supported = false;
    return undefined;
  }
  try {
    const at = alignedRead(fd, into, want);
    if (at === undefined) {
      supported = false;
      return undefined;
    }
    let n = at.n;
    // A short read is the end of the file; a read that stopped on a block boundary is continued, in case it was cut short.
    for (let r = n; r > 0 && n % DIRECT_ALIGN === 0 && n < want; n += r) r = readSync(fd, into, at.offset + n, want - n, n);
    if (n > maxBlobSize(chunkSize))
      throw new CorruptChunkError(digest, `blob is longer than any chunk (over ${maxBlobSize(chunkSize)} bytes)`);
    return into.subarray(at.offset, at.offset + n);
  } finally {
    closeSync(fd);
  }
}

/** The first read, at the first offset of `into` that the kernel accepts as aligned; undefined when none is. */
function alignedRead(fd: number, into: Buffer, want: number): { offset: number; n: number } | undefined {
  const tried = lastOffset;
  for (let k = -1; k < DIRECT_ALIGN / PROBE_STEP; k++) {
    const offset = k < 0 ? tried : k * PROBE_STEP;
    if (k >= 0 && offset === tried) continue;
    try {
      const n = readSync(fd, into, offset, want, 0);
      lastOffset = offset;
      return { offset, n };
    } catch (err) {
      if (!isErrno(err, 'EINVAL')) throw err;
    }
  }
  return undefined;
}

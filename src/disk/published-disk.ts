/**
 * PublishedDisk: random access to one restore-point disk, read-only.
 *
 * Words: the *base* is the DiskSource (fixed index + chunk store); a read is
 * split at chunk boundaries (finding the chunk for an offset is a division),
 * each chunk comes from the shared ChunkCache, holes are zeros without I/O.
 * Sequential access is detected (a read starting where the previous one
 * ended) and the next chunks are prefetched into the cache so that a
 * sequential reader rarely waits for a decode. A corrupt chunk fails the read
 * with DiskIoError (EIO): callers never see wrong bytes.
 */
import { CorruptChunkError, type DiskSource } from '../repo/contract.js';
import { ChunkCache } from './chunk-cache.js';

export class DiskIoError extends Error {
  readonly code = 'EIO';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'DiskIoError';
  }
}

export interface PublishedDiskOptions {
  /** Shared across disks of a process; default: a private 64 MiB cache. */
  cache?: ChunkCache;
  /** Chunks prefetched ahead of a sequential reader (0 disables readahead); default 8 MiB worth, at least 2. */
  readaheadChunks?: number;
  /** Name used in error messages. */
  name?: string;
}

/** How far ahead of a sequential reader chunks are decoded by default: enough to keep every decode worker busy. */
const READAHEAD_BYTES = 8 * 1024 * 1024;

/** Sequential reads in a row before readahead starts, so that random access never prefetches. */
const SEQUENTIAL_STREAK = 2;

export class PublishedDisk {
  readonly size: number;
  readonly chunkSize: number;
  readonly cache: ChunkCache;
  private readonly readahead: number;
  private readonly name: string;
  private lastEnd = -1;
  private streak = 0;
  /** Chunks fetched for readahead (for tests and stats). */
  prefetched = 0;

  constructor(private readonly source: DiskSource, opts: PublishedDiskOptions = {}) {
    this.size = source.size;
    this.chunkSize = source.chunkSize;
    this.cache = opts.cache ?? new ChunkCache(64 * 1024 * 1024);
    this.readahead = opts.readaheadChunks ?? Math.max(2, Math.ceil(READAHEAD_BYTES / this.chunkSize));
    this.name = opts.name ?? 'disk';
  }

  /**
   * Bytes [offset, offset+length) clamped to the disk size (a short buffer
   * past the end). The result may be a view of a cached chunk: callers must
   * not modify it.
   */
  async read(offset: number, length: number): Promise<Buffer> {
    if (offset < 0 || length < 0 || !Number.isSafeInteger(offset) || !Number.isSafeInteger(length)) {
      throw new RangeError(`bad read range ${offset}+${length}`);
    }
    const end = Math.min(this.size, offset + length);
    if (end <= offset) return Buffer.alloc(0);
    this.noteAccess(offset, end);
    const first = Math.floor(offset / this.chunkSize);
    const last = Math.floor((end - 1) / this.chunkSize);
    if (first === last) {
      // The common case (a FUSE/NFS request inside one chunk): no copy at all.
      const buf = await this.chunk(first);
      const cStart = first * this.chunkSize;
      if (buf && buf.length >= end - cStart) return buf.subarray(offset - cStart, end - cStart);
      const out = Buffer.alloc(end - offset);
      if (buf) buf.copy(out, 0, offset - cStart);
      return out;
    }
    const out = Buffer.allocUnsafe(end - offset);
    const parts: Promise<void>[] = [];
    for (let i = first; i <= last; i++) {
      const cStart = i * this.chunkSize;
      const from = Math.max(offset, cStart);
      const to = Math.min(end, cStart + this.chunkSize);
      parts.push(this.chunk(i).then((buf) => {
        const copied = buf ? buf.copy(out, from - offset, from - cStart, Math.min(to - cStart, buf.length)) : 0;
        // Holes, and anything a short chunk leaves, read as zeros.
        if (from + copied < to) out.fill(0, from - offset + copied, to - offset);
      }));
    }
    await Promise.all(parts);
    return out;
  }

  /** Whether chunk `index` is a hole (no stored data). */
  isHole(index: number): boolean {
    return this.source.chunkId(index) === null;
  }

  private chunk(index: number): Promise<Buffer | null> {
    const id = this.source.chunkId(index);
    if (id === null) return Promise.resolve(null);
    return this.cache.getOrCompute(id, () => this.source.readChunk(index)).catch((err: unknown) => {
      if (err instanceof CorruptChunkError) {
        throw new DiskIoError(`${this.name}: chunk ${index} (${err.digest}) is corrupt: ${err.reason}`, { cause: err });
      }
      throw new DiskIoError(`${this.name}: reading chunk ${index} failed: ${(err as Error).message}`, { cause: err });
    });
  }

  private noteAccess(offset: number, end: number): void {
    this.streak = offset === this.lastEnd ? this.streak + 1 : 0;
    this.lastEnd = end;
    if (this.readahead <= 0 || this.streak < SEQUENTIAL_STREAK) return;
    const next = Math.floor((end - 1) / this.chunkSize) + 1;
    for (let i = next; i < next + this.readahead && i < this.source.chunkCount; i++) {
      const id = this.source.chunkId(i);
      if (id === null || this.cache.has(id)) continue;
      this.prefetched++;
      // A failed prefetch is not cached; the real read reports the error.
      this.chunk(i).catch(() => undefined);
    }
  }
}

/**
 * PublishedDisk: random access to one restore-point disk, read-only.
 *
 * Words: the *base* is the DiskSource (fixed index + chunk store); a read is
 * split at chunk boundaries (finding the chunk for an offset is a division),
 * each chunk comes from the shared ChunkCache, holes are zeros without I/O.
 * Sequential access is detected (reads starting near where the stream
 * ended) and the next chunks are prefetched into the cache so that a
 * sequential reader rarely waits for a decode. A corrupt chunk fails the read
 * with DiskIoError (EIO): callers never see wrong bytes.
 */
import { CorruptChunkError, type DiskSource } from '../repo/contract.js';
import { ChunkCache, type ChunkFill } from './chunk-cache.js';
import { settleAll } from '../settle.js';

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

/**
 * How far from the end of the stream a read may start and still continue it:
 * a FUSE kernel keeps up to 12 requests of 128 KiB in flight (1.5 MiB), and
 * answers come back in any order.
 */
const SEQUENTIAL_SLACK = 2 * 1024 * 1024;

/**
 * Chunks a sequential stream has gone through before its chunks are left to
 * be evicted first (ChunkCache, "streamed"): a copy passes that at once.
 */
const STREAMING_CHUNKS = 8;

/** Sequential readers followed at once; a ninth evicts the one idle longest. */
const MAX_STREAMS = 8;

function checkRange(offset: number, length: number): void {
  if (offset < 0 || length < 0 || !Number.isSafeInteger(offset) || !Number.isSafeInteger(length)) {
    throw new RangeError(`bad read range ${offset}+${length}`);
  }
}

/** Zeros handed out for holes by `visit` (never written: callers must not keep or change a piece). */
const ZEROS = Buffer.alloc(64 * 1024);

export class PublishedDisk {
  readonly size: number;
  readonly chunkSize: number;
  readonly cache: ChunkCache;
  private readonly readahead: number;
  private readonly name: string;
  /** Sequential readers being followed, most recent last (several: NBD multi-conn splits a copy between connections). */
  private streams: { start: number; lastEnd: number; streak: number }[] = [];
  /** Chunks fetched for readahead (for tests and stats). */
  prefetched = 0;

  constructor(
    private readonly source: DiskSource,
    opts: PublishedDiskOptions = {},
  ) {
    this.size = source.size;
    this.chunkSize = source.chunkSize;
    this.cache = opts.cache ?? new ChunkCache(64 * 1024 * 1024);
    this.readahead = opts.readaheadChunks ?? Math.max(2, Math.ceil(READAHEAD_BYTES / this.chunkSize));
    this.name = opts.name ?? 'disk';
  }

  /** Bytes [offset, offset+length) clamped to the disk size (a short buffer past the end), in a buffer of the caller's own. */
  async read(offset: number, length: number): Promise<Buffer> {
    checkRange(offset, length);
    const out = Buffer.allocUnsafe(Math.max(0, Math.min(this.size, offset + length) - offset));
    await this.readInto(offset, out);
    return out;
  }

  /**
   * Copies the bytes at `offset` into `target`, clamped to the disk size, and
   * resolves to how many were copied. Cached chunks live in reused memory,
   * so this copy is the only way out of the cache; a frontend that has its
   * own buffer (FUSE) gets its bytes without any allocation.
   */
  async readInto(offset: number, target: Buffer): Promise<number> {
    checkRange(offset, target.length);
    const end = Math.min(this.size, offset + target.length);
    if (end <= offset) return 0;
    const streaming = this.noteAccess(offset, end);
    const first = Math.floor(offset / this.chunkSize);
    const last = Math.floor((end - 1) / this.chunkSize);
    const part = (i: number): Promise<void> => {
      const cStart = i * this.chunkSize;
      const from = Math.max(offset, cStart);
      const to = Math.min(end, cStart + this.chunkSize);
      // Holes, and anything a short chunk leaves, read as zeros.
      const copy = (buf: Buffer | null): void => {
        const copied = buf ? buf.copy(target, from - offset, from - cStart, Math.min(to - cStart, buf.length)) : 0;
        if (from + copied < to) target.fill(0, from - offset + copied, to - offset);
      };
      return this.chunk(i, copy, streaming);
    };
    if (first === last) await part(first);
    else await settleAll(Array.from({ length: last - first + 1 }, (_, k) => part(first + k)));
    return end - offset;
  }

  /**
   * Hands the bytes at `offset` (clamped to the disk size) to `use` in order,
   * one piece per chunk, straight from the chunk cache: no copy. `use` runs
   * synchronously and must not keep the piece (cached chunks live in reused
   * memory). Resolves to how many bytes were visited. A scan hashes and
   * writes each file through this (src/scan/inprocess.ts): the copy out of
   * the cache, and the garbage of one buffer per read, were a fifth of its thread.
   */
  async visit(offset: number, length: number, use: (piece: Buffer) => void): Promise<number> {
    checkRange(offset, length);
    const end = Math.min(this.size, offset + length);
    if (end <= offset) return 0;
    const streaming = this.noteAccess(offset, end);
    for (let i = Math.floor(offset / this.chunkSize); i * this.chunkSize < end; i++) {
      const cStart = i * this.chunkSize;
      const from = Math.max(offset, cStart) - cStart;
      const to = Math.min(end, cStart + this.chunkSize) - cStart;
      await this.chunk(
        i,
        (buf) => {
          const have = buf ? Math.max(from, Math.min(to, buf.length)) : from;
          if (buf && have > from) use(buf.subarray(from, have));
          // Holes, and anything a short chunk leaves, read as zeros.
          for (let z = have; z < to; z += ZEROS.length) use(ZEROS.subarray(0, Math.min(ZEROS.length, to - z)));
        },
        streaming,
      );
    }
    return end - offset;
  }

  /** Whether chunk `index` is a hole (no stored data). */
  isHole(index: number): boolean {
    return this.source.chunkId(index) === null;
  }

  /** Runs `use` on chunk `index` (null for a hole), synchronously with the cached bytes; `streaming`: for a sequential stream. */
  private chunk(index: number, use: (buf: Buffer | null) => void, streaming: boolean): Promise<void> {
    const id = this.source.chunkId(index);
    if (id === null) {
      use(null);
      return Promise.resolve();
    }
    const source = this.source;
    const fill: ChunkFill = async (slot) => {
      const buf = source.readChunkInto
        ? await source.readChunkInto(index, slot(source.slotSize ?? this.chunkSize))
        : await source.readChunk(index);
      // The index says data: a source that calls it a hole is broken, not zeros.
      if (!buf) throw new Error(`the source returned no bytes for chunk ${index} (${id})`);
      return buf;
    };
    return this.cache.withChunk(id, fill, use, { streaming }).catch((err: unknown) => {
      if (err instanceof CorruptChunkError) {
        throw new DiskIoError(`${this.name}: chunk ${index} (${err.digest}) is corrupt: ${err.reason}`, { cause: err });
      }
      throw new DiskIoError(`${this.name}: reading chunk ${index} failed: ${(err as Error).message}`, { cause: err });
    });
  }

  /** Follows the sequential streams; true when this read belongs to a long one (a copy: it will not read these chunks again). */
  private noteAccess(offset: number, end: number): boolean {
    // A kernel reading ahead has several requests in flight, and they arrive
    // out of order: a read starting near where the furthest one ended still
    // continues the stream. Readers that copy a disk in parallel (nbdcopy
    // gives each of its connections a part) are separate streams.
    let i = this.streams.findIndex((st) => Math.abs(offset - st.lastEnd) <= SEQUENTIAL_SLACK);
    if (i < 0) {
      if (this.streams.length >= MAX_STREAMS) this.streams.shift();
      this.streams.push({ start: offset, lastEnd: end, streak: 0 });
      i = this.streams.length - 1;
    } else {
      const st = this.streams[i]!;
      st.streak++;
      st.lastEnd = Math.max(st.lastEnd, end);
      // Most recent last, so the stream forgotten first is the one idle longest.
      this.streams.push(...this.streams.splice(i, 1));
      i = this.streams.length - 1;
    }
    const { start, lastEnd, streak } = this.streams[i]!;
    if (streak < SEQUENTIAL_STREAK) return false;
    // Its chunks are left to be evicted first only once it has gone through several: a guest's reads
    // around one spot (file system metadata) look sequential too, and it will read those again.
    const streaming = lastEnd - start >= STREAMING_CHUNKS * this.chunkSize;
    if (this.readahead <= 0) return streaming;
    const next = Math.floor((lastEnd - 1) / this.chunkSize) + 1;
    for (let k = next; k < next + this.readahead && k < this.source.chunkCount; k++) {
      const id = this.source.chunkId(k);
      if (id === null || this.cache.has(id)) continue;
      this.prefetched++;
      // A failed prefetch is not cached; the real read reports the error.
      this.chunk(k, () => undefined, streaming).catch(() => undefined);
    }
    return streaming;
  }
}

/**
 * Overlay: the redo log of one published disk. Every write made through a
 * publication lands here; the restore point itself is never written.
 *
 * Words and on-disk files (in the overlay directory, per disk):
 * - `<disk>.data`: a sparse file the size of the disk; block `b` lives at byte
 *   `b * BLOCK_SIZE`, so the map needs no offsets, only presence.
 * - `<disk>.map`: the allocation bitmap snapshot (header with magic and CRCs,
 *   then one bit per block), replaced atomically (tmp + fsync + rename).
 * - `<disk>.journal`: append-only records "blocks [start, start+count) are
 *   present", each CRC'd. Opening replays the journal over the snapshot up to
 *   the first torn record, writes a new snapshot and empties the journal.
 *
 * Durability order is data, then map: a journal record is written only after
 * the data it describes has been fdatasync'd, so a block marked present always
 * holds the bytes that were acknowledged. A sync write (or commit()) returns
 * only after both are durable; an unstable write is durable after commit().
 * Rewriting a block that is already present needs no map record at all.
 *
 * BLOCK_SIZE is 4 KiB (see docs/publish.md): guests write 4 KiB pages, so
 * aligned writes never read-modify-write the base, and the bitmap costs one
 * bit per block: 32 KiB of memory per GiB of disk.
 */
import fs from 'node:fs';
import path from 'node:path';
import { crc32 } from 'node:zlib';
import { settleAll } from '../settle.js';
import { fsyncDir, writeFileAtomic } from '../host/atomic-file.js';
import { OVERLAY_JOURNAL_MAGIC, OVERLAY_JOURNAL_RECORD_BYTES, OVERLAY_MAP_HEADER_BYTES, OVERLAY_MAP_MAGIC } from '../formats.js';

export const BLOCK_SIZE = 4096;
// The on-disk layout is registered in src/formats.ts (and docs/formats.md, "Overlay").
const MAP_MAGIC = OVERLAY_MAP_MAGIC;
const JOURNAL_MAGIC = OVERLAY_JOURNAL_MAGIC;
const MAP_HEADER_BYTES = OVERLAY_MAP_HEADER_BYTES;
const JOURNAL_RECORD_BYTES = OVERLAY_JOURNAL_RECORD_BYTES;
/** Unstable writes are made durable at least this often even without a commit. */
const BACKGROUND_COMMIT_MS = 2000;

export type OverlayErrorCode = 'ENOSPC' | 'EROFS' | 'EFBIG' | 'EIO';

export class OverlayError extends Error {
  constructor(
    readonly code: OverlayErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'OverlayError';
  }
}

/**
 * A size limit shared by the overlays of one publication (its disks draw on
 * one budget), with warnings when usage first crosses 80 % and 90 %.
 */
export class OverlayBudget {
  usedBytes = 0;
  private readonly fired = new Set<number>();

  constructor(
    readonly limitBytes = Number.MAX_SAFE_INTEGER,
    private readonly onThreshold?: (percent: number, usedBytes: number, limitBytes: number) => void,
  ) {}

  get freeBytes(): number {
    return Math.max(0, this.limitBytes - this.usedBytes);
  }

  get limited(): boolean {
    return this.limitBytes < Number.MAX_SAFE_INTEGER;
  }

  /** Records usage and fires each threshold once (also when opened already past it). */
  add(bytes: number, warn = true): void {
    this.usedBytes += bytes;
    if (!this.limited) return;
    for (const p of [80, 90]) {
      if (!this.fired.has(p) && this.usedBytes * 100 >= this.limitBytes * p) {
        this.fired.add(p);
        if (warn) this.onThreshold?.(p, this.usedBytes, this.limitBytes);
      }
    }
  }
}

/** What the overlay reads through to: the published disk. */
export interface OverlayBase {
  readonly size: number;
  /** Copies the bytes at `offset` into `target` (clamped to the size); resolves to how many. */
  readInto(offset: number, target: Buffer): Promise<number>;
  /** Chunk size of the base, with isHole: where the restore point stores nothing (PublishedDisk has both). */
  readonly chunkSize?: number;
  isHole?(index: number): boolean;
}

/** One run of the disk's allocation map (Overlay.extents). */
export interface OverlayExtent {
  length: number;
  /** Neither the overlay nor the restore point stores it: it reads as zeros. */
  hole: boolean;
}

export interface OverlayOptions {
  /** Directory holding this disk's overlay files (created if missing). */
  dir: string;
  /** Disk name: the files are `<name>.data`, `.map`, `.journal`. */
  name: string;
  base: OverlayBase;
  /** Bytes of overlay data allowed; writes needing more fail with ENOSPC. Default: unlimited. Ignored with `budget`. */
  limitBytes?: number;
  /** A limit shared with other overlays (the disks of one publication). */
  budget?: OverlayBudget;
  readOnly?: boolean;
  /** Called once each time usage first crosses 80 % and 90 % of the limit. Ignored with `budget`. */
  onThreshold?: (percent: number, usedBytes: number, limitBytes: number) => void;
}

export function overlayFiles(dir: string, name: string): { data: string; map: string; journal: string } {
  return { data: path.join(dir, `${name}.data`), map: path.join(dir, `${name}.map`), journal: path.join(dir, `${name}.journal`) };
}

/** Deletes an overlay's files (the writes made through a publication). */
export async function discardOverlay(dir: string, name: string): Promise<void> {
  for (const f of Object.values(overlayFiles(dir, name))) await fs.promises.rm(f, { force: true });
}

function popcount(b: number): number {
  b = b - ((b >> 1) & 0x55);
  b = (b & 0x33) + ((b >> 2) & 0x33);
  return (b + (b >> 4)) & 0x0f;
}

export class Overlay {
  readonly size: number;
  readonly blockCount: number;
  readonly budget: OverlayBudget;
  private readonly bitmap: Uint8Array;
  private allocated = 0;
  private pending: Array<[number, number]> = [];
  private dirty = false;
  private lock: Promise<unknown> = Promise.resolve();
  private timer: NodeJS.Timeout | undefined;
  private closed = false;

  private constructor(
    private readonly opts: OverlayOptions,
    private readonly data: fs.promises.FileHandle,
    private readonly journal: fs.promises.FileHandle,
    bitmap: Uint8Array,
  ) {
    this.size = opts.base.size;
    this.blockCount = Math.ceil(this.size / BLOCK_SIZE);
    this.budget = opts.budget ?? new OverlayBudget(opts.limitBytes, opts.onThreshold);
    this.bitmap = bitmap;
    for (const byte of bitmap) this.allocated += popcount(byte);
    this.budget.add(this.usedBytes, false);
  }

  /** Opens (or creates) the overlay, replaying and compacting its map journal. */
  static async open(opts: OverlayOptions): Promise<Overlay> {
    await fs.promises.mkdir(opts.dir, { recursive: true });
    const files = overlayFiles(opts.dir, opts.name);
    const blockCount = Math.ceil(opts.base.size / BLOCK_SIZE);
    const bitmap = new Uint8Array(Math.ceil(blockCount / 8));
    await loadSnapshot(files.map, blockCount, bitmap);
    await replayJournal(files.journal, blockCount, bitmap);
    await writeSnapshot(files.map, blockCount, bitmap);
    const { O_RDWR, O_CREAT, O_APPEND } = fs.constants;
    const data = await fs.promises.open(files.data, O_RDWR | O_CREAT, 0o600);
    if ((await data.stat()).size < opts.base.size) await data.truncate(opts.base.size);
    const journal = await fs.promises.open(files.journal, O_RDWR | O_CREAT | O_APPEND, 0o600);
    // The snapshot now holds every record, so the journal starts empty.
    await journal.truncate(0);
    await journal.sync();
    await fsyncDir(opts.dir);
    const ov = new Overlay(opts, data, journal, bitmap);
    ov.timer = setInterval(() => {
      if (ov.dirty) ov.commit().catch(() => undefined);
    }, BACKGROUND_COMMIT_MS);
    ov.timer.unref();
    return ov;
  }

  get usedBytes(): number {
    return this.allocated * BLOCK_SIZE;
  }

  get limitBytes(): number {
    return this.budget.limitBytes;
  }

  /** Bytes the budget still allows (shared with the publication's other disks). */
  get freeBytes(): number {
    return this.budget.freeBytes;
  }

  present(block: number): boolean {
    return ((this.bitmap[block >> 3] ?? 0) & (1 << (block & 7))) !== 0;
  }

  /** The disk's current bytes: overlay blocks over the base. */
  async read(offset: number, length: number): Promise<Buffer> {
    const out = Buffer.allocUnsafe(Math.max(0, Math.min(this.size, offset + length) - offset));
    await this.readInto(offset, out);
    return out;
  }

  /** read() into the caller's buffer (clamped to the size): resolves to how many bytes were copied. */
  async readInto(offset: number, target: Buffer): Promise<number> {
    const end = Math.min(this.size, offset + target.length);
    if (end <= offset) return 0;
    const b0 = Math.floor(offset / BLOCK_SIZE);
    const b1 = Math.floor((end - 1) / BLOCK_SIZE);
    if (this.allocated === 0 || this.noneIn(b0, b1)) return this.opts.base.readInto(offset, target.subarray(0, end - offset));
    const parts: Promise<unknown>[] = [];
    let run = b0;
    while (run <= b1) {
      const inOverlay = this.present(run);
      let stop = run;
      while (stop + 1 <= b1 && this.present(stop + 1) === inOverlay) stop++;
      const from = Math.max(offset, run * BLOCK_SIZE);
      const to = Math.min(end, (stop + 1) * BLOCK_SIZE);
      parts.push(
        inOverlay
          ? this.data.read(target, from - offset, to - from, from).then(({ bytesRead }) => {
              // Allocated blocks are written in full; zeros stand in should the file still end early.
              if (bytesRead < to - from) target.fill(0, from - offset + bytesRead, to - offset);
            })
          : this.opts.base.readInto(from, target.subarray(from - offset, to - offset)),
      );
      run = stop + 1;
    }
    await settleAll(parts);
    return end - offset;
  }

  /**
   * The allocation map of [offset, offset+length) clamped to the size, in
   * order: blocks written through the overlay are data; elsewhere a chunk the
   * base calls a hole is a hole, the rest data. Reads nothing.
   */
  extents(offset: number, length: number): OverlayExtent[] {
    const end = Math.min(this.size, offset + length);
    const out: OverlayExtent[] = [];
    const add = (len: number, hole: boolean): void => {
      const last = out[out.length - 1];
      if (last && last.hole === hole) last.length += len;
      else out.push({ length: len, hole });
    };
    const base = this.opts.base;
    const chunk = base.chunkSize && base.isHole ? base.chunkSize : 0;
    let at = offset;
    while (at < end) {
      const block = Math.floor(at / BLOCK_SIZE);
      if (this.present(block)) {
        let stop = block + 1;
        while (stop * BLOCK_SIZE < end && this.present(stop)) stop++;
        const to = Math.min(end, stop * BLOCK_SIZE);
        add(to - at, false);
        at = to;
        continue;
      }
      // Not in the overlay: up to the next overlay block or chunk boundary, whichever is first.
      const chunkEnd = chunk ? (Math.floor(at / chunk) + 1) * chunk : end;
      let stop = block + 1;
      while (stop * BLOCK_SIZE < Math.min(end, chunkEnd) && !this.present(stop)) stop++;
      const to = Math.min(end, chunkEnd, stop * BLOCK_SIZE);
      add(to - at, chunk ? base.isHole!(Math.floor(at / chunk)) : false);
      at = to;
    }
    return out;
  }

  private noneIn(b0: number, b1: number): boolean {
    for (let b = b0; b <= b1; b++) {
      if ((b & 7) === 0 && b + 7 <= b1) {
        if (this.bitmap[b >> 3] !== 0) return false;
        b += 7;
        continue;
      }
      if (this.present(b)) return false;
    }
    return true;
  }

  /**
   * Writes `data` at `offset`. Resolves once the bytes are in the overlay (and
   * durable with the map, when `sync`). Fails with ENOSPC when the new blocks
   * would pass the limit or the filesystem is full, leaving the overlay as it
   * was before the write.
   */
  write(offset: number, data: Buffer, sync: boolean): Promise<void> {
    return this.exclusive(() => this.writeLocked(offset, data, sync));
  }

  /** Makes every acknowledged write durable: data first, then the map. */
  commit(): Promise<void> {
    return this.exclusive(() => this.commitLocked());
  }

  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.lock.then(fn, fn);
    this.lock = run.catch(() => undefined);
    return run;
  }

  private async writeLocked(offset: number, data: Buffer, sync: boolean): Promise<void> {
    if (this.closed) throw new OverlayError('EIO', `overlay ${this.opts.name} is closed`);
    if (this.opts.readOnly) throw new OverlayError('EROFS', `${this.opts.name} is published read-only`);
    if (data.length === 0) return;
    const end = offset + data.length;
    if (offset < 0 || end > this.size)
      throw new OverlayError('EFBIG', `write ${offset}+${data.length} is past the end of ${this.opts.name} (${this.size} bytes)`);
    const b0 = Math.floor(offset / BLOCK_SIZE);
    const b1 = Math.floor((end - 1) / BLOCK_SIZE);
    const fresh: number[] = [];
    for (let b = b0; b <= b1; b++) if (!this.present(b)) fresh.push(b);
    if (fresh.length * BLOCK_SIZE > this.budget.freeBytes) {
      throw new OverlayError(
        'ENOSPC',
        `overlay of ${this.opts.name} is full (${this.budget.usedBytes} of ${this.budget.limitBytes} bytes used)`,
      );
    }
    const start = b0 * BLOCK_SIZE;
    const stop = Math.min(this.size, (b1 + 1) * BLOCK_SIZE);
    let buf = data;
    if (start !== offset || stop !== end) {
      // Partial blocks: the block's current bytes (overlay or base) around the new ones.
      buf = Buffer.alloc(stop - start);
      if (start !== offset) (await this.read(start, Math.min(BLOCK_SIZE, stop - start))).copy(buf, 0);
      const tailStart = b1 * BLOCK_SIZE;
      if (stop !== end && tailStart >= start) (await this.read(tailStart, stop - tailStart)).copy(buf, tailStart - start);
      data.copy(buf, offset - start);
    }
    try {
      let done = 0;
      while (done < buf.length) {
        const { bytesWritten } = await this.data.write(buf, done, buf.length - done, start + done);
        done += bytesWritten;
      }
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      throw new OverlayError(
        code === 'ENOSPC' || code === 'EDQUOT' ? 'ENOSPC' : 'EIO',
        `writing the overlay of ${this.opts.name} failed: ${(err as Error).message}`,
        { cause: err },
      );
    }
    for (const b of fresh) {
      this.bitmap[b >> 3] = (this.bitmap[b >> 3] ?? 0) | (1 << (b & 7));
      const last = this.pending[this.pending.length - 1];
      if (last && last[0] + last[1] === b) last[1]++;
      else this.pending.push([b, 1]);
    }
    this.allocated += fresh.length;
    this.dirty = true;
    this.budget.add(fresh.length * BLOCK_SIZE);
    if (sync) await this.commitLocked();
  }

  private async commitLocked(): Promise<void> {
    if (!this.dirty) return;
    this.dirty = false;
    const records = this.pending;
    this.pending = [];
    try {
      await this.data.datasync();
      if (records.length === 0) return;
      const buf = Buffer.alloc(records.length * JOURNAL_RECORD_BYTES);
      records.forEach(([start, count], i) => encodeRecord(buf, i * JOURNAL_RECORD_BYTES, start, count));
      await this.journal.write(buf, 0, buf.length);
      await this.journal.datasync();
    } catch (err) {
      // Keep the records: the next commit retries them.
      this.pending = records.concat(this.pending);
      this.dirty = true;
      const code = (err as NodeJS.ErrnoException).code;
      throw new OverlayError(
        code === 'ENOSPC' ? 'ENOSPC' : 'EIO',
        `committing the overlay of ${this.opts.name} failed: ${(err as Error).message}`,
        { cause: err },
      );
    }
  }

  /** Commits, compacts the journal into the snapshot and closes the files. */
  async close(): Promise<void> {
    if (this.closed) return;
    await this.commit();
    this.closed = true;
    clearInterval(this.timer);
    await this.exclusive(async () => {
      await writeSnapshot(overlayFiles(this.opts.dir, this.opts.name).map, this.blockCount, this.bitmap);
      await this.journal.truncate(0);
      await this.journal.close();
      await this.data.close();
    });
  }
}

function encodeRecord(buf: Buffer, at: number, start: number, count: number): void {
  buf.writeUInt32LE(JOURNAL_MAGIC, at);
  buf.writeUInt32LE(0, at + 4);
  buf.writeBigUInt64LE(BigInt(start), at + 8);
  buf.writeUInt32LE(count, at + 16);
  buf.writeUInt32LE(crc32(buf.subarray(at, at + 20)), at + 20);
}

async function loadSnapshot(file: string, blockCount: number, bitmap: Uint8Array): Promise<void> {
  let raw: Buffer;
  try {
    raw = await fs.promises.readFile(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  const header = raw.subarray(0, MAP_HEADER_BYTES);
  if (raw.length < MAP_HEADER_BYTES || header.toString('latin1', 0, 8) !== MAP_MAGIC) {
    throw new OverlayError('EIO', `${file} is not an overlay map (bad magic)`);
  }
  if (header.readUInt32LE(28) !== crc32(header.subarray(0, 28))) throw new OverlayError('EIO', `${file}: header checksum mismatch`);
  const bs = header.readUInt32LE(8);
  const count = Number(header.readBigUInt64LE(16));
  if (bs !== BLOCK_SIZE || count !== blockCount) {
    throw new OverlayError('EIO', `${file} describes ${count} blocks of ${bs} bytes, the disk has ${blockCount} of ${BLOCK_SIZE}`);
  }
  const body = raw.subarray(MAP_HEADER_BYTES);
  if (body.length !== bitmap.length || crc32(body) !== header.readUInt32LE(24)) {
    throw new OverlayError('EIO', `${file}: bitmap checksum mismatch`);
  }
  bitmap.set(body);
}

async function replayJournal(file: string, blockCount: number, bitmap: Uint8Array): Promise<void> {
  let raw: Buffer;
  try {
    raw = await fs.promises.readFile(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  for (let at = 0; at + JOURNAL_RECORD_BYTES <= raw.length; at += JOURNAL_RECORD_BYTES) {
    // A torn or garbled record ends the journal: it was never acknowledged.
    if (raw.readUInt32LE(at) !== JOURNAL_MAGIC || raw.readUInt32LE(at + 20) !== crc32(raw.subarray(at, at + 20))) break;
    const start = Number(raw.readBigUInt64LE(at + 8));
    const count = raw.readUInt32LE(at + 16);
    for (let b = start; b < start + count && b < blockCount; b++) bitmap[b >> 3] = (bitmap[b >> 3] ?? 0) | (1 << (b & 7));
  }
}

async function writeSnapshot(file: string, blockCount: number, bitmap: Uint8Array): Promise<void> {
  const header = Buffer.alloc(MAP_HEADER_BYTES);
  header.write(MAP_MAGIC, 0, 'latin1');
  header.writeUInt32LE(BLOCK_SIZE, 8);
  header.writeBigUInt64LE(BigInt(blockCount), 16);
  header.writeUInt32LE(crc32(bitmap), 24);
  header.writeUInt32LE(crc32(header.subarray(0, 28)), 28);
  await writeFileAtomic(path.dirname(file), path.basename(file), Buffer.concat([header, bitmap]), 0o600);
}

/**
 * The local-disk ChunkStore: `chunks/<first 2 hex digits>/<digest>`, one file
 * per blob, the 256 shard directories created up front.
 *
 * Insert is crash-safe (temp file in the shard, rename; at sync level `file`
 * also fsync of the file and the shard) and idempotent: an existing chunk
 * only gets its mtime refreshed, which is what tells a concurrent gc that a
 * running backup uses it. At level `filesystem` sync() makes the chunks
 * durable with one syncfs (src/host/syncfs.ts); see SyncLevel in api.ts.
 */
import { closeSync, existsSync, openSync, readSync, readvSync } from 'node:fs';
import { link, mkdir, open, readdir, readFile, rename, stat, unlink, utimes } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { DEFAULT_SYNC_LEVEL, type ChunkStore, type PlacedBlob, type StoredChunk, type SyncLevel } from './api.js';
import { badInput, isErrno, notFound, RestorelabError } from '../errors.js';
import { fsyncDir, removeIfOlder, tempName, writeFileAtomic } from '../host/atomic-file.js';
import { FilesystemSyncer, syncFilesystem } from '../host/syncfs.js';
import { CHUNK_HEADER_SIZE, QUARANTINE_SUFFIX, TEMP_PREFIX } from './format.js';
import { CorruptChunkError } from './contract.js';
import { readBlobDirectSync } from './direct-read.js';

const DIGEST_RE = /^[0-9a-f]{64}$/;
/** Blobs are readable by the owner only: an unencrypted blob is a piece of a VM disk. */
const BLOB_MODE = 0o600;

export function assertDigest(digest: string, where: string): void {
  if (!DIGEST_RE.test(digest)) throw badInput('BAD_DIGEST', `${where}: "${digest}" is not a 64-digit hex digest`);
}

export async function createShards(path: string): Promise<void> {
  await mkdir(path, { recursive: true });
  for (let i = 0; i < 256; i++) await mkdir(join(path, i.toString(16).padStart(2, '0')), { recursive: true });
}

/**
 * Reads the blob of `digest` from `file` into `scratch` with blocking I/O,
 * for threads that do nothing else; returns the bytes read. Size `scratch`
 * one byte past the largest valid blob (maxBlobSize + 1): a file that fills
 * it is longer than any blob, and corrupt.
 */
export function readBlobSync(digest: string, file: string, scratch: Buffer): Buffer {
  const fd = openSync(file, 'r');
  let n = 0;
  try {
    for (let r = 1; r > 0 && n < scratch.length; n += r) r = readSync(fd, scratch, n, scratch.length - n, n);
  } finally {
    closeSync(fd);
  }
  if (n === scratch.length) throw new CorruptChunkError(digest, `blob is longer than any chunk (over ${scratch.length - 1} bytes)`);
  return scratch.subarray(0, n);
}

/**
 * readBlobSync that reads the first `direct.length` bytes of the blob's
 * payload straight into `direct` (a chunk cache slot) and the rest of the blob
 * into `scratch` at its place, leaving a gap in `scratch` where those bytes
 * would be: ChunkCodec.decodeAround's layout. A chunk stored as is (random
 * data, which does not compress) then needs no copy from the blob buffer into
 * the slot. Returns the blob's extent in `scratch`, the gap included.
 */
export function readBlobAroundSync(digest: string, file: string, scratch: Buffer, direct: Buffer): Buffer {
  const gapEnd = CHUNK_HEADER_SIZE + direct.length;
  if (scratch.length <= gapEnd) throw new RangeError(`a blob buffer of ${scratch.length} bytes cannot hold a gap up to ${gapEnd}`);
  // The blob's bytes from position `at` on, in the buffers they are read into.
  const from = (at: number): Buffer[] =>
    at < CHUNK_HEADER_SIZE
      ? [scratch.subarray(at, CHUNK_HEADER_SIZE), direct, scratch.subarray(gapEnd)]
      : at < gapEnd
        ? [direct.subarray(at - CHUNK_HEADER_SIZE), scratch.subarray(gapEnd)]
        : [scratch.subarray(at)];
  const fd = openSync(file, 'r');
  let n = 0;
  try {
    for (let r = 1; r > 0 && n < scratch.length; n += r) r = readvSync(fd, from(n), n);
  } finally {
    closeSync(fd);
  }
  if (n === scratch.length) throw new CorruptChunkError(digest, `blob is longer than any chunk (over ${scratch.length - 1} bytes)`);
  return scratch.subarray(0, n);
}

/**
 * Where a worker thread finds a chunk's blob: the store's file (a local
 * store, ChunkStore.fileOf), or the bytes the main thread fetched with get()
 * (a store without files: object storage).
 */
export type BlobSource = { file: string } | { blob: Uint8Array };

/** The blob of `digest` from `src`, with readBlobSync's length check for handed bytes too. */
export function readBlobFrom(digest: string, src: BlobSource, scratch: Buffer): Buffer {
  if ('file' in src) return readBlobSync(digest, src.file, scratch);
  if (src.blob.length >= scratch.length)
    throw new CorruptChunkError(digest, `blob is longer than any chunk (over ${scratch.length - 1} bytes)`);
  return Buffer.from(src.blob.buffer, src.blob.byteOffset, src.blob.byteLength);
}

/** The BlobSource of a chunk for a worker: the file when the store has files, else its bytes (get()). */
export async function blobSourceOf(store: ChunkStore, digest: string): Promise<BlobSource> {
  return store.fileOf ? { file: store.fileOf(digest) } : { blob: await store.get(digest) };
}

export interface ChunkStoreOptions {
  /** Default DEFAULT_SYNC_LEVEL. */
  syncLevel?: SyncLevel;
  /** How sync() flushes the file system at level `filesystem`; default syncFilesystem. Tests inject failures here. */
  syncFilesystem?: (dir: string) => Promise<void>;
}

export class LocalChunkStore implements ChunkStore {
  readonly syncLevel: SyncLevel;
  private readonly syncFs: (dir: string) => Promise<void>;
  /** Set by prepareSync when no syncFilesystem was injected: sync() goes through its waiting shell. */
  private syncer: FilesystemSyncer | undefined;
  private readonly injectedSync: boolean;
  /**
   * Chunks inserted or found (a successful touch) by this store so far, and
   * how many of them the last completed sync covered: a sync covers what
   * happened before it started. Found chunks count because another writer
   * at level `filesystem` may have renamed them into place without syncing yet.
   */
  private chunkEvents = 0;
  private syncedEvents = 0;

  constructor(
    readonly path: string,
    opts: ChunkStoreOptions = {},
  ) {
    this.syncLevel = opts.syncLevel ?? DEFAULT_SYNC_LEVEL;
    this.syncFs = opts.syncFilesystem ?? syncFilesystem;
    this.injectedSync = opts.syncFilesystem !== undefined;
  }

  /**
   * At level `filesystem`: starts the shell that will run this backup's
   * syncs (FilesystemSyncer), and has it flush what is already dirty on the
   * file system (other programs' writes, which syncfs would otherwise wait
   * for at the end), while the caller waits on other things.
   */
  prepareSync(): void {
    if (this.syncLevel !== 'filesystem' || this.injectedSync || this.syncer) return;
    this.syncer = new FilesystemSyncer(this.path);
    // A failure here concerns writes older than this backup's; the syncs that cover its chunks report their own.
    void this.syncer.sync().catch(() => undefined);
  }

  fileOf(digest: string): string {
    return this.file(digest);
  }

  private file(digest: string): string {
    assertDigest(digest, `chunk store ${this.path}`);
    return join(this.path, digest.slice(0, 2), digest);
  }

  async has(digest: string): Promise<boolean> {
    try {
      await stat(this.file(digest));
      return true;
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return false;
      throw this.ioError('check', digest, err);
    }
  }

  async touch(digest: string): Promise<boolean> {
    const now = new Date();
    try {
      await utimes(this.file(digest), now, now);
      this.chunkEvents++;
      return true;
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return false;
      throw this.ioError('touch', digest, err);
    }
  }

  async insert(digest: string, blob: Buffer): Promise<{ existed: boolean; size: number }> {
    const target = this.file(digest);
    // touch() first: if gc renamed the chunk away a moment ago it fails with ENOENT and we write it anew.
    if (await this.touch(digest)) {
      const st = await stat(target).catch(() => undefined);
      if (st) return { existed: true, size: st.size };
    }
    try {
      if (this.syncLevel === 'file') await writeFileAtomic(dirname(target), basename(target), blob, BLOB_MODE);
      else await this.writeUnsynced(target, blob);
    } catch (err) {
      throw this.ioError('insert', digest, err);
    }
    this.chunkEvents++;
    return { existed: false, size: blob.length };
  }

  async insertPlaced(digest: string, place: (p: PlacedBlob) => Promise<number>): Promise<{ existed: boolean; size: number }> {
    const target = this.file(digest);
    if (await this.touch(digest)) {
      const st = await stat(target).catch(() => undefined);
      if (st) return { existed: true, size: st.size };
    }
    const shard = dirname(target);
    const tmp = join(shard, tempName());
    let size: number;
    try {
      size = await place({ tmp, target, fsync: this.syncLevel === 'file', mode: BLOB_MODE });
      if (this.syncLevel === 'file') await fsyncDir(shard);
    } catch (err) {
      await unlink(tmp).catch(() => undefined);
      throw this.ioError('insert', digest, err);
    }
    this.chunkEvents++;
    return { existed: false, size };
  }

  /** Temp file and rename without fsyncs: readers never see a partial blob; durability waits for sync(). */
  private async writeUnsynced(target: string, blob: Buffer): Promise<void> {
    const tmp = join(dirname(target), tempName());
    const fh = await open(tmp, 'wx', BLOB_MODE);
    try {
      try {
        await fh.writeFile(blob);
      } finally {
        await fh.close();
      }
      await rename(tmp, target);
    } catch (err) {
      await unlink(tmp).catch(() => undefined);
      throw err;
    }
  }

  async sync(): Promise<void> {
    if (this.syncLevel !== 'filesystem') return;
    const upTo = this.chunkEvents;
    if (upTo === this.syncedEvents) return;
    try {
      await (this.syncer ? this.syncer.sync() : this.syncFs(this.path));
    } catch (err) {
      // Writeback of delayed allocations is where a full file system shows at this level.
      const full = isErrno(err, 'ENOSPC') || /No space left on device/.test((err as Error).message);
      throw new RestorelabError(
        full ? 'REPO_FULL' : 'REPO_SYNC_FAILED',
        `cannot make the chunks of store ${this.path} durable (sync level filesystem): ${(err as Error).message}`,
        {
          hint: 'nothing was committed; check the repository file system (dmesg, df), then run the backup again',
          cause: err,
        },
      );
    }
    this.syncedEvents = Math.max(this.syncedEvents, upTo);
  }

  /**
   * The chunk store's own temp-then-rename, not writeFileAtomic: the damaged
   * copy must be linked aside between writing the new bytes and renaming them
   * over it, so the name is never empty and the old bytes are never lost.
   * Fsynced at every sync level: the name already belongs to committed
   * points, and a crash must not leave a torn blob under it (this is rare).
   */
  async replace(digest: string, blob: Buffer, opts: { keepDamaged: boolean }): Promise<void> {
    const target = this.file(digest);
    const shard = join(this.path, digest.slice(0, 2));
    const tmp = join(shard, tempName());
    const aside = join(shard, tempName());
    try {
      await this.writeTemp(tmp, blob);
      if (opts.keepDamaged) {
        // A hard link keeps the damaged bytes without ever leaving the name empty; the
        // rename makes it the quarantined copy (replacing an older one of the same chunk).
        try {
          await link(target, aside);
          await rename(aside, target + QUARANTINE_SUFFIX);
        } catch (err) {
          if (!isErrno(err, 'ENOENT')) throw err;
        }
      }
      await rename(tmp, target);
      await fsyncDir(shard);
    } catch (err) {
      await unlink(tmp).catch(() => undefined);
      await unlink(aside).catch(() => undefined);
      throw this.ioError('replace', digest, err);
    }
  }

  private async writeTemp(tmp: string, blob: Buffer): Promise<void> {
    const fh = await open(tmp, 'wx', BLOB_MODE);
    try {
      await fh.writeFile(blob);
      await fh.sync();
    } finally {
      await fh.close();
    }
  }

  async get(digest: string): Promise<Buffer> {
    const target = this.file(digest);
    try {
      return await readFile(target);
    } catch (err) {
      if (!isErrno(err, 'ENOENT')) throw this.ioError('read', digest, err);
      throw this.missing(
        digest,
        await stat(target + QUARANTINE_SUFFIX).then(
          () => true,
          () => false,
        ),
      );
    }
  }

  /**
   * get() with blocking I/O, for a thread that does nothing else: the payload's
   * first `direct.length` bytes into `direct`, the rest into `scratch` (see readBlobAroundSync).
   */
  getAroundSync(digest: string, scratch: Buffer, direct: Buffer): Buffer {
    const target = this.file(digest);
    try {
      return readBlobAroundSync(digest, target, scratch, direct);
    } catch (err) {
      if (!isErrno(err, 'ENOENT'))
        throw err instanceof CorruptChunkError || err instanceof RangeError ? err : this.ioError('read', digest, err);
      throw this.missing(digest, existsSync(target + QUARANTINE_SUFFIX));
    }
  }

  /**
   * The blob read with O_DIRECT into `into` (see readBlobDirectSync): a view
   * of `into`, or undefined when this file system does no direct I/O.
   */
  getDirectSync(digest: string, chunkSize: number, into: Buffer): Buffer | undefined {
    const target = this.file(digest);
    try {
      return readBlobDirectSync(digest, target, chunkSize, into);
    } catch (err) {
      if (!isErrno(err, 'ENOENT'))
        throw err instanceof CorruptChunkError || err instanceof RangeError ? err : this.ioError('read', digest, err);
      throw this.missing(digest, existsSync(target + QUARANTINE_SUFFIX));
    }
  }

  /** Why a chunk is not there: quarantined by verify, or never stored (or lost). */
  private missing(digest: string, quarantined: boolean): RestorelabError {
    return quarantined
      ? notFound(
          'CHUNK_QUARANTINED',
          `chunk ${digest} in store ${this.path} is quarantined (${digest}${QUARANTINE_SUFFIX}): verify found it corrupt`,
          'restore from another restore point or re-run a backup of the source to store the chunk again',
        )
      : notFound(
          'CHUNK_NOT_FOUND',
          `chunk ${digest} not found in store ${this.path}`,
          'run restorelab verify to find the restore points that need it',
        );
  }

  list(): AsyncIterable<StoredChunk> {
    return this.scan((name) => (DIGEST_RE.test(name) ? name : undefined));
  }

  listQuarantined(): AsyncIterable<StoredChunk> {
    return this.scan((name) =>
      name.endsWith(QUARANTINE_SUFFIX) && DIGEST_RE.test(name.slice(0, -QUARANTINE_SUFFIX.length))
        ? name.slice(0, -QUARANTINE_SUFFIX.length)
        : undefined,
    );
  }

  /** Temp files older than `beforeMs` (left by crashed writers). */
  async *listTemp(beforeMs: number): AsyncIterable<{ path: string; size: number }> {
    for (const shard of await this.shards()) {
      for (const name of await readdir(join(this.path, shard))) {
        if (!name.startsWith(TEMP_PREFIX)) continue;
        const p = join(this.path, shard, name);
        const st = await stat(p).catch(() => undefined);
        if (st && st.mtimeMs < beforeMs) yield { path: p, size: st.size };
      }
    }
  }

  async quarantine(digest: string): Promise<void> {
    const target = this.file(digest);
    try {
      await rename(target, target + QUARANTINE_SUFFIX);
      await fsyncDir(join(this.path, digest.slice(0, 2)));
    } catch (err) {
      if (isErrno(err, 'ENOENT')) throw notFound('CHUNK_NOT_FOUND', `cannot quarantine chunk ${digest}: not found in store ${this.path}`);
      throw this.ioError('quarantine', digest, err);
    }
  }

  async remove(digest: string): Promise<number> {
    const target = this.file(digest);
    try {
      const st = await stat(target);
      await unlink(target);
      return st.size;
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return 0;
      throw this.ioError('remove', digest, err);
    }
  }

  async removeIfUnused(digest: string, cutoffMs: number): Promise<number> {
    const target = this.file(digest);
    try {
      return await removeIfOlder(target, cutoffMs);
    } catch (err) {
      throw this.ioError('remove', digest, err);
    }
  }

  private async shards(): Promise<string[]> {
    return (await readdir(this.path)).filter((n) => /^[0-9a-f]{2}$/.test(n)).sort();
  }

  private async *scan(match: (name: string) => string | undefined): AsyncIterable<StoredChunk> {
    for (const shard of await this.shards()) {
      const names = (await readdir(join(this.path, shard))).sort();
      for (const name of names) {
        const digest = match(name);
        if (!digest) continue;
        const st = await stat(join(this.path, shard, name)).catch(() => undefined);
        if (st) yield { digest, size: st.size, mtimeMs: st.mtimeMs };
      }
    }
  }

  private ioError(op: string, digest: string, err: unknown): RestorelabError {
    if (err instanceof RestorelabError) return err;
    const code = isErrno(err) ? err.code : undefined;
    return new RestorelabError(
      code === 'ENOSPC' ? 'REPO_FULL' : 'CHUNK_IO',
      `cannot ${op} chunk ${digest} in store ${this.path}: ${(err as Error).message}`,
      { hint: code === 'ENOSPC' ? 'free space on the repository file system (prune, then gc)' : undefined, cause: err },
    );
  }
}

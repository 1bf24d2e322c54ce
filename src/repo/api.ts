/**
 * The repository's own interfaces, below the read-only contract in
 * contract.ts. The backup engine, verify, prune and gc use these; nothing
 * above the repository layer should.
 *
 * Words:
 * - *chunk*: `chunkSize` bytes of a disk (the last one shorter), addressed by
 *   its digest: SHA-256 of the plaintext, or HMAC-SHA-256 keyed with the
 *   repository key when encrypted, so plaintext hashes do not leak.
 * - *blob*: a chunk as stored: header (magic, flags, CRC) + zstd data,
 *   AES-256-GCM sealed when encrypted.
 * - *fixed index*: one digest per chunk of one disk; a hole (all-zero chunk)
 *   is stored as no digest and costs nothing.
 * - *restore point*: a manifest naming the VM definition and one fixed index
 *   per disk. Every point is logically full.
 */
import type { RepositoryReader, RestorePoint } from './contract.js';
import { RestorelabError } from '../errors.js';

export const REPO_FORMAT = 'restorelab-repository';
/**
 * 2: the manifests and indexes of an encrypted repository are sealed (and
 * plaintext ones refused). Unencrypted repositories are still created as 1,
 * which they are byte for byte, so older versions keep opening them.
 */
export const REPO_FORMAT_VERSION = 2;
/** The first version whose encrypted repositories hold sealed metadata only. */
export const SEALED_METADATA_VERSION = 2;
export const MIN_CHUNK_SIZE = 256 * 1024;
export const MAX_CHUNK_SIZE = 8 * 1024 * 1024;

export interface RepoConfig {
  format: typeof REPO_FORMAT;
  version: number;
  /** Random id, also mixed into lock files and the catalog. */
  id: string;
  /** Bytes per chunk, a power of two between MIN_CHUNK_SIZE and MAX_CHUNK_SIZE. */
  chunkSize: number;
  hash: 'sha256' | 'hmac-sha256';
  compression: 'zstd';
  encryption: 'none' | 'aes-256-gcm';
  /** ISO 8601. */
  created: string;
  /**
   * Encrypted repositories only: HMAC-SHA-256 of a fixed message under a key
   * derived from the key file, so a wrong key is reported before any chunk
   * fails to decrypt.
   */
  keyCheck?: string;
}

/**
 * Pure chunk encoding, safe to run in worker threads (it holds only the
 * config and the key, no file handles).
 */
export interface ChunkCodec {
  digest(plain: Buffer): string;
  /** Plaintext → blob. */
  encode(plain: Buffer): Buffer;
  /**
   * encode() into `out` (at least maxBlobSize(chunkSize) bytes), returning the
   * blob as a view of it: the same bytes, but nothing allocated per chunk, for
   * hot loops on one thread (the backup's chunk workers).
   */
  encodeInto(plain: Buffer, out: Buffer): Buffer;
  /**
   * Blob → plaintext. Checks magic, CRC, the GCM tag when encrypted, and that
   * the plaintext hashes to `digest`. Throws CorruptChunkError otherwise.
   */
  decode(digest: string, blob: Buffer): Buffer;
  /**
   * decode() without a fresh buffer: the plaintext is decompressed into `out`
   * (chunkSize bytes), or is a view of `blob` when it was stored uncompressed.
   * The result is valid until `out` or `blob` is reused.
   */
  decodeInto(digest: string, blob: Buffer, out: Buffer): Buffer;
  /**
   * decodeInto() of a blob read around a gap (readBlobAroundSync): `blob`
   * holds it whole except the first `out.length` bytes of its payload, which
   * were read into `out`. A chunk stored as is (neither compressed nor
   * encrypted) is checked where it lies, in `out`: no copy; any other is put
   * back together in `blob` and decoded into `out`. Same checks as decode().
   */
  decodeAround(digest: string, blob: Buffer, out: Buffer): Buffer;
  /**
   * decodeInto() of a blob that lies in the memory the plaintext goes to
   * (read there with O_DIRECT: readBlobDirectSync), `out` being the start of
   * that memory. A chunk stored as is is checked where it lies and returned
   * as a view of `blob`'s payload: no copy. Any other is copied to `scratch`
   * (maxBlobSize + 1 bytes) first and decoded into `out`. Same checks as
   * decode().
   */
  decodeInPlace(digest: string, blob: Buffer, scratch: Buffer, out: Buffer): Buffer;
}

/**
 * How a repository makes new chunks durable, after Proxmox Backup Server's
 * datastore `sync-level`:
 * - `file`: every chunk is fsynced (and its shard directory) before insert()
 *   returns; sync() has nothing left to do.
 * - `filesystem` (the default): chunks are written and renamed into place
 *   without an fsync each; sync() makes them all durable with one syncfs(2)
 *   of the chunk store's file system, before any index or manifest that
 *   references them is written. A crash before that loses only chunks no
 *   point references yet (a later backup checks a stored blob before it
 *   reuses it, and rewrites a torn one).
 * - `none`: nothing is synced. Unsafe: a power loss can leave committed
 *   restore points referencing chunks that never reached the disk. Tests and
 *   benchmarks only.
 * Indexes and manifests are written temp, fsync, rename, fsync directory at
 * every level.
 */
export type SyncLevel = 'file' | 'filesystem' | 'none';
export const SYNC_LEVELS: readonly SyncLevel[] = ['file', 'filesystem', 'none'];
export const DEFAULT_SYNC_LEVEL: SyncLevel = 'filesystem';

export interface StoredChunk {
  digest: string;
  size: number;
  mtimeMs: number;
}

/** Where ChunkStore.insertPlaced has a blob written: a temp file, renamed onto the chunk's name once complete. */
export interface PlacedBlob {
  tmp: string;
  target: string;
  /** fsync the temp file before the rename (sync level `file`). */
  fsync: boolean;
  /** File mode of the new blob. */
  mode: number;
}

export interface ChunkStore {
  readonly path: string;
  /**
   * Whether the chunk is stored. It does NOT refresh the chunk's mtime, so a
   * backup must not skip insert() because of it: use insert() (or touch()) for
   * every chunk a new index references, or gc may collect it.
   */
  has(digest: string): Promise<boolean>;
  /**
   * Refreshes the mtime of a stored chunk; false when it is not stored. A
   * store may also answer false for a chunk another writer stored while it
   * was open (the object store answers from a listing, s3-chunk-store.ts):
   * callers insert() a chunk touch() did not find, and insert() reports it
   * as existing and refreshes it.
   */
  touch(digest: string): Promise<boolean>;
  /**
   * A hint that touch() and insert() calls are about to come (a backup took
   * its lock): the store may start what they will wait for, so it overlaps
   * the caller's own start. The object store lists its chunk area (see
   * touch()). Optional; never needed for correctness.
   */
  prepareWrites?(): void;
  /**
   * Idempotent and crash-safe: a reader never sees a partial blob under the
   * chunk's name (temp file, rename). Durable on return only at sync level
   * `file` (fsync of the file and its directory); otherwise after sync().
   * When the chunk already exists its mtime is refreshed, so a gc running
   * concurrently treats it as in use (see RepoLock.since), and the stored blob
   * is kept as it is: a caller that may meet a damaged blob (the backup
   * engine) checks it and calls replace().
   */
  insert(digest: string, blob: Buffer): Promise<{ existed: boolean; size: number }>;
  /**
   * Writes a good blob over a damaged (or missing) one, crash-safely: the
   * name holds the old blob or the new one at every moment, never nothing.
   * With `keepDamaged` the old blob is kept as `<digest>.bad`, as verify
   * quarantines (a blob whose data is wrong); without it, it is dropped (a
   * blob whose data was proven and only a header field was rewritten).
   * Durable on return at every sync level: older points reference the chunk.
   */
  replace(digest: string, blob: Buffer, opts: { keepDamaged: boolean }): Promise<void>;
  /**
   * Makes durable every chunk this store has inserted or found (touch(),
   * insert() of an existing one) so far, including chunks other processes
   * wrote without an fsync of their own: call it after the last chunk of a
   * backup and before writing the indexes and the manifest that reference
   * them. A no-op when nothing happened since the last sync, and at sync
   * levels `file` and `none`. Rejects with REPO_SYNC_FAILED.
   */
  sync(): Promise<void>;
  /**
   * A backup is about to store chunks and then sync(): a store may get
   * ready now (start a helper process, flush what is already dirty) so the
   * sync at the end costs less. Durability does not depend on it.
   */
  prepareSync?(): void;
  /** The blob; rejects with a not-found RestorelabError naming store and digest. */
  get(digest: string): Promise<Buffer>;
  /**
   * The file that holds a chunk's blob, for readers on other threads that do
   * their own I/O (restore and backup workers). Only stores whose blobs are
   * files have it (the local store); callers hand the blob from get() to
   * their threads otherwise. Never a made-up path: a store without files
   * leaves this out.
   */
  fileOf?(digest: string): string;
  /**
   * insert() for a blob that another thread writes itself (the backup's
   * chunk workers), so the blob never crosses threads: the store names a
   * temp path beside the chunk's file, `place` writes the blob there (with
   * an fsync of the file when `fsync` says so) and renames it onto `target`,
   * resolving with the blob's size. The store keeps insert()'s rules: an
   * existing chunk is only touched (`place` is not called), the temp file is
   * removed when `place` fails, and the chunk counts for sync(). Only stores
   * whose blobs are files have it.
   */
  insertPlaced?(digest: string, place: (p: PlacedBlob) => Promise<number>): Promise<{ existed: boolean; size: number }>;
  /**
   * True when every get() resolves with a buffer over an ArrayBuffer of its
   * own that nothing else holds (a store that fetches each blob fresh): a
   * caller may then transfer it to a worker thread instead of copying it.
   * Stores that keep blobs in memory, and wrappers, leave it out.
   */
  readonly getGivesOwnedBuffers?: boolean;
  /**
   * The least safety margin gc must keep for this store (ms), when its
   * mtimes come from another clock than gc's (object storage: the gateway's).
   */
  readonly minGcMarginMs?: number;
  list(): AsyncIterable<StoredChunk>;
  /** Renames the chunk to `<digest>.bad`; it is never served again and never deleted by gc. */
  quarantine(digest: string): Promise<void>;
  /** Deletes the chunk; returns the bytes freed. */
  remove(digest: string): Promise<number>;
  /**
   * gc's delete: removes the chunk only if its mtime is still older than
   * `cutoffMs`, without racing a concurrent insert()/touch() that refreshes
   * it (see docs/formats.md). Returns the bytes freed, 0 when kept.
   * `guard` runs right before the delete itself and stops it by throwing
   * (gc's Sweep.assertLive); a store whose delete closes the window itself
   * (the local rename-and-recheck) may ignore it.
   */
  removeIfUnused(digest: string, cutoffMs: number, guard?: () => void): Promise<number>;
  /** Quarantined chunks (`.bad`), for reports; gc never deletes them. */
  listQuarantined(): AsyncIterable<StoredChunk>;
}

export interface FixedIndex {
  /** Virtual disk size in bytes. */
  size: number;
  chunkSize: number;
  /** One entry per chunk; null is a hole. */
  digests: (string | null)[];
}

/**
 * shared: backups and verify, any number at once. exclusive: prune, alone.
 * gc: one at a time, excludes prune but runs beside backups (it honours their
 * `since`).
 */
export type LockKind = 'shared' | 'exclusive' | 'gc';

/** What a lock file records about its holder. */
export interface LockHolder {
  kind: LockKind;
  purpose: string;
  pid: number;
  hostname: string;
  /** Epoch ms the lock was taken. */
  since: number;
  /** Kernel boot id and /proc start time of the holder, so a reused pid is not mistaken for it. */
  bootId?: string;
  startTicks?: number;
  /** The lock file's name under locks/. */
  file: string;
}

/**
 * What a writer saw of the sweeps announced on object storage when it took
 * its lock (s3-sweep.ts): marker name → its ETag, and whether it was then
 * sweeping. commitPoint compares it with what it sees at commit.
 */
export interface SweepView {
  readonly markers: ReadonlyMap<string, { readonly etag: string; readonly sweeping: boolean }>;
}

/**
 * A sweep: deletes of what is not referenced (gc, a failed backup's
 * roll-back), announced to the writers that run beside it. On object
 * storage nothing closes the window between the HEAD that finds an object
 * old and the DELETE, so writers learn from the announcement that they must
 * check again what they reused (docs/formats.md, "Sweeps on object
 * storage"); locally the rename-and-recheck closes it and a sweep is silent.
 */
export interface Sweep {
  /**
   * Call between two deletes, never during one: it tells waiting writers
   * that every delete begun so far has finished (a write at most every
   * SWEEP_CHECKPOINT_MS).
   */
  checkpoint(): Promise<void>;
  /**
   * Right before each delete: throws GC_SWEEP_EXPIRED when the announcement
   * may have aged out for the writers (its last write began more than two
   * thirds of its lease ago). A sweeper paused that long (SIGSTOP, a frozen
   * VM, swap) must not delete more: a writer may have stopped counting it
   * and committed without checking again. Silent sweeps never throw.
   */
  assertLive(): void;
  /** After the last delete. */
  end(): Promise<void>;
}

export interface RepoLock {
  kind: LockKind;
  /** When the holder started (epoch ms): gc keeps chunks newer than the oldest live shared holder. */
  since: number;
  /** Locks left by dead processes that were found, reported here, and removed. */
  staleRemoved: LockHolder[];
  /** Shared locks on object storage: the sweeps as they were when the lock was taken (commitPoint's fence). */
  sweepView?: SweepView;
  release(): Promise<void>;
}

/** What a new restore point records besides its id (assigned at commit). */
export type NewRestorePoint = Omit<RestorePoint, 'id' | 'damaged'>;

export interface Repository extends RepositoryReader {
  readonly config: RepoConfig;
  readonly chunks: ChunkStore;
  readonly codec: ChunkCodec;
  /** The master key of an encrypted repository, for codecs built in worker threads (createCodec(config, key)). */
  readonly masterKey: Buffer | undefined;
  /** Syncs the chunk store (chunks.sync()), then writes an index crash-safely; returns its digest (the name it is stored under). */
  writeIndex(index: FixedIndex): Promise<string>;
  /** Checks the index header checksum; rejects with CorruptChunkError-like errors naming the file. */
  readIndex(digest: string): Promise<FixedIndex>;
  /**
   * Writes the manifest crash-safely; the point becomes visible only now.
   * First it syncs the chunk store (chunks.sync()), so a point is never
   * visible before every chunk it references is durable. Given the writer's
   * `lock`, it also checks that no sweep deleted what the point references
   * since the lock was taken (object storage, see Sweep): when one may have,
   * it waits for the sweep's deletes in flight, checks every chunk and index
   * of the point, and rejects with SweptChunksError (BACKUP_GC_RACE) naming
   * what is missing instead of committing a broken point.
   *
   * `written`: the indexes of the point this writer stored itself
   * (writeIndex), by digest. Unless a sweep may have deleted one, they are
   * checked from memory instead of being read back (on object storage a
   * round trip before the manifest); any other index is read.
   */
  commitPoint(point: NewRestorePoint, opts?: { lock?: RepoLock; written?: ReadonlyMap<string, FixedIndex> }): Promise<RestorePoint>;
  /**
   * Announces deletes that may race writers' touches (gc, a roll-back); see
   * Sweep. gc passes its cutoff as `tidyBeforeMs`: announcements of sweeps
   * that ended before it are removed.
   */
  beginSweep(purpose: string, opts?: { tidyBeforeMs?: number }): Promise<Sweep>;
  /**
   * Shared for backups, exclusive for prune and gc. Rejects with a busy
   * RestorelabError naming the holder; a lock whose process is dead is
   * reported as stale (and removed).
   */
  lock(kind: LockKind, purpose: string): Promise<RepoLock>;
  /** Holders of live locks (stale ones left out): lock files, or lease lock objects on object storage. */
  liveHolders(): Promise<LockHolder[]>;
}

/** A file some crashed writer left behind. */
export interface Leftover {
  path: string;
  size: number;
  mtimeMs: number;
}

/** The manifests of a repository, and those that could not be read. */
export interface PointScan {
  points: RestorePoint[];
  problems: { file: string; reason: string }[];
}

/** A stored fixed index, as gc sees it. */
export interface StoredIndex {
  digest: string;
  size: number;
  mtimeMs: number;
}

/**
 * What verify, prune and gc need beyond writing points: the manifests as they
 * are (readable or not), the damaged mark, deletes that honour a cutoff, and
 * the lock holders. They take this interface, never the local implementation,
 * so a second repository backend (object storage) gets them for free.
 */
export interface RepositoryMaintenance extends Repository {
  /** All manifests; unreadable ones are listed as problems instead of failing the scan. */
  scanPoints(): Promise<PointScan>;
  /** Sets or clears a point's damaged mark, crash-safely. */
  setDamaged(id: string, damaged: boolean): Promise<void>;
  /** Deletes a point's manifest (prune); its chunks and indexes stay until gc. */
  removePoint(id: string): Promise<void>;
  listIndexes(): Promise<StoredIndex[]>;
  /** gc's delete of an unreferenced index: only if untouched since `cutoffMs`; returns the bytes freed. `guard` as in removeIfUnused. */
  removeIndex(digest: string, cutoffMs: number, guard?: () => void): Promise<number>;
  /** Temp files left by crashed writers (all of them, or those older than `beforeMs`). */
  leftovers(beforeMs?: number): Promise<Leftover[]>;
  /** Deletes one leftover that leftovers() returned; a file already gone is no error. */
  removeLeftover(leftover: Leftover): Promise<void>;
}

/**
 * commitPoint's refusal: a sweep (gc, a roll-back) deleted chunks or indexes
 * this point references while its backup ran, after the backup had touched
 * them (object storage, s3-sweep.ts). Nothing was committed; a writer that
 * still has the data stores what is missing and commits again.
 */
export class SweptChunksError extends RestorelabError {
  constructor(
    readonly repo: string,
    readonly missingChunks: readonly string[],
    readonly missingIndexes: readonly string[],
  ) {
    const what = [
      missingChunks.length > 0 ? `${missingChunks.length} chunk(s) (first ${missingChunks[0]})` : '',
      missingIndexes.length > 0 ? `${missingIndexes.length} index(es) (first ${missingIndexes[0]})` : '',
    ]
      .filter(Boolean)
      .join(' and ');
    super('BACKUP_GC_RACE', `restore point not committed: a gc of ${repo} deleted ${what} this backup reused, while it ran`, {
      hint: 'run the backup again: it stores the missing chunks anew (the repository holds no broken point)',
    });
  }
}

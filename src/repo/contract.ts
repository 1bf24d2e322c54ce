/**
 * The read side of the repository, as the layers above it see it. Published
 * disks, the datastore, file-level restore and verification depend only on
 * these types, never on how chunks are stored (see docs/architecture.md).
 */
import type { VmDefinition } from '../vm/definition.js';

export type Consistency = 'crash' | 'filesystem' | 'application';

export interface RestorePointDisk {
  name: string;
  /** Virtual size in bytes. */
  size: number;
  /** SHA-256 (hex) of the disk's fixed index file. */
  indexDigest: string;
}

export interface BackupStats {
  bytesRead: number;
  bytesNew: number;
  bytesReused: number;
  bytesZero: number;
  seconds: number;
  /** Ransomware signals (src/backup/signals.ts); absent in points backed up before they existed. */
  signals?: PointSignals;
}

/** The baseline a point was judged against: its previous points' figures. */
export interface SignalsBaseline {
  /** How many previous points had signals (at most HISTORY_POINTS). */
  points: number;
  incompressibleMedian: number;
  incompressibleMad: number;
  /** Over incremental points only (null when there were none). */
  changeRateMedian: number | null;
  changeRateMad: number | null;
}

/** Stored in the point's manifest as `stats.signals` (sealed with it in an encrypted repository). */
export interface PointSignals {
  changedBytes: number;
  changeRate: number;
  /** No parent point had any of this point's disks: changedBytes counts every data byte. */
  full: boolean;
  /** The point compared with (its parent), or null for a full backup. */
  comparedWith: string | null;
  /** A disk's virtual size differs from the parent's. */
  resized: boolean;
  newBytes: number;
  /** The new chunks' payloads after compression (before encryption overhead). */
  newStoredBytes: number;
  incompressibleBytes: number;
  incompressibleRatio: number;
  baseline: SignalsBaseline;
  anomaly: boolean;
  /** Why it is an anomaly, in words a notification can carry; empty when it is not. */
  reasons: string[];
}

/**
 * What a live backup records about how it took the point: the consistency
 * asked for and why the achieved one (RestorePoint.consistency) may be less,
 * how long the guest's filesystems were frozen, and whether changed block
 * tracking let it skip unchanged chunks.
 */
export interface PointCapture {
  kind: 'qmp' | 'libvirt';
  consistencyWanted: Consistency;
  /** Why the achieved consistency is below the wanted one; absent when it is not. */
  consistencyReason?: string;
  /** Milliseconds from the freeze request to the thaw's answer; absent when nothing was frozen. */
  freezeMs?: number;
  changedBlockTracking: { used: boolean; reason: string };
  /** Per disk: the dirty bitmap created with this point, which the next backup may read. */
  bitmaps: Record<string, string>;
}

export interface RestorePoint {
  id: string;
  vm: VmDefinition;
  disks: RestorePointDisk[];
  consistency: Consistency;
  /** ISO 8601 time the point was taken. */
  time: string;
  source: string;
  parent?: string;
  stats: BackupStats;
  /** How a running VM was captured (live backups only). */
  capture?: PointCapture;
  /** Set by verify when a chunk this point references is corrupt. */
  damaged?: boolean;
}

/**
 * Random access to one disk of a restore point, a chunk at a time.
 * The index of the chunk holding byte offset `o` is `Math.floor(o / chunkSize)`.
 */
export interface DiskSource {
  /** Virtual size in bytes. */
  readonly size: number;
  readonly chunkSize: number;
  readonly chunkCount: number;
  /**
   * The chunk's identity (its digest, hex) or null for a hole. Equal ids mean
   * equal bytes, so caches can share decoded chunks across disks and points.
   */
  chunkId(index: number): string | null;
  /**
   * The decompressed, verified bytes of chunk `index`: `chunkSize` bytes, the
   * last chunk possibly shorter. Null for a hole (reads as zeros). Rejects
   * with a CorruptChunkError when the stored chunk fails its checks: callers
   * turn that into EIO and never serve the bytes.
   */
  readChunk(index: number): Promise<Buffer | null>;
  /**
   * readChunk into memory the caller owns: `into` holds at least `chunkSize`
   * bytes, and the result is the view of it that holds the chunk. Lets a
   * cache have chunks decoded straight into its reused slots.
   */
  readChunkInto?(index: number, into: Buffer): Promise<Buffer | null>;
  /**
   * readChunk for a thread that does nothing else (a decode worker): blocking
   * I/O into `scratch`, a blob buffer the caller reuses (see maxBlobSize).
   * The plaintext goes into `into` when given (as with readChunkInto), else
   * into a fresh buffer that owns its memory, so it can be transferred.
   */
  readChunkSync?(index: number, scratch: Buffer, into?: Buffer): Buffer | null;
  /**
   * How large an `into` should be for the fastest readChunkInto: a source
   * that reads chunk files with O_DIRECT wants room for the whole blob at an
   * aligned place (src/repo/direct-read.ts), and then returns a view that
   * need not start at 0. Default chunkSize.
   */
  readonly slotSize?: number;
}

/** What the publish/verify layers need from a repository. */
export interface RepositoryReader {
  readonly path: string;
  listPoints(filter?: { vm?: string }): Promise<RestorePoint[]>;
  /** Rejects with a not-found RestorelabError naming the id. */
  getPoint(id: string): Promise<RestorePoint>;
  /** Rejects with a not-found RestorelabError naming point and disk. */
  openDisk(pointId: string, diskName: string): Promise<DiskSource>;
}

export class CorruptChunkError extends Error {
  constructor(
    readonly digest: string,
    readonly reason: string,
    readonly store?: string,
  ) {
    super(`chunk ${digest}${store ? ` in ${store}` : ''} is corrupt: ${reason}`);
    this.name = 'CorruptChunkError';
  }
}

/**
 * Ransomware signals, computed while a backup runs (docs/secure-restore.md,
 * "Ransomware signals"). Ransomware that encrypts a VM's files leaves two
 * marks on its next backup that cost nothing to see: the new data no longer
 * compresses (ciphertext is random), and far more of the disk changed than
 * on an ordinary night. The backup already compresses every new chunk and
 * already knows each chunk's digest, so both figures come for free: no
 * second read of the disk, only the parent point's index (metadata).
 *
 * Words:
 * - *changed bytes*: bytes of a disk whose chunk digest differs from the
 *   parent point's digest at the same offset (a hole counts as a digest).
 *   A disk the parent does not have (a first, *full* backup) is compared
 *   with an empty disk: every data byte counts as changed. A disk that grew
 *   counts its new tail as changed; a disk that shrank only what remains.
 * - *change rate*: changed bytes / the point's virtual size.
 * - *new bytes*: raw bytes of the chunks this backup stored (the repository
 *   lacked them). *Incompressible*: a new chunk whose zstd payload is at
 *   least INCOMPRESSIBLE_AT of its raw size (stored raw, or barely shrunk).
 * - *incompressible ratio*: incompressible new bytes / new bytes.
 * - *baseline*: the same figures of the VM's previous HISTORY_POINTS points,
 *   summarised by median and MAD (median absolute deviation), which one odd
 *   night cannot move, unlike a mean and standard deviation.
 * - *anomaly*: see decideAnomaly.
 *
 * The stored shape (PointSignals) is part of the manifest: src/repo/contract.ts.
 */
import type { Repository } from '../repo/api.js';
import type { PointSignals, RestorePoint, SignalsBaseline } from '../repo/contract.js';
import { CHUNK_FLAG_COMPRESSED, CHUNK_FLAG_ENCRYPTED, CHUNK_HEADER_SIZE, GCM_NONCE_SIZE, GCM_TAG_SIZE } from '../repo/format.js';

/** A new chunk is incompressible when zstd leaves at least this share of its bytes (5 % saved or less). */
export const INCOMPRESSIBLE_AT = 0.95;
/** How many of the VM's previous points make the baseline. */
export const HISTORY_POINTS = 10;
/** "Mostly": an anomalous point's new data is at least this share incompressible. */
export const ENTROPY_MIN_RATIO = 0.5;
/** ...and at least this much above the baseline's median. */
export const ENTROPY_MIN_JUMP = 0.3;
/** Below this many new bytes (4 MiB) the incompressible share is noise: a few chunks decide it. */
export const ENTROPY_MIN_NEW_BYTES = 4 * 1024 * 1024;
/** A change-rate jump needs this many previous incremental points: a first backup says nothing about nightly change. */
export const CHANGE_MIN_HISTORY = 2;
/** A change-rate jump: at least 10 % of the disk changed... */
export const CHANGE_MIN_RATE = 0.1;
/** ...and at least this many times the baseline's median. */
export const CHANGE_MIN_FACTOR = 3;
/** Robust z-score bound: x > median + MAD_FACTOR · 1.4826 · MAD (1.4826 · MAD estimates σ of normal data). */
export const MAD_FACTOR = 3;
const MAD_TO_SIGMA = 1.4826;

/** What is measured during the backup, before the history judges it. */
export type SignalFigures = Omit<PointSignals, 'baseline' | 'anomaly' | 'reasons'>;

/**
 * Size of a blob's payload as the compressor left it: the blob minus its
 * header and, when sealed, the nonce and tag. A blob stored raw (zstd did
 * not shrink it) is incompressible by definition, whatever its length.
 */
export function compressedPayload(blob: Buffer, rawLength: number): { stored: number; incompressible: boolean } {
  const flags = blob.readUInt8(8);
  const overhead = CHUNK_HEADER_SIZE + ((flags & CHUNK_FLAG_ENCRYPTED) !== 0 ? GCM_NONCE_SIZE + GCM_TAG_SIZE : 0);
  const stored = blob.length - overhead;
  const compressed = (flags & CHUNK_FLAG_COMPRESSED) !== 0;
  return { stored, incompressible: !compressed || stored >= INCOMPRESSIBLE_AT * rawLength };
}

/** Bytes of a disk that differ from the parent's at the same chunk offsets (see "changed bytes" above). */
export function changedBytes(
  size: number,
  chunkSize: number,
  digests: readonly (string | null)[],
  parent?: readonly (string | null)[],
): number {
  let changed = 0;
  for (let i = 0; i < digests.length; i++) {
    const d = digests[i] ?? null;
    const before = parent === undefined || i >= parent.length ? null : (parent[i] ?? null);
    if (d !== before) changed += Math.min(chunkSize, size - i * chunkSize);
  }
  // A shrunk disk: the chunks beyond its end are gone, not changed (nothing of them is backed up).
  return changed;
}

/**
 * The parent point's digests of disk `name`, to compare with; undefined when
 * there is no parent or it has no such disk. An index that cannot be read
 * makes the disk count as full (with a warning) rather than fail a backup
 * that needs nothing else from it.
 */
export async function parentDisk(
  repo: Pick<Repository, 'readIndex'>,
  parent: RestorePoint | undefined,
  name: string,
  onWarning?: (m: string) => void,
): Promise<{ size: number; digests: readonly (string | null)[] } | undefined> {
  const disk = parent?.disks.find((d) => d.name === name);
  if (!parent || !disk) return undefined;
  try {
    const index = await repo.readIndex(disk.indexDigest);
    return { size: index.size, digests: index.digests };
  } catch (err) {
    onWarning?.(
      `ransomware signals: the index of disk ${name} of the parent point ${parent.id} is unreadable (${(err as Error).message}); ` +
        'the disk counts as changed in full',
    );
    return undefined;
  }
}

/**
 * Counts the figures of one backup: the engine calls newChunk for every
 * chunk it stores and disk once per disk with its digests and the parent's.
 */
export class SignalsRecorder {
  private newBytes = 0;
  private newStored = 0;
  private incompressible = 0;
  private changed = 0;
  private size = 0;
  private anyParentDisk = false;
  private resized = false;

  constructor(private readonly parent: string | null) {}

  newChunk(rawLength: number, blob: Buffer): void {
    this.newPayload(rawLength, compressedPayload(blob, rawLength));
  }

  /** newChunk for a blob this thread never saw (a chunk worker wrote it), from its compressedPayload. */
  newPayload(rawLength: number, c: { stored: number; incompressible: boolean }): void {
    this.newBytes += rawLength;
    this.newStored += c.stored;
    if (c.incompressible) this.incompressible += rawLength;
  }

  /** `parent`: the parent point's digests of the same disk, with its size; undefined when it has no such disk. */
  disk(
    size: number,
    chunkSize: number,
    digests: readonly (string | null)[],
    parent?: { size: number; digests: readonly (string | null)[] },
  ): void {
    this.size += size;
    if (parent) {
      this.anyParentDisk = true;
      if (parent.size !== size) this.resized = true;
    }
    this.changed += changedBytes(size, chunkSize, digests, parent?.digests);
  }

  figures(): SignalFigures {
    return {
      changedBytes: this.changed,
      changeRate: this.size > 0 ? round(this.changed / this.size) : 0,
      full: !this.anyParentDisk,
      comparedWith: this.anyParentDisk ? this.parent : null,
      resized: this.resized,
      newBytes: this.newBytes,
      newStoredBytes: this.newStored,
      incompressibleBytes: this.incompressible,
      incompressibleRatio: this.newBytes > 0 ? round(this.incompressible / this.newBytes) : 0,
    };
  }
}

export function median(xs: readonly number[]): number {
  if (xs.length === 0) return 0;
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
}

/** Median absolute deviation from the median. */
export function mad(xs: readonly number[]): number {
  const m = median(xs);
  return median(xs.map((x) => Math.abs(x - m)));
}

/** The signals of the previous points of a VM, oldest first, at most HISTORY_POINTS (points without signals are skipped). */
export function historyOf(points: readonly RestorePoint[], before: string): SignalFigures[] {
  return points
    .filter((p) => p.time < before && p.stats.signals !== undefined)
    .sort((a, b) => a.time.localeCompare(b.time))
    .slice(-HISTORY_POINTS)
    .map((p) => p.stats.signals as SignalFigures);
}

export function baselineOf(history: readonly SignalFigures[]): SignalsBaseline {
  const inc = history.map((h) => h.incompressibleRatio);
  const rates = history.filter((h) => !h.full).map((h) => h.changeRate);
  return {
    points: history.length,
    incompressibleMedian: round(median(inc)),
    incompressibleMad: round(mad(inc)),
    changeRateMedian: rates.length > 0 ? round(median(rates)) : null,
    changeRateMad: rates.length > 0 ? round(mad(rates)) : null,
  };
}

/**
 * The figures judged against the VM's earlier points in the repository. A
 * manifest that cannot be read must not fail a backup that needs nothing
 * else from it: the point is then judged without history (a warning says so).
 */
export async function judgeSignals(
  repo: Pick<Repository, 'listPoints'>,
  vm: string,
  time: string,
  figures: SignalFigures,
  onWarning?: (m: string) => void,
): Promise<PointSignals> {
  let history: SignalFigures[] = [];
  try {
    history = historyOf(await repo.listPoints({ vm }), time);
  } catch (err) {
    onWarning?.(
      `ransomware signals: the earlier points of ${vm} could not be read (${(err as Error).message}); this point is judged without them`,
    );
  }
  return decideAnomaly(figures, history);
}

/**
 * The anomaly rule. A point is an anomaly when either holds:
 *
 * 1. Entropy: its new data is mostly incompressible where earlier points'
 *    was not: newBytes >= ENTROPY_MIN_NEW_BYTES, ratio >= ENTROPY_MIN_RATIO,
 *    and ratio > median + max(ENTROPY_MIN_JUMP, MAD_FACTOR·1.4826·MAD) of
 *    the previous points (at least one; the first backup counts here,
 *    since its data shows what this VM's data looks like).
 * 2. Change rate: at least CHANGE_MIN_HISTORY previous incremental points,
 *    rate >= CHANGE_MIN_RATE, and rate > max(CHANGE_MIN_FACTOR·median,
 *    median + MAD_FACTOR·1.4826·MAD). A full backup is never judged on it.
 *
 * The floors (minimum jump, minimum rate, minimum bytes) keep a VM whose
 * history is flat (MAD 0) from being flagged for any small wobble.
 */
export function decideAnomaly(f: SignalFigures, history: readonly SignalFigures[]): PointSignals {
  const baseline = baselineOf(history);
  const reasons: string[] = [];
  const pct = (x: number): string => `${(x * 100).toFixed(1)} %`;
  if (history.length > 0 && f.newBytes >= ENTROPY_MIN_NEW_BYTES && f.incompressibleRatio >= ENTROPY_MIN_RATIO) {
    const bound = baseline.incompressibleMedian + Math.max(ENTROPY_MIN_JUMP, MAD_FACTOR * MAD_TO_SIGMA * baseline.incompressibleMad);
    if (f.incompressibleRatio > bound) {
      reasons.push(
        `${pct(f.incompressibleRatio)} of the new data is incompressible (encrypted or compressed), ` +
          `the previous ${baseline.points} point(s) had a median of ${pct(baseline.incompressibleMedian)}`,
      );
    }
  }
  const rates = history.filter((h) => !h.full).length;
  if (
    !f.full &&
    rates >= CHANGE_MIN_HISTORY &&
    baseline.changeRateMedian !== null &&
    baseline.changeRateMad !== null &&
    f.changeRate >= CHANGE_MIN_RATE
  ) {
    const bound = Math.max(
      CHANGE_MIN_FACTOR * baseline.changeRateMedian,
      baseline.changeRateMedian + MAD_FACTOR * MAD_TO_SIGMA * baseline.changeRateMad,
    );
    if (f.changeRate > bound) {
      reasons.push(
        `${pct(f.changeRate)} of the disk changed, the previous ${rates} incremental point(s) had a median of ${pct(baseline.changeRateMedian)}`,
      );
    }
  }
  return { ...f, baseline, anomaly: reasons.length > 0, reasons };
}

/** One line for a summary or a notification. */
export function describeSignals(s: PointSignals): string {
  const pct = (x: number): string => `${(x * 100).toFixed(1)} %`;
  const changed = s.full ? `full backup (${pct(s.changeRate)} of the disk holds data)` : `${pct(s.changeRate)} of the disk changed`;
  const head = `signals: ${changed}, ${pct(s.incompressibleRatio)} of the new data incompressible`;
  return s.anomaly ? `${head}; ANOMALY: ${s.reasons.join('; ')}` : head;
}

function round(x: number): number {
  return Math.round(x * 1e6) / 1e6;
}

/**
 * The verifier: re-reads, decodes and re-hashes every chunk that the given
 * restore point (or every point) references, each shared chunk once, on a
 * worker pool. It keeps going after errors, quarantines bad chunks (renamed
 * `.bad`, never deleted) and marks the points they break as damaged in their
 * manifests. A point whose chunks all check out again loses its mark. A chunk
 * whose data is good but whose CRC field is damaged is not quarantined: its
 * blob is rewritten with a correct CRC and reported as "repaired".
 *
 * Findings only; the CLI decides exit codes and output.
 */
import type { RestorePoint } from './contract.js';
import { CorruptChunkError } from './contract.js';
import { RestorelabError } from '../errors.js';
import { CodecPool } from './codec-pool.js';
import type { FixedIndex, LockHolder, RepositoryMaintenance } from './api.js';

export interface VerifyFinding {
  /** Chunk digest; for kind "index" the index digest, for "manifest" empty. */
  digest: string;
  reason: string;
  /**
   * What is corrupt; "repaired" is a warning, not corruption: a chunk whose
   * data its digest proved good, but whose CRC field was damaged, and which
   * this run rewrote with a correct one.
   */
  kind: 'chunk' | 'index' | 'manifest' | 'repaired';
  /** The restore points this finding breaks (for "repaired": the points that use the chunk, unharmed). */
  points: string[];
  /** Set for a corrupt chunk that this run renamed to `<digest>.bad`. */
  quarantined?: boolean;
}

export interface VerifyReport {
  ok: boolean;
  chunksChecked: number;
  /** Bytes of stored blobs read. */
  bytesChecked: number;
  corrupt: VerifyFinding[];
  /** Warnings (kind "repaired"): chunks this run mended in place; they do not make `ok` false. */
  repaired: VerifyFinding[];
  affectedPoints: string[];
  pointsChecked: number;
  /** Temp files left by crashed writers (gc removes them). */
  leftovers: string[];
  /** Lock files of dead processes found and removed when verify took its lock. */
  staleLocksRemoved: LockHolder[];
  seconds: number;
}

export interface VerifyOptions {
  /** Verify only this restore point. */
  point?: string;
  /** Worker threads; default one per core. */
  workers?: number;
  onProgress?: (checked: number, total: number) => void;
}

export async function verifyRepository(repo: RepositoryMaintenance, opts: VerifyOptions = {}): Promise<VerifyReport> {
  const started = Date.now();
  const lock = await repo.lock('shared', opts.point ? `verify ${opts.point}` : 'verify');
  const pool = new CodecPool(repo.config, repo.masterKey, opts.workers);
  try {
    const corrupt: VerifyFinding[] = [];
    let points: RestorePoint[];
    if (opts.point) {
      points = [await repo.getPoint(opts.point)];
    } else {
      const scan = await repo.scanPoints();
      points = scan.points;
      for (const p of scan.problems) corrupt.push({ digest: '', kind: 'manifest', reason: `${p.file}: ${p.reason}`, points: [] });
    }

    // Digest → plaintext length, one entry per distinct chunk: the only per-chunk state, so
    // verifying a large repository stays bounded. Which points a bad chunk breaks is
    // looked up afterwards, for the few bad chunks only.
    const wanted = new Map<string, number>();
    const readable: { point: RestorePoint; indexDigest: string }[] = [];
    for (const point of points) {
      for (const disk of point.disks) {
        let index: FixedIndex;
        try {
          index = await repo.readIndex(disk.indexDigest);
        } catch (err) {
          if (!(err instanceof RestorelabError)) throw err;
          corrupt.push({ digest: disk.indexDigest, kind: 'index', reason: `disk ${disk.name}: ${err.message}`, points: [point.id] });
          continue;
        }
        readable.push({ point, indexDigest: disk.indexDigest });
        const { digests, size, chunkSize } = index;
        digests.forEach((d, i) => {
          if (d !== null && !wanted.has(d)) wanted.set(d, Math.min(chunkSize, size - i * chunkSize));
        });
      }
    }

    let checked = 0;
    let bytes = 0;
    const total = wanted.size;
    const bad: Omit<VerifyFinding, 'points'>[] = [];
    const mended: Omit<VerifyFinding, 'points'>[] = [];
    const checkOne = async (digest: string, length: number): Promise<void> => {
      let blob: Buffer;
      try {
        blob = await repo.chunks.get(digest);
      } catch (err) {
        if (!(err instanceof RestorelabError)) throw err;
        bad.push({
          digest,
          kind: 'chunk',
          reason: err.code === 'CHUNK_QUARANTINED' ? 'quarantined by an earlier verify' : 'missing from the store',
        });
        return;
      }
      bytes += blob.length;
      try {
        const { crcFixed } = await pool.check(digest, blob, length);
        if (crcFixed) {
          // The data is good (its digest says so): quarantining it would break points for nothing.
          await repo.chunks.replace(digest, crcFixed, { keepDamaged: false });
          mended.push({
            digest,
            kind: 'repaired',
            reason: 'CRC field damaged, data proven by its digest: blob rewritten with a correct CRC',
          });
        }
      } catch (err) {
        if (!(err instanceof CorruptChunkError)) throw err;
        await repo.chunks.quarantine(digest).catch(() => undefined);
        bad.push({ digest, kind: 'chunk', reason: err.reason, quarantined: true });
      }
    };
    // A few reads in flight per worker keep both the disk and the cores busy with bounded memory.
    const inFlight = Math.max(2, pool.size * 3);
    const queue = wanted.entries();
    await Promise.all(
      Array.from({ length: inFlight }, async () => {
        for (let next = queue.next(); !next.done; next = queue.next()) {
          await checkOne(next.value[0], next.value[1]);
          checked++;
          opts.onProgress?.(checked, total);
        }
      }),
    );

    const repaired: VerifyFinding[] = [];
    if (bad.length + mended.length > 0) {
      const users = new Map([...bad, ...mended].map((f) => [f.digest, new Set<string>()]));
      for (const { point, indexDigest } of readable) {
        for (const d of (await repo.readIndex(indexDigest)).digests) if (d !== null) users.get(d)?.add(point.id);
      }
      for (const f of bad) corrupt.push({ ...f, points: [...(users.get(f.digest) ?? [])].sort() });
      for (const f of mended) repaired.push({ ...f, points: [...(users.get(f.digest) ?? [])].sort() });
    }

    const affected = new Set(corrupt.flatMap((f) => f.points));
    for (const point of points) await repo.setDamaged(point.id, affected.has(point.id));
    corrupt.sort((a, b) => a.digest.localeCompare(b.digest));
    repaired.sort((a, b) => a.digest.localeCompare(b.digest));
    return {
      ok: corrupt.length === 0,
      chunksChecked: checked,
      bytesChecked: bytes,
      corrupt,
      repaired,
      affectedPoints: [...affected].sort(),
      pointsChecked: points.length,
      leftovers: (await repo.leftovers()).map((l) => l.path),
      staleLocksRemoved: lock.staleRemoved,
      seconds: (Date.now() - started) / 1000,
    };
  } finally {
    await pool.close();
    await lock.release();
  }
}

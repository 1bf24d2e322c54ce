/**
 * Garbage collection: mark every chunk and index that a restore point
 * references, then sweep the rest, but only what was last touched before the
 * cutoff:
 *
 *   cutoff = min(gc start, since of every live shared lock) - safety margin
 *
 * A running backup holds a shared lock and inserts (or touches) every chunk
 * its new index references, which refreshes the chunk's mtime past its
 * `since`; so nothing a live backup may reference is older than the cutoff.
 * gc holds a 'gc' lock: it excludes prune and other gc runs, not backups.
 * Quarantined `.bad` chunks are never deleted.
 *
 * The deletes run inside a Sweep (api.ts): a delete is a check of the mtime
 * then the delete, and a touch that lands between the two is lost. Locally
 * the rename-and-recheck of removeIfOlder closes that window; on object
 * storage the sweep's announcement makes the backups beside it check what
 * they reused before they commit (s3-sweep.ts).
 */
import { RestorelabError } from '../errors.js';
import { GC_SAFETY_MARGIN_MS } from './format.js';
import type { LockHolder, RepositoryMaintenance, Sweep } from './api.js';

export interface GcOptions {
  /** Count only, delete nothing. */
  dryRun?: boolean;
  /** Default GC_SAFETY_MARGIN_MS; raise it for repositories on network file systems with clock skew. */
  safetyMarginMs?: number;
}

export interface GcReport {
  dryRun: boolean;
  /** ISO time: unreferenced files touched at or after it were kept. */
  cutoff: string;
  chunksTotal: number;
  chunksReferenced: number;
  chunksRemoved: number;
  bytesFreed: number;
  /** Unreferenced but newer than the cutoff (a running or very recent backup may use them). */
  chunksKeptRecent: number;
  indexesRemoved: number;
  indexBytesFreed: number;
  tempFilesRemoved: number;
  quarantinedChunks: number;
  staleLocksRemoved: LockHolder[];
  seconds: number;
}

export async function collectGarbage(repo: RepositoryMaintenance, opts: GcOptions = {}): Promise<GcReport> {
  const dryRun = opts.dryRun ?? false;
  // A store whose mtimes come from another clock (object storage) asks for more; never less than it asks.
  const margin = Math.max(opts.safetyMarginMs ?? GC_SAFETY_MARGIN_MS, repo.chunks.minGcMarginMs ?? 0);
  const lock = await repo.lock('gc', dryRun ? 'gc --dry-run' : 'gc');
  try {
    const start = lock.since;
    // Read the writers only now: one that locks later has since >= start.
    const writers = (await repo.liveHolders()).filter((h) => h.kind === 'shared');
    const cutoffMs = Math.min(start, ...writers.map((w) => w.since)) - margin;

    const scan = await repo.scanPoints();
    const firstProblem = scan.problems[0];
    if (firstProblem) {
      throw new RestorelabError(
        'GC_UNSAFE',
        `gc stopped before deleting anything: manifest ${firstProblem.file} is unreadable (${firstProblem.reason})`,
        { hint: 'gc cannot know which chunks that point needs; move the manifest away or restore it, then run gc again' },
      );
    }
    const liveChunks = new Set<string>();
    const liveIndexes = new Set<string>();
    for (const point of scan.points) {
      for (const disk of point.disks) {
        liveIndexes.add(disk.indexDigest);
        let digests: (string | null)[];
        try {
          ({ digests } = await repo.readIndex(disk.indexDigest));
        } catch (err) {
          throw new RestorelabError(
            'GC_UNSAFE',
            `gc stopped before deleting anything: restore point ${point.id} disk ${disk.name}: ${(err as Error).message}`,
            { hint: `run restorelab verify, then prune or remove restore point ${point.id}`, cause: err },
          );
        }
        for (const d of digests) if (d !== null) liveChunks.add(d);
      }
    }

    const report: GcReport = {
      dryRun,
      cutoff: new Date(cutoffMs).toISOString(),
      chunksTotal: 0,
      chunksReferenced: 0,
      chunksRemoved: 0,
      bytesFreed: 0,
      chunksKeptRecent: 0,
      indexesRemoved: 0,
      indexBytesFreed: 0,
      tempFilesRemoved: 0,
      quarantinedChunks: 0,
      staleLocksRemoved: lock.staleRemoved,
      seconds: 0,
    };
    // Announced before the first HEAD of a delete and ended after the last DELETE: on object storage
    // nothing else closes the window between the two, and writers check again when a sweep ran beside them.
    const sweep = dryRun ? undefined : await repo.beginSweep('gc', { tidyBeforeMs: cutoffMs });
    try {
      await sweepChunksAndIndexes(repo, { dryRun, cutoffMs, liveChunks, liveIndexes, report, sweep });
    } finally {
      // Best effort: a marker that cannot be ended stops counting once its lease runs out (s3-sweep.ts).
      await sweep?.end().catch(() => undefined);
    }
    for (const t of await repo.leftovers(cutoffMs)) {
      report.tempFilesRemoved++;
      // One leftover that cannot go (permissions) does not stop gc; the next run tries again.
      if (!dryRun) await repo.removeLeftover(t).catch(() => undefined);
    }
    report.seconds = (Date.now() - start) / 1000;
    return report;
  } finally {
    await lock.release();
  }
}

interface SweepPlan {
  dryRun: boolean;
  cutoffMs: number;
  liveChunks: Set<string>;
  liveIndexes: Set<string>;
  report: GcReport;
  /** Undefined on a dry run, which deletes nothing. */
  sweep: Sweep | undefined;
}

/** The deletes, one after the other, with a checkpoint between two (Sweep.checkpoint: never during a delete). */
async function sweepChunksAndIndexes(repo: RepositoryMaintenance, plan: SweepPlan): Promise<void> {
  const { dryRun, cutoffMs, liveChunks, liveIndexes, report, sweep } = plan;
  // Checked by the store right before each DELETE: a gc paused past its announcement deletes nothing more.
  const guard = sweep ? (): void => sweep.assertLive() : undefined;
  for await (const c of repo.chunks.list()) {
    await sweep?.checkpoint();
    report.chunksTotal++;
    if (liveChunks.has(c.digest)) {
      report.chunksReferenced++;
    } else if (c.mtimeMs >= cutoffMs) {
      report.chunksKeptRecent++;
    } else if (dryRun) {
      report.chunksRemoved++;
      report.bytesFreed += c.size;
    } else {
      const freed = await repo.chunks.removeIfUnused(c.digest, cutoffMs, guard);
      if (freed > 0) {
        report.chunksRemoved++;
        report.bytesFreed += freed;
      } else {
        report.chunksKeptRecent++;
      }
    }
  }
  for await (const _ of repo.chunks.listQuarantined()) report.quarantinedChunks++;
  for (const idx of await repo.listIndexes()) {
    await sweep?.checkpoint();
    if (liveIndexes.has(idx.digest) || idx.mtimeMs >= cutoffMs) continue;
    const freed = dryRun ? idx.size : await repo.removeIndex(idx.digest, cutoffMs, guard);
    if (freed > 0) report.indexesRemoved++;
    report.indexBytesFreed += freed;
  }
}

/** `restorelab points`: the restore points of a repository, from the catalog. */
import type { Command } from 'commander';
import { contextFor } from '../context.js';
import { openRepoFromFlags, usingCatalog, type RepoFlags } from './repo.js';
import type { PointSummary } from '../../catalog/catalog.js';
import type { PointSignals } from '../../repo/contract.js';
import { formatBytes } from '../../format/output.js';

/** The human listing (shared with remote mode, src/cli/remote-commands.ts). */
export function renderPoints(points: (PointSummary & { scan?: string })[]): string {
  if (points.length === 0) return 'no restore points';
  return points
    .map(
      (p) =>
        `${p.id}  ${p.vm.padEnd(16)} ${p.time}  ${p.disks.map((d) => `${d.name} ${formatBytes(d.size)}`).join(', ')}` +
        `  ${p.consistency}  new ${formatBytes(p.bytesNew)}  ${renderSignals(p.signals)}${p.damaged ? '  DAMAGED' : ''}${p.scan && p.scan !== 'unscanned' ? `  scan ${p.scan.toUpperCase()}` : ''}`,
    )
    .join('\n');
}

/** A point's ransomware signals in a few words (docs/secure-restore.md, "Ransomware signals"). */
export function renderSignals(s: PointSignals | null): string {
  if (!s) return 'signals: none (backed up before they existed)';
  const pct = (x: number): string => `${(x * 100).toFixed(1)}%`;
  const changed = s.full ? 'full' : `changed ${formatBytes(s.changedBytes)} (${pct(s.changeRate)})`;
  return `${changed}, ${pct(s.incompressibleRatio)} incompressible${s.anomaly ? '  ANOMALY' : ''}`;
}

export function registerPoints(program: Command): void {
  program
    .command('points')
    .description('list restore points (oldest first)')
    .option('--repo <repo>', 'repository directory or s3:// URL (default: the configured one)')
    .option('--vm <name>', 'only the points of this VM')
    .option('--key-file <file>', 'key file of an encrypted repository')
    .option('--json', 'print one JSON object')
    .action(async (o: RepoFlags & { vm?: string }, c: Command) => {
      const { catalogKnows, listPoints, reindex } = await import('../../catalog/catalog.js');
      const ctx = contextFor(c);
      const { repo } = await openRepoFromFlags(ctx, o);
      await usingCatalog(ctx, async (db) => {
        // A catalog that has never seen this repository is filled from it first.
        if (!(await catalogKnows(db, repo.path))) await reindex(db, repo);
        const { withScanStatus } = await import('../../scan/store.js');
        const points = await withScanStatus(db, repo.path, await listPoints(db, repo.path, o.vm ? { vm: o.vm } : {}));
        ctx.out.result({ repo: repo.path, points }, () => renderPoints(points));
      });
    });
}

/** `restorelab prune`: retention rules over restore points (data is freed by gc). */
import type { Command } from 'commander';
import { contextFor } from '../context.js';
import { openRepoFromFlags, withCatalog, type RepoFlags } from './repo.js';
import type { PrunePolicy, PruneReport } from '../../repo/prune.js';
import { badInput } from '../../errors.js';

function count(flag: string): (v: string) => number {
  return (v: string) => {
    const n = Number(v);
    if (!/^\d+$/.test(v) || !Number.isSafeInteger(n))
      throw badInput('PRUNE_POLICY', `${flag} needs a whole number, got "${v}"`, `e.g. ${flag} 7`);
    return n;
  };
}

function render(r: PruneReport): string {
  const lines = [
    ...r.kept.map((p) => `keep    ${p.id}  ${p.vm}  ${p.time}  (${p.reasons.join(', ')})`),
    ...r.removed.map((p) => `${r.dryRun ? 'would remove' : 'remove '} ${p.id}  ${p.vm}  ${p.time}`),
  ];
  lines.push(
    `${r.kept.length} kept, ${r.removed.length} ${r.dryRun ? 'would be ' : ''}removed${r.dryRun ? ' (dry run)' : '; run restorelab gc to free their data'}`,
  );
  return lines.join('\n');
}

export function registerPrune(program: Command): void {
  program
    .command('prune')
    .description('remove restore points not kept by any rule (per VM); run gc afterwards to free space')
    .option('--repo <repo>', 'repository directory or s3:// URL (default: the configured one)')
    .option('--key-file <file>', 'key file of an encrypted repository')
    .option('--vm <name>', 'only the points of this VM')
    .option('--keep-last <n>', 'keep the n newest points', count('--keep-last'))
    .option('--keep-hourly <n>', 'keep the newest point of each of the last n hours that have one', count('--keep-hourly'))
    .option('--keep-daily <n>', 'keep the newest point of each of the last n days that have one', count('--keep-daily'))
    .option('--keep-weekly <n>', 'keep the newest point of each of the last n ISO weeks that have one', count('--keep-weekly'))
    .option('--keep-monthly <n>', 'keep the newest point of each of the last n months that have one', count('--keep-monthly'))
    .option('--keep-yearly <n>', 'keep the newest point of each of the last n years that have one', count('--keep-yearly'))
    .option('--dry-run', 'show what would be removed, remove nothing')
    .option('--json', 'print one JSON object')
    .action(async (o: RepoFlags & PrunePolicy & { vm?: string; dryRun?: boolean }, c: Command) => {
      const { pruneRepository } = await import('../../repo/prune.js');
      const { forgetPoints } = await import('../../catalog/catalog.js');
      const ctx = contextFor(c);
      const { repo } = await openRepoFromFlags(ctx, o);
      const policy: PrunePolicy = {};
      for (const k of ['keepLast', 'keepHourly', 'keepDaily', 'keepWeekly', 'keepMonthly', 'keepYearly'] as const) {
        if (o[k] !== undefined) policy[k] = o[k];
      }
      const report = await pruneRepository(repo, { ...policy, ...(o.vm ? { vm: o.vm } : {}), dryRun: Boolean(o.dryRun) });
      if (!report.dryRun)
        await withCatalog(ctx, (db) =>
          forgetPoints(
            db,
            repo.path,
            report.removed.map((p) => p.id),
          ),
        );
      ctx.out.result(report, () => render(report));
    });
}

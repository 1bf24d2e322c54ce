/** `restorelab gc`: mark and sweep unreferenced chunks and indexes, safe beside running backups. */
import type { Command } from 'commander';
import { contextFor } from '../context.js';
import { openRepoFromFlags, type RepoFlags } from './repo.js';
import type { GcReport } from '../../repo/gc.js';
import { formatBytes } from '../../format/output.js';

function render(r: GcReport): string {
  return [
    `${r.dryRun ? 'would remove' : 'removed'} ${r.chunksRemoved} of ${r.chunksTotal} chunk(s) and ${r.indexesRemoved} index(es): ` +
      `${formatBytes(r.bytesFreed + r.indexBytesFreed)} ${r.dryRun ? 'to free' : 'freed'} in ${r.seconds} s`,
    `${r.chunksReferenced} referenced; ${r.chunksKeptRecent} unreferenced but newer than the cutoff ${r.cutoff} (kept for running backups)`,
    ...(r.quarantinedChunks ? [`${r.quarantinedChunks} quarantined chunk(s) kept (.bad files are never deleted)`] : []),
    ...r.staleLocksRemoved.map((h) => `stale lock removed: ${h.kind} "${h.purpose}" of dead pid ${h.pid}`),
  ].join('\n');
}

export function registerGc(program: Command): void {
  program
    .command('gc')
    .description('free chunks and indexes no restore point references (runs beside backups; they are protected by a cutoff)')
    .option('--repo <repo>', 'repository directory or s3:// URL (default: the configured one)')
    .option('--key-file <file>', 'key file of an encrypted repository')
    .option('--dry-run', 'count only, delete nothing')
    .option('--json', 'print one JSON object')
    .action(async (o: RepoFlags & { dryRun?: boolean }, c: Command) => {
      const { collectGarbage } = await import('../../repo/gc.js');
      const ctx = contextFor(c);
      const { repo } = await openRepoFromFlags(ctx, o);
      const report = await collectGarbage(repo, { dryRun: Boolean(o.dryRun) });
      ctx.out.result(report, () => render(report));
    });
}

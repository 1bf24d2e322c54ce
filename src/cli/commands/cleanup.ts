/** `restorelab cleanup`: reconcile the state directory with the host on demand (docs/operations.md). */
import type { Command } from 'commander';
import { contextFor } from '../context.js';
import { badInput } from '../../errors.js';
import { keyFileOption } from '../../config/key-file.js';

interface CleanupFlags {
  dryRun?: boolean;
  item: string[];
  discardWrites?: boolean;
}

export function registerCleanup(program: Command): void {
  program
    .command('cleanup')
    .description('check publications, sessions, labs, mounts and overlays against the host; remove what is stale and safe to remove')
    .option('--dry-run', 'report only; change nothing')
    .option(
      '--item <id>',
      'act on this stale item only, even one not removed automatically (repeatable), e.g. lab:prod-lab',
      (v: string, acc: string[]) => [...acc, v],
      [] as string[],
    )
    .option('--discard-writes', 'with --item: also discard an overlay that holds writes')
    .option('--json', 'print one JSON object')
    .action(async (o: CleanupFlags, c: Command) => {
      if (o.discardWrites && o.item.length === 0) {
        throw badInput(
          'BAD_FLAGS',
          '--discard-writes needs --item: writes are discarded only for an item named explicitly',
          'restorelab cleanup --dry-run lists the items; then: restorelab cleanup --item overlay:<dir> --discard-writes',
        );
      }
      const { reconcile, renderStale } = await import('../../reconcile/reconcile.js');
      const ctx = contextFor(c);
      const cfg = await ctx.config();
      const report = await reconcile({
        stateDir: cfg.stateDir,
        dryRun: Boolean(o.dryRun),
        ...(o.item.length ? { only: o.item } : {}),
        discardWrites: Boolean(o.discardWrites),
        ...keyFileOption(undefined, cfg),
        log: (l) => ctx.out.info(l),
      });
      ctx.out.result(report, () => `${renderStale(report)}${report.dryRun ? '\n(dry run: nothing changed)' : ''}`);
    });
}

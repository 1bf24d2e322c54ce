/**
 * Stale state (src/reconcile): what the state directory records that the
 * host no longer has, or has left over. Listing is a dry run; cleaning is an
 * admin's, one item (the dashboard's button) or every safe one at a time.
 */
import { keyFileOption } from '../../config/key-file.js';
import type { RegisterRoutes } from './register.js';
import { badInput } from '../../errors.js';
import { principal } from '../route-table.js';
import { reconcile, type ReconcileReport } from '../../reconcile/reconcile.js';

interface CleanupBody {
  items?: string[];
  discardWrites: boolean;
  dryRun: boolean;
}

export const stateRoutes: RegisterRoutes = (t, ctx) => {
  const cfg = ctx.config;
  const keyFile = keyFileOption(undefined, cfg);
  // Two cleanups at once would race on the same records: they run one after another.
  let queue: Promise<unknown> = Promise.resolve();

  t.add({
    method: 'get',
    path: '/state/stale',
    role: 'viewer',
    tag: 'system',
    summary: 'stale state with its reason, and publications that can be resumed (a dry run: nothing changes)',
    handler: () => reconcile({ stateDir: cfg.stateDir, dryRun: true, ...keyFile }),
  });

  t.add({
    method: 'post',
    path: '/state/cleanup',
    role: 'admin',
    tag: 'system',
    body: 'api-state-cleanup.schema.json',
    summary: 'removes stale state: the named items, or every item safe to remove; overlays with writes only when named with discardWrites',
    handler: async (req, res) => {
      const b = req.body as CleanupBody;
      if (b.discardWrites && !b.items)
        throw badInput(
          'BAD_FLAGS',
          'discardWrites needs items: writes are discarded only for items named explicitly',
          'GET /api/v1/state/stale lists the items',
        );
      const run = queue.then(() =>
        reconcile({
          stateDir: cfg.stateDir,
          dryRun: b.dryRun,
          discardWrites: b.discardWrites,
          ...(b.items ? { only: b.items } : {}),
          ...keyFile,
          log: (line) => ctx.log.info({ by: principal(res).name }, `cleanup: ${line}`),
        }),
      );
      queue = run.catch(() => undefined);
      return run as Promise<ReconcileReport>;
    },
  });
};

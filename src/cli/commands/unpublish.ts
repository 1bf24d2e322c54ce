/**
 * `restorelab unpublish`: stop a user's publication (its process unmounts),
 * optionally discarding its writes. A session's or a run's publication is
 * refused (PUBLICATION_NOT_OWNER): its owner stops it.
 */
import type { Command } from 'commander';
import { contextFor } from '../context.js';

export function registerUnpublish(program: Command): void {
  program
    .command('unpublish <publication>')
    .description('stop serving a publication and unmount it; --discard also deletes its overlay')
    .option('--discard', 'delete the overlay and scratch files (the writes made through the publication)')
    .option('--json', 'print one JSON object')
    .action(async (id: string, o: { discard?: boolean }, c: Command) => {
      const { LOCAL_USER, removePublication } = await import('../../publish/publish.js');
      const ctx = contextFor(c);
      const st = await removePublication((await ctx.config()).stateDir, id, { discard: o.discard ?? false, as: LOCAL_USER });
      const result = {
        publication: st.id,
        stopped: true,
        discarded: o.discard ?? false,
        ...(st.crashed ? { crashed: true } : {}),
        ...(st.log ? { log: st.log } : {}),
      };
      // A publisher that died is worth a look before its log goes (--discard deletes it with the rest).
      const died = st.crashed ? ` (its publisher had died${st.log ? `; its log: ${st.log}` : ''})` : '';
      ctx.out.result(
        result,
        () => `unpublished ${st.id}${o.discard ? ' and discarded its overlay' : ' (overlay kept for --resume)'}${died}`,
      );
    });
}

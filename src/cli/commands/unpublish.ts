/** `restorelab unpublish`: stop a publication (its process unmounts), optionally discarding its writes. */
import type { Command } from 'commander';
import { contextFor } from '../context.js';

export function registerUnpublish(program: Command): void {
  program
    .command('unpublish <publication>')
    .description('stop serving a publication and unmount it; --discard also deletes its overlay')
    .option('--discard', 'delete the overlay and scratch files (the writes made through the publication)')
    .option('--json', 'print one JSON object')
    .action(async (id: string, o: { discard?: boolean }, c: Command) => {
      const { removePublication } = await import('../../publish/publish.js');
      const ctx = contextFor(c);
      const st = await removePublication((await ctx.config()).stateDir, id, { discard: o.discard ?? false });
      const result = { publication: st.id, stopped: true, discarded: o.discard ?? false };
      ctx.out.result(result, () => `unpublished ${st.id}${o.discard ? ' and discarded its overlay' : ' (overlay kept for --resume)'}`);
    });
}

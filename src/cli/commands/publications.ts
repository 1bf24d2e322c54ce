/** `restorelab publications`: every recorded publication, running or stopped (resumable). */
import type { Command } from 'commander';
import { contextFor } from '../context.js';
import { formatBytes } from '../../format/output.js';
import type { PublicationStatus } from '../../publish/publish.js';

/** The human listing (shared with remote mode, src/cli/remote-commands.ts). */
export function renderPublications(list: PublicationStatus[]): string {
  if (list.length === 0) return 'no publications';
  const state = (p: PublicationStatus): string =>
    p.running ? `running (pid ${p.pid})` : p.crashed ? `publisher died${p.log ? ` (log: ${p.log})` : ''}` : 'stopped';
  // Older servers (remote mode) send no owner.
  const owner = (p: PublicationStatus): string => (p.owner ? `  ${p.owner.kind}:${p.owner.id}` : '');
  return list.map((p) => `${p.id}  ${state(p)}${owner(p)}  ${p.path ?? ''}  overlay ${formatBytes(p.overlayBytes)}`).join('\n');
}

export function registerPublications(program: Command): void {
  program
    .command('publications')
    .description('list publications (running ones and stopped ones that can be resumed)')
    .option('--json', 'print one JSON object')
    .action(async (_o, c: Command) => {
      const { listPublications } = await import('../../publish/publish.js');
      const ctx = contextFor(c);
      const publications = listPublications((await ctx.config()).stateDir);
      ctx.out.result({ publications }, () => renderPublications(publications));
    });
}

/** `restorelab umount`: take a file-level restore mount down, with its loop devices and publication. */
import type { Command } from 'commander';
import { contextFor } from '../context.js';

export function registerUmount(program: Command): void {
  program
    .command('umount <dir-or-id>')
    .description('unmount what `restorelab mount` mounted (by its directory or session id): mounts, loop devices and the publication')
    .option('--json', 'print one JSON object')
    .action(async (target: string, _o: unknown, c: Command) => {
      const { umountSession } = await import('../../flr/mount.js');
      const ctx = contextFor(c);
      const r = await umountSession((await ctx.config()).stateDir, target);
      ctx.out.result(r, () => `unmounted ${r.dir} (session ${r.id})`);
    });
}

/** `restorelab stop <session>`: power off, remove the VM, unpublish discarding every write. */
import type { Command } from 'commander';
import { contextFor } from '../context.js';

export function registerStop(program: Command): void {
  program
    .command('stop <session>')
    .description('stop a recovery session: the VM, its taps and its publication go; the backup is untouched')
    .action(async (id: string, _o, c: Command) => {
      const { stopSession } = await import('../../session/recover.js');
      const ctx = contextFor(c);
      const s = await stopSession((await ctx.config()).stateDir, id);
      ctx.out.result({ session: s.id, vm: s.vm, state: s.state }, () => `session ${s.id} (${s.vm}) is ${s.state}`);
    });
}

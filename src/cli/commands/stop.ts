/** `restorelab stop <session>`: power off, remove the VM, unpublish discarding every write; here or on the lab worker that runs it. */
import type { Command } from 'commander';
import { contextFor } from '../context.js';

export function registerStop(program: Command): void {
  program
    .command('stop <session>')
    .description('stop a recovery session: the VM, its taps and its publication go; the backup is untouched')
    .action(async (id: string, _o, c: Command) => {
      const { stopAnySession, recoverQueueUrl, withQueue } = await import('../../workers/sessions.js');
      const ctx = contextFor(c);
      const cfg = await ctx.config();
      // A session on a lab worker is stopped there, through the queue (opened only for it).
      const s = await stopAnySession(cfg.stateDir, id, (f) => withQueue(recoverQueueUrl(cfg.catalog), f));
      ctx.out.result(
        { session: s.id, vm: s.vm, state: s.state, ...(s.worker ? { worker: s.worker } : {}) },
        () => `session ${s.id} (${s.vm}) is ${s.state}${s.worker ? ` on worker ${s.worker}` : ''}`,
      );
    });
}

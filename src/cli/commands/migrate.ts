/** `restorelab migrate <session> --to <dir>`: live storage migration off the backup, here or on the lab worker that runs the session. */
import type { Command } from 'commander';
import { contextFor } from '../context.js';
import { badInput } from '../../errors.js';

export function registerMigrate(program: Command): void {
  program
    .command('migrate <session>')
    .description("copy the running VM's disks to production storage while it runs, then stop depending on the backup")
    .requiredOption('--to <dir>', 'target directory for the disk files')
    .option('--format <format>', 'raw or qcow2', 'raw')
    .action(async (id: string, o: { to: string; format: string }, c: Command) => {
      const { migrateAnySession, recoverQueueUrl, withQueue } = await import('../../workers/sessions.js');
      const ctx = contextFor(c);
      if (o.format !== 'raw' && o.format !== 'qcow2')
        throw badInput('BAD_FORMAT', `unknown disk format ${o.format}`, 'use --format raw or --format qcow2');
      ctx.out.info(`migrating session ${id} to ${o.to}...`);
      const cfg = await ctx.config();
      // A session on a lab worker migrates there, onto a path of that host (the queue is opened only for it).
      const s = await migrateAnySession(cfg.stateDir, id, o.to, o.format, (f) => withQueue(recoverQueueUrl(cfg.catalog), f));
      ctx.out.result({ session: s.id, vm: s.vm, state: s.state, disks: s.disks, ...(s.worker ? { worker: s.worker } : {}) }, () =>
        [
          `session ${s.id} (${s.vm}) now runs on${s.worker ? ` worker ${s.worker}, from` : ''}:`,
          ...Object.entries(s.disks).map(([d, p]) => `  ${d}: ${p}`),
        ].join('\n'),
      );
    });
}

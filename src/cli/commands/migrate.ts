/** `restorelab migrate <session> --to <dir>`: live storage migration off the backup. */
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
      const { migrateSession } = await import('../../session/recover.js');
      const ctx = contextFor(c);
      if (o.format !== 'raw' && o.format !== 'qcow2')
        throw badInput('BAD_FORMAT', `unknown disk format ${o.format}`, 'use --format raw or --format qcow2');
      ctx.out.info(`migrating session ${id} to ${o.to}...`);
      const s = await migrateSession((await ctx.config()).stateDir, id, o.to, o.format);
      ctx.out.result({ session: s.id, vm: s.vm, state: s.state, disks: s.disks }, () =>
        [`session ${s.id} (${s.vm}) now runs on:`, ...Object.entries(s.disks).map(([d, p]) => `  ${d}: ${p}`)].join('\n'),
      );
    });
}

/** `restorelab config show|check`: print or validate the effective configuration. */
import type { Command } from 'commander';
import { contextFor } from '../context.js';

export function registerConfig(program: Command): void {
  const cmd = program.command('config').description('show or check the effective configuration');
  cmd
    .command('show')
    .description('print the effective configuration (defaults, config file, environment)')
    .action(async (_o, c: Command) => {
      const ctx = contextFor(c);
      ctx.out.result(await ctx.config());
    });
  cmd
    .command('check <file>')
    .description('validate a configuration file without using it')
    .action(async (file: string, _o, c: Command) => {
      const { loadConfig } = await import('../../config/config.js');
      const ctx = contextFor(c);
      const cfg = loadConfig({ file });
      ctx.out.result({ ok: true, file, config: cfg }, () => `${file}: valid`);
    });
}

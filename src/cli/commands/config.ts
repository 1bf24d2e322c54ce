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
      const { redactUrl } = await import('../../catalog/sql.js');
      const cfg = await ctx.config();
      // A postgres:// catalog URL may carry the role's password: never print it.
      ctx.out.result({ ...cfg, catalog: redactUrl(cfg.catalog) });
    });
  cmd
    .command('check <file>')
    .description('validate a configuration file without using it')
    .action(async (file: string, _o, c: Command) => {
      const { loadConfig } = await import('../../config/config.js');
      const ctx = contextFor(c);
      const { redactUrl } = await import('../../catalog/sql.js');
      const cfg = loadConfig({ file });
      ctx.out.result({ ok: true, file, config: { ...cfg, catalog: redactUrl(cfg.catalog) } }, () => `${file}: valid`);
    });
}

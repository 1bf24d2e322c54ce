/** What every command gets: the parsed global options, the config and the output. */
import type { Command } from 'commander';
import type { Config } from '../config/config.js';
import { Output } from '../format/output.js';

export interface GlobalOptions {
  json?: boolean;
  config?: string;
}

export interface CommandContext {
  opts: GlobalOptions;
  out: Output;
  /**
   * Loaded lazily so that commands that need no config (doctor) never fail on
   * one; the config module too, so that a command that never asks for the
   * config never loads its schema validator (ajv).
   */
  config(): Promise<Config>;
}

export function contextFor(cmd: Command): CommandContext {
  const opts = cmd.optsWithGlobals<GlobalOptions>();
  let cfg: Config | undefined;
  return {
    opts,
    out: new Output(Boolean(opts.json)),
    config: async () => {
      const { loadConfig } = await import('../config/config.js');
      const { tightenMode } = await import('../host/private-files.js');
      const { isPostgresTarget } = await import('../catalog/sql.js');
      if (!cfg) {
        cfg = loadConfig({ file: opts.config });
        // The state directory (catalog, labs, sessions) is owner-only; one an older version left open is closed here.
        tightenMode(cfg.stateDir);
        // A PostgreSQL catalog named in the config file only is the shared catalog too (sessions of lab workers,
        // src/session/catalog.ts reads the environment), here and in the supervisors and workers this process starts.
        if (isPostgresTarget(cfg.catalog) && !process.env['RESTORELAB_CATALOG']) process.env['RESTORELAB_CATALOG'] = cfg.catalog;
      }
      return cfg;
    },
  };
}

/** Command modules export one of these; main.ts registers them all. */
export type RegisterCommand = (program: Command) => void;

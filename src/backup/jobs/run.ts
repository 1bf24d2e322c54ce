/** One backup job run over the configured repository: what the server's scheduler, the API and the CLI all call. */
import { syncLevelOption, type Config } from '../../config/config.js';
import { keyFileOption } from '../../config/key-file.js';
import { openRepository } from '../../repo/index.js';
import type { BackupJobHistory } from './history.js';
import { runBackupJob, type FireSureBackup } from './runner.js';
import type { RunBackupJobFn } from './scheduler.js';

export interface ConfiguredBackupRun {
  history: BackupJobHistory;
  fireSureBackup?: FireSureBackup;
  log: { info(line: string): void; warn(line: string): void };
  /**
   * Runs of the server (scheduled, or over the API): host scripts must lie in
   * api.scriptsDir, as the scripts of the SureBackup jobs it runs must.
   */
  confineScripts: boolean;
}

/**
 * Opens the job's repository (default: the configured one, with the
 * configured key file when encrypted) and runs the job in it.
 */
export function configuredBackupRun(cfg: Config, o: ConfiguredBackupRun): RunBackupJobFn {
  return async (job, ctx) => {
    const repo = await openRepository(job.repository ?? cfg.repository, { ...keyFileOption(undefined, cfg), ...syncLevelOption(cfg) });
    return runBackupJob({
      job,
      repo,
      history: o.history,
      runId: ctx.runId,
      signal: ctx.signal,
      log: o.log,
      ...(o.fireSureBackup ? { fireSureBackup: o.fireSureBackup } : {}),
      ...(o.confineScripts ? { scriptsDir: cfg.api.scriptsDir } : {}),
      ...(ctx.onProgress ? { onProgress: ctx.onProgress } : {}),
    });
  };
}

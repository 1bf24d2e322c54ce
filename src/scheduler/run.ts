/** One SureBackup run with the configured repository, driver and limits: what the scheduler and the API's "run now" both call. */
import { dirname } from 'node:path';
import type { Config } from '../config/config.js';
import { keyFileOption } from '../config/key-file.js';
import { createLabBackend } from '../surebackup/backend.js';
import { executeRun } from '../surebackup/execute.js';
import type { History, RunTrigger } from '../surebackup/history.js';
import type { Job } from '../surebackup/runner.js';
import type { JobFile } from '../surebackup/job.js';
import { Limiter } from '../surebackup/limiter.js';
import type { RunReport } from '../report/report.js';
import type { RunResult } from '../verify/contract.js';
import { serverScriptPolicy } from '../verify/script.js';

/** A job file the scheduler knows, by its job's name. */
export interface ScheduledJob {
  name: string;
  file: string;
  job: Job & JobFile;
}

/** One run of a scheduled job: the real one is configuredRun's; tests pass their own. */
export type RunJobFn = (s: ScheduledJob, ctx: { runId: string; trigger: RunTrigger; signal: AbortSignal }) => Promise<RunResult | void>;

export interface ConfiguredRun {
  job: Job & JobFile;
  /** The job file; scripts and labs it names are relative to its directory. */
  file: string;
  history: History;
  trigger: RunTrigger;
  runId: string;
  signal: AbortSignal;
  limiter: Limiter;
  log: { warn(line: string): void };
}

/**
 * Runs the job in a real lab backend over the configured repository, and
 * closes the backend whatever happens. These are the server's runs, of job
 * files API admins write, so script tests run under the config's policy.
 */
export async function runConfiguredJob(cfg: Config, r: ConfiguredRun): Promise<RunReport> {
  const scripts = serverScriptPolicy(cfg.api);
  const backend = createLabBackend({
    repo: cfg.repository,
    stateDir: cfg.stateDir,
    catalog: cfg.catalog,
    driver: cfg.driver,
    accel: cfg.accel,
    baseDir: dirname(r.file),
    ...(cfg.fuse.group !== undefined ? { fuseGroup: cfg.fuse.group } : {}),
    ...keyFileOption(undefined, cfg),
  });
  try {
    return await executeRun({
      job: r.job,
      jobFile: r.file,
      backend,
      repo: () => backend.reader(),
      stateDir: cfg.stateDir,
      history: r.history,
      trigger: r.trigger,
      runId: r.runId,
      signal: r.signal,
      limiter: r.limiter,
      log: r.log,
      scripts,
    });
  } finally {
    await backend.close();
  }
}

export function configuredRun(
  cfg: Config,
  history: History,
  log: { warn(line: string): void },
  // One limiter for every job the server runs: the global cap and memory budget.
  limiter = new Limiter(cfg.limits.maxConcurrentVms, cfg.limits.memoryBudgetMiB),
): RunJobFn {
  return async (s, ctx) => {
    await runConfiguredJob(cfg, {
      job: s.job,
      file: s.file,
      history,
      trigger: ctx.trigger,
      runId: ctx.runId,
      signal: ctx.signal,
      limiter,
      log,
    });
  };
}

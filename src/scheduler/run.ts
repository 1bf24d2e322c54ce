/** One SureBackup run with the configured repository, driver and limits: what the scheduler and the API's "run now" both call. */
import { dirname } from 'node:path';
import type { Config } from '../config/config.js';
import { keyFileOption } from '../config/key-file.js';
import { createLabBackend, type RealLabBackend } from '../surebackup/backend.js';
import { RestorelabError } from '../errors.js';
import { executeRun } from '../surebackup/execute.js';
import type { History, RunTrigger } from '../surebackup/history.js';
import type { Job } from '../surebackup/runner.js';
import type { JobFile } from '../surebackup/job.js';
import { Limiter } from '../surebackup/limiter.js';
import type { RunReport } from '../report/report.js';
import type { RunResult } from '../verify/contract.js';
import { serverScriptPolicy } from '../verify/script.js';

/**
 * Runs a job's VMs on the lab workers (src/workers/dispatch.ts). The server,
 * which sits above the workers' layer, sets it at start; without it a job
 * with `runOn: workers` is refused rather than run here unasked.
 */
export type LabDispatch = (
  job: Job,
  o: {
    backend: RealLabBackend;
    repo: string;
    baseDir: string;
    run: { id: string; dir: string; baseline: (vm: string) => { run: string; path: string } | undefined; signal?: AbortSignal };
  },
) => Promise<RunResult>;

let labDispatch: LabDispatch | undefined;

export function setLabDispatch(d: LabDispatch | undefined): void {
  labDispatch = d;
}

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
  const elsewhere = r.job.runOn === 'workers' ? labDispatch : undefined;
  if (r.job.runOn === 'workers' && !elsewhere) {
    await backend.close();
    throw new RestorelabError(
      'JOB_NEEDS_WORKERS',
      `job ${r.job.name} runs on the lab workers (runOn: workers), and this process has none`,
      {
        hint: 'run it from restorelab server with a PostgreSQL queue (RESTORELAB_QUEUE), or set "runOn": "host"',
      },
    );
  }
  try {
    return await executeRun({
      ...(elsewhere
        ? {
            runElsewhere: (j: Job, run: Parameters<LabDispatch>[1]['run']) =>
              elsewhere(j, { backend, repo: cfg.repository, baseDir: dirname(r.file), run }),
          }
        : {}),
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

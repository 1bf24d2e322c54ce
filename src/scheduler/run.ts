/** The run function `restorelab server` hands to startScheduler: a real run with the configured repository, driver and limits. */
import { dirname } from 'node:path';
import type { Config } from '../config/config.js';
import { createLabBackend } from '../surebackup/backend.js';
import { executeRun } from '../surebackup/execute.js';
import type { History } from '../surebackup/history.js';
import { Limiter } from '../surebackup/limiter.js';
import type { RunJobFn } from './scheduler.js';

export function configuredRun(cfg: Config, history: History, log: { warn(line: string): void },
  // One limiter for every job the server runs: the global cap and memory budget.
  limiter = new Limiter(cfg.limits.maxConcurrentVms, cfg.limits.memoryBudgetMiB)): RunJobFn {
  return async (s, ctx) => {
    const backend = createLabBackend({ repo: cfg.repository, stateDir: cfg.stateDir, driver: cfg.driver, accel: cfg.accel, baseDir: dirname(s.file) });
    try {
      await executeRun({ job: s.job, jobFile: s.file, backend, repo: () => backend.reader(), stateDir: cfg.stateDir, history,
        trigger: ctx.trigger, runId: ctx.runId, signal: ctx.signal, limiter, log });
    } finally {
      await backend.close();
    }
  };
}

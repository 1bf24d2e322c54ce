/**
 * How a backup job fires its linked SureBackup jobs: through the SureBackup
 * scheduler of the process that runs the backup job (the server), or, for
 * `restorelab backup-job run`, through the afterBackup machinery: the server
 * on this state directory if one listens on its notice socket, else this
 * process (src/scheduler/after-backup.ts). Either way the runs carry the
 * trigger `after-backup` and obey the SureBackup scheduler's rules (no
 * overlap of one job, one VM limit).
 */
import type { Config } from '../../config/config.js';
import { runLinkedJobs } from '../../scheduler/after-backup.js';
import { triggeredRun } from '../../scheduler/notice.js';
import type { RunTrigger } from '../../surebackup/history.js';
import type { TriggerOutcome } from '../../scheduler/scheduler.js';
import type { FireSureBackup } from './runner.js';

/** Through a SureBackup scheduler in this process; a job it does not know is reported, not thrown. */
export function fireThroughScheduler(scheduler: { trigger(name: string, trigger: RunTrigger): Promise<TriggerOutcome> }): FireSureBackup {
  return (jobs) =>
    Promise.all(
      jobs.map(async (job) => {
        try {
          return triggeredRun(await scheduler.trigger(job, 'after-backup'));
        } catch (err) {
          return { job, run: null, status: 'not-found', detail: (err as Error).message };
        }
      }),
    );
}

/** As `restorelab backup` hands over afterBackup jobs: to the server, else run here and wait for the verdicts. */
export function fireFromCli(
  cfg: Config,
  jobsDir: string,
  log: { info(l: string): void; warn(l: string): void },
  signal?: AbortSignal,
): FireSureBackup {
  return async (jobs, from) => {
    try {
      return await runLinkedJobs({ cfg, jobsDir, jobs, by: `backup job ${from.job} run ${from.run}`, log, ...(signal ? { signal } : {}) });
    } catch (err) {
      return jobs.map((job) => ({ job, run: null, status: 'error', detail: (err as Error).message }));
    }
  };
}

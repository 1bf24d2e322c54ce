/**
 * What `restorelab backup` does once its restore point is recorded: the
 * afterBackup jobs covering the VM run exactly once, by one of two owners.
 *
 * - A `restorelab server` with its scheduler runs on this state directory
 *   (its notice socket answers, src/scheduler/notice.ts): the server runs
 *   them, under its gate and VM limit, and the backup reports the run ids
 *   it started. The CLI does not wait: the server outlives it.
 * - Otherwise this process runs them (side by side, within the configured
 *   VM limit) through the same Scheduler and configured run as the server (trigger
 *   `after-backup`, same history, same script policy, since the jobs
 *   directory holds the files API admins write), and waits for their
 *   verdicts.
 */
import { existsSync } from 'node:fs';
import type { Config } from '../config/config.js';
import { History, type RunStatus } from '../surebackup/history.js';
import { JobGate } from '../surebackup/gate.js';
import { configuredRun, type ScheduledJob } from './run.js';
import { Scheduler, covers, loadJobsDir, type BackedUpVm, type TriggerOutcome } from './scheduler.js';
import { sendBackupNotice, sendRunNotice, triggeredRun } from './notice.js';

export interface AfterBackupRun {
  job: string;
  run: string;
  /** `running` when the server took it (it ends later); the run's end status when this process ran it. */
  status: RunStatus;
  detail?: string | null;
  vms?: { name: string; result: string }[];
}

export interface AfterBackupReport {
  /** Who runs the jobs: the server on this state directory, or this process. */
  by: 'server' | 'this-process';
  /** The jobs directory whose jobs were matched (the server's own when it ran them). */
  jobsDir: string;
  server?: { pid: number };
  runs: AfterBackupRun[];
}

export interface AfterBackupOptions {
  cfg: Config;
  /** Where this process reads jobs when no server takes the notice. */
  jobsDir: string;
  vm: BackedUpVm;
  point: string;
  log: { info(l: string): void; warn(l: string): void };
  /** Cancels runs of this process (Ctrl-C); the runner still tears the lab down. */
  signal?: AbortSignal;
}

/** Call only after a backup succeeded and its point is recorded: the jobs boot the newest point. */
export async function afterBackup(o: AfterBackupOptions): Promise<AfterBackupReport> {
  const reply = await sendBackupNotice(o.cfg.stateDir, { vm: o.vm, point: o.point });
  if (reply) return { by: 'server', jobsDir: reply.jobsDir, server: { pid: reply.pid }, runs: reply.triggered };

  // No jobs directory is no afterBackup job (the default one may not exist on a host with no jobs).
  const jobs = existsSync(o.jobsDir) ? loadJobsDir(o.jobsDir).filter((s) => s.job.afterBackup && covers(s, o.vm)) : [];
  if (jobs.length === 0) return { by: 'this-process', jobsDir: o.jobsDir, runs: [] };

  return { by: 'this-process', jobsDir: o.jobsDir, runs: await runHere(o.cfg, jobs, o.log, o.signal, (s) => s.notifyBackup([o.vm])) };
}

/**
 * Runs `jobs` in this process through a Scheduler of its own (same history,
 * gate rules and configured run as the server), starting them with `start`,
 * and waits for their verdicts.
 */
async function runHere(
  cfg: Config,
  jobs: ScheduledJob[],
  log: AfterBackupOptions['log'],
  signal: AbortSignal | undefined,
  start: (s: Scheduler) => Promise<TriggerOutcome[]>,
): Promise<AfterBackupRun[]> {
  const history = await History.open(cfg.catalog);
  const gate = new JobGate(cfg.limits.maxConcurrentVms, cfg.limits.memoryBudgetMiB);
  const scheduler = new Scheduler({ jobs, history, gate, log, run: configuredRun(cfg, history, log, gate.limiter) });
  const cancel = (): void => {
    void scheduler.stop();
  };
  signal?.addEventListener('abort', cancel, { once: true });
  try {
    for (const s of jobs) await history.recordJob(s.name, s.job, s.file);
    const outcomes = await start(scheduler);
    for (const r of outcomes.map(triggeredRun)) log.info(`after-backup: job ${r.job} run ${r.run} started`);
    await Promise.all(outcomes.map((x) => (x.status === 'started' ? x.done : undefined)));
    return await Promise.all(
      outcomes.map(async (x) => {
        const row = await history.run(x.runId);
        return {
          job: x.job,
          run: x.runId,
          status: row?.status ?? 'error',
          detail: row?.detail ?? null,
          vms: (row?.vms ?? []).map((v) => ({ name: v.name, result: v.result })),
        };
      }),
    );
  } finally {
    signal?.removeEventListener('abort', cancel);
    await scheduler.stop();
    await history.close();
  }
}

/** A SureBackup job a backup job fired: its run, or why there is none. */
export interface LinkedRun {
  job: string;
  run: string | null;
  status: RunStatus | 'not-found';
  detail?: string | null;
}

/**
 * Fires SureBackup jobs by name once a backup job's run succeeded
 * (src/backup/jobs), with the same two owners as afterBackup: the server on
 * this state directory (it runs them under its gate; they are `running` here
 * and end later), else this process, which waits for their verdicts.
 */
export async function runLinkedJobs(o: {
  cfg: Config;
  jobsDir: string;
  jobs: readonly string[];
  by: string;
  log: AfterBackupOptions['log'];
  signal?: AbortSignal;
}): Promise<LinkedRun[]> {
  const reply = await sendRunNotice(o.cfg.stateDir, { jobs: [...o.jobs], by: o.by });
  if (reply) return reply.triggered.map((r) => ({ job: r.job, run: r.run, status: r.status }));
  const known = existsSync(o.jobsDir) ? loadJobsDir(o.jobsDir) : [];
  const jobs = known.filter((s) => o.jobs.includes(s.name));
  const missing: LinkedRun[] = o.jobs
    .filter((n) => !jobs.some((s) => s.name === n))
    .map((job) => ({ job, run: null, status: 'not-found', detail: `no SureBackup job named ${job} in ${o.jobsDir}` }));
  if (jobs.length === 0) return missing;
  const runs = await runHere(o.cfg, jobs, o.log, o.signal, (s) => Promise.all(jobs.map((j) => s.trigger(j.name, 'after-backup'))));
  return [...runs, ...missing];
}

/** Whether every run this process waited for passed (success or warning); a server's runs are not known yet. */
export function afterBackupPassed(r: AfterBackupReport): boolean {
  return r.by === 'server' || r.runs.every((x) => x.status === 'success' || x.status === 'warning');
}

/** The lines `restorelab backup` prints about it. */
export function renderAfterBackup(r: AfterBackupReport, vm: string): string {
  if (r.runs.length === 0) return `after-backup: no afterBackup job in ${r.jobsDir} covers ${vm}`;
  if (r.by === 'server') {
    return r.runs
      .map((x) =>
        x.status === 'skipped-overlap'
          ? `after-backup: the server (pid ${r.server?.pid}) skipped job ${x.job}: its previous run is still going (run ${x.run})`
          : `after-backup: the server (pid ${r.server?.pid}) runs job ${x.job} as run ${x.run}; \`restorelab surebackup history --job ${x.job}\` shows its result`,
      )
      .join('\n');
  }
  return r.runs
    .map(
      (x) =>
        `after-backup: job ${x.job} run ${x.run}: ${x.status}` +
        (x.vms && x.vms.length ? ` (${x.vms.map((v) => `${v.name}: ${v.result}`).join(', ')})` : x.detail ? ` (${x.detail})` : ''),
    )
    .join('\n');
}

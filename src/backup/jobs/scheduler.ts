/**
 * The backup job scheduler (started by `restorelab server`, also the one
 * place the API's "run now" goes through). Its rules are the SureBackup
 * scheduler's (src/scheduler/scheduler.ts):
 * - Two runs of one job never overlap, also across processes (the run lock
 *   in the state directory, src/backup/jobs/run-lock.ts, against
 *   `backup-job run`). A trigger that arrives while the job runs is
 *   recorded as a `skipped-overlap` run, not queued: the run in progress
 *   already takes the VMs' newest state it can.
 * - Runs missed while the server was down are reported on start as one
 *   `missed` entry per job naming how many and when, and not run late.
 */
import { Cron } from 'croner';
import { notFound } from '../../errors.js';
import { JobGate } from '../../surebackup/gate.js';
import { describeMissed, missedFireTimes, nextRunsOf } from '../../scheduler/scheduler.js';
import { loadBackupJobsDir, type BackupJob } from './job.js';
import type { BackupJobHistory, BackupJobTrigger, BackupRunRow } from './history.js';
import type { BackupJobProgress, BackupJobRunResult } from './runner.js';
import { claimRunLock } from './run-lock.js';

export interface BackupRunContext {
  runId: string;
  trigger: BackupJobTrigger;
  signal: AbortSignal;
  onProgress?: (p: BackupJobProgress) => void;
}
export type RunBackupJobFn = (job: BackupJob, ctx: BackupRunContext) => Promise<BackupJobRunResult>;

export type BackupTriggerOutcome =
  | { job: string; status: 'started'; runId: string; done: Promise<BackupJobRunResult | undefined> }
  | { job: string; status: 'skipped-overlap'; runId: string };

export interface BackupJobListing {
  name: string;
  file: string;
  description: string | null;
  vms: { name: string; source: string }[];
  schedule: string | null;
  retention: BackupJob['retention'] | null;
  surebackup: string[];
  /** The next three fire times of the schedule. */
  next: string[];
  lastRun: Omit<BackupRunRow, 'surebackup' | 'dueAt'> | null;
  running: boolean;
}

export interface BackupJobSchedulerOptions {
  jobsDir?: string;
  jobs?: BackupJob[];
  history: BackupJobHistory;
  /** stop() closes the history's catalog (the scheduler opened it for itself). */
  closeHistory?: boolean;
  run: RunBackupJobFn;
  log?: { info(line: string): void; warn(line: string): void };
  now?: () => Date;
  /** The state directory whose run locks exclude other processes' runs of the same job; none: this process only. */
  stateDir?: string;
}

/** How a VM's source reads in a listing: `disks root=/x.img`, `qmp /run/vm.qmp`, `libvirt web`. */
function sourceText(s: BackupJob['vms'][number]['source']): string {
  if (s.kind === 'disks')
    return `disks ${Object.entries(s.disks)
      .map(([d, p]) => `${d}=${p}`)
      .join(' ')}`;
  return s.kind === 'qmp' ? `qmp ${s.qmp}` : `libvirt ${s.domain}${s.uri ? ` (${s.uri})` : ''}`;
}

/** What `backup-job list` and GET /backup-jobs show of a job. */
export async function describeBackupJob(
  job: BackupJob,
  history: BackupJobHistory,
  running: boolean,
  from = new Date(),
): Promise<BackupJobListing> {
  const last = (await history.lastRuns({ job: job.name, limit: 1 }))[0];
  return {
    name: job.name,
    file: job.file,
    description: job.description ?? null,
    vms: job.vms.map((v) => ({ name: v.vm.name, source: sourceText(v.source) })),
    schedule: job.schedule ?? null,
    retention: job.retention ?? null,
    surebackup: job.surebackup,
    next: nextRunsOf(job.schedule, 3, from).map((d) => d.toISOString()),
    lastRun: last
      ? {
          id: last.id,
          job: last.job,
          trigger: last.trigger,
          status: last.status,
          startedAt: last.startedAt,
          endedAt: last.endedAt,
          detail: last.detail,
        }
      : null,
    running,
  };
}

export class BackupJobScheduler {
  private current: BackupJob[];
  private readonly crons: Cron[] = [];
  private readonly running = new Map<string, AbortController>();
  // Backups boot no VM: only the gate's no-overlap rule is used, not its VM limiter.
  private readonly gate = new JobGate(1, 1);
  private readonly inFlight = new Set<Promise<unknown>>();
  private stopped = false;

  constructor(private readonly o: BackupJobSchedulerOptions) {
    this.current = o.jobs ?? (o.jobsDir === undefined ? [] : loadBackupJobsDir(o.jobsDir));
  }

  get jobs(): readonly BackupJob[] {
    return this.current;
  }

  /** Reports missed runs, then arms every schedule. */
  async start(): Promise<this> {
    await this.reportMissed();
    this.arm();
    return this;
  }

  private arm(): void {
    for (const j of this.current) {
      if (j.schedule === undefined) continue;
      this.crons.push(
        new Cron(j.schedule, { name: `backup-job:${j.name}` }, () => {
          // trigger() records its own failures in the run; a catalog that cannot be written is only logged.
          this.trigger(j.name, 'schedule').catch((err: Error) => this.o.log?.warn(`backup job ${j.name}: ${err.message}`));
        }),
      );
    }
  }

  /** Re-reads the jobs directory and re-arms the schedules; runs in progress go on. */
  reload(): void {
    if (this.o.jobsDir === undefined || this.stopped) return;
    this.current = loadBackupJobsDir(this.o.jobsDir);
    for (const c of this.crons.splice(0)) c.stop();
    this.arm();
  }

  /** One `missed` entry per scheduled job whose fire times passed while nothing ran them. */
  async reportMissed(): Promise<{ job: string; count: number; first: Date }[]> {
    const now = this.o.now?.() ?? new Date();
    const out: { job: string; count: number; first: Date }[] = [];
    for (const j of this.current) {
      if (j.schedule === undefined) continue;
      const ref = Math.max(
        (await this.o.history.lastRunTime(j.name))?.getTime() ?? -Infinity,
        (await this.o.history.lastMissTime(j.name))?.getTime() ?? -Infinity,
      );
      // A job that never ran has nothing to compare with.
      if (!Number.isFinite(ref)) continue;
      const missed = missedFireTimes(j.schedule, ref, now);
      if (missed.length === 0) continue;
      const detail = describeMissed(missed);
      await this.o.history.recordNonRun(j.name, 'schedule', 'missed', detail, missed[0]);
      this.o.log?.warn(`backup job ${j.name}: ${detail}`);
      out.push({ job: j.name, count: missed.length, first: missed[0]! });
    }
    return out;
  }

  /**
   * Starts a run of the job (by name: as loaded; or the job itself, e.g. as
   * the API just read it) unless one is in progress: then records
   * skipped-overlap. `done` never rejects: an error ends the run as `error`.
   * `signal` (an API operation's cancel) cancels the run as stop() does.
   * Rejects only when the job is unknown or the catalog cannot record the run.
   */
  async trigger(
    nameOrJob: string | BackupJob,
    trigger: BackupJobTrigger,
    opts: { onProgress?: (p: BackupJobProgress) => void; signal?: AbortSignal } = {},
  ): Promise<BackupTriggerOutcome> {
    const job = typeof nameOrJob === 'string' ? this.current.find((j) => j.name === nameOrJob) : nameOrJob;
    if (!job) {
      throw notFound(
        'BACKUP_JOB_NOT_FOUND',
        `no backup job named ${String(nameOrJob)}`,
        `known jobs: ${this.current.map((j) => j.name).join(', ') || 'none'}`,
      );
    }
    const name = job.name;
    const ac = new AbortController();
    const claimed = this.stopped ? undefined : this.gate.claim(name, ac);
    // This process's gate first, then the run lock other processes see.
    const lock = claimed && this.o.stateDir !== undefined ? claimRunLock(this.o.stateDir, name) : undefined;
    const heldBy = lock && 'heldBy' in lock ? lock.heldBy : undefined;
    if (!claimed || heldBy !== undefined) {
      claimed?.();
      const why = this.stopped
        ? 'scheduler stopping'
        : heldBy !== undefined
          ? `a ${trigger} trigger arrived while process ${heldBy} was still running the job`
          : `a ${trigger} trigger arrived while the previous run was still going`;
      const recorded = this.o.history.recordNonRun(name, trigger, 'skipped-overlap', why);
      // stop() waits for it too, so the history is not closed under a write.
      this.track(recorded);
      const runId = await recorded;
      this.o.log?.info(`backup job ${name}: ${trigger} trigger skipped, previous run still going`);
      return { job: name, status: 'skipped-overlap', runId };
    }
    const release = (): void => {
      if (lock && 'release' in lock) lock.release();
      claimed();
    };
    let runId: string;
    try {
      const recorded = this.o.history.startRun(name, trigger, this.o.now?.() ?? new Date());
      this.track(recorded);
      runId = await recorded;
    } catch (err) {
      release();
      throw err;
    }
    this.running.set(name, ac);
    const onCancel = (): void => ac.abort(opts.signal?.reason);
    opts.signal?.addEventListener('abort', onCancel, { once: true });
    this.o.log?.info(`backup job ${name}: run ${runId} started (${trigger})`);
    const done = (async () => {
      try {
        const r = await this.o.run(job, { runId, trigger, signal: ac.signal, ...(opts.onProgress ? { onProgress: opts.onProgress } : {}) });
        this.o.log?.info(`backup job ${name}: run ${runId} ended: ${r.status}${r.detail ? ` (${r.detail})` : ''}`);
        return r;
      } catch (err) {
        // The runner closes its row; an error before or around it must not leave the run "running".
        try {
          if ((await this.o.history.run(runId))?.status === 'running')
            await this.o.history.finishRun(runId, ac.signal.aborted ? 'cancelled' : 'error', (err as Error).message ?? String(err));
        } catch (e) {
          this.o.log?.warn(`backup job ${name}: run ${runId} could not be closed in the catalog: ${(e as Error).message}`);
        }
        this.o.log?.warn(`backup job ${name}: run ${runId} ended with an error: ${(err as Error).message}`);
        return undefined;
      } finally {
        opts.signal?.removeEventListener('abort', onCancel);
        this.running.delete(name);
        release();
      }
    })();
    this.track(done);
    return { job: name, status: 'started', runId, done };
  }

  private track(p: Promise<unknown>): void {
    const settled = p.then(
      () => undefined,
      () => undefined,
    );
    this.inFlight.add(settled);
    void settled.finally(() => this.inFlight.delete(settled));
  }

  isRunning(name: string): boolean {
    return this.gate.isRunning(name);
  }

  list(from = new Date()): Promise<BackupJobListing[]> {
    return Promise.all(this.current.map((j) => describeBackupJob(j, this.o.history, this.gate.isRunning(j.name), from)));
  }

  /** Disarms the schedules, cancels runs in progress (between VMs; a live backup at once) and waits for them. */
  async stop(): Promise<void> {
    this.stopped = true;
    for (const c of this.crons) c.stop();
    for (const ac of this.running.values()) ac.abort(new Error('scheduler stopped'));
    await Promise.allSettled([...this.inFlight]);
    if (this.o.closeHistory) await this.o.history.close();
  }
}

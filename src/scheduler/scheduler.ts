/**
 * The SureBackup scheduler (started by `restorelab server`): fires jobs on
 * their cron `schedule` (croner) and right after a backup of a VM they cover
 * (`afterBackup`): the API's backup route calls notifyBackup of the server's
 * scheduler, and `restorelab backup` reaches it over the notice socket
 * (src/scheduler/notice.ts) or, with no server on the state directory, runs
 * the jobs itself (src/scheduler/after-backup.ts).
 *
 * Rules:
 * - Two runs of one job never overlap. A trigger that arrives while the job
 *   runs is recorded as a `skipped-overlap` run, not queued: the run in
 *   progress already verifies the newest points it could see.
 * - Runs missed while the server was down are reported on start: for each
 *   scheduled job, the fire times between its last run (or last reported
 *   miss) and now become one `missed` history entry naming how many and
 *   when. They are not run late: a burst of catch-up runs at start would
 *   load the host exactly when it is recovering. A job that never ran has
 *   nothing to compare with and reports no miss.
 */
import { JobGate } from '../surebackup/gate.js';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { Cron } from 'croner';
import { notFound } from '../errors.js';
import { loadJob } from '../surebackup/job.js';
import { History, type RunTrigger } from '../surebackup/history.js';
import { loadConfig } from '../config/config.js';
import { configuredRun, type RunJobFn, type ScheduledJob } from './run.js';
import { systemClock, type Clock } from './clock.js';

/** Every *.json job in `dir`, validated (a bad file is an error naming it). */
export function loadJobsDir(dir: string): ScheduledJob[] {
  let names: string[];
  try {
    names = readdirSync(dir)
      .filter((n) => n.endsWith('.json'))
      .sort();
  } catch {
    throw notFound(
      'JOBS_DIR_NOT_FOUND',
      `jobs directory ${dir} does not exist`,
      'create it, or point --jobs at the directory holding your job files',
    );
  }
  return names.map((n) => {
    const file = join(dir, n);
    const job = loadJob(file);
    return { name: job.name, file, job };
  });
}

/**
 * The fire times of `schedule` after `since` (epoch ms) that passed before
 * `now`, at most 10 000. Fire times within the last second are the live
 * scheduler's, not misses.
 */
export function missedFireTimes(schedule: string, since: number, now: Date): Date[] {
  const c = new Cron(schedule, { paused: true });
  const missed: Date[] = [];
  try {
    let t = c.nextRun(new Date(since));
    while (t !== null && t.getTime() < now.getTime() - 1000 && missed.length < 10_000) {
      missed.push(t);
      t = c.nextRun(t);
    }
  } finally {
    c.stop();
  }
  return missed;
}

/** The detail of a `missed` history entry. */
export function describeMissed(missed: readonly Date[]): string {
  const first = missed[0]!,
    last = missed.at(-1)!;
  return `${missed.length} scheduled run(s) missed while the server was down: ${first.toISOString()}${missed.length > 1 ? ` … ${last.toISOString()}` : ''}`;
}

/** Next fire times of a job's schedule (croner), or none. */
export function nextFireTimes(s: ScheduledJob, n = 1, from = new Date()): Date[] {
  return nextRunsOf(s.job.schedule, n, from);
}

/** The next `n` fire times of a cron expression (croner), or none without one. */
export function nextRunsOf(schedule: string | undefined, n = 1, from = new Date()): Date[] {
  if (schedule === undefined) return [];
  const c = new Cron(schedule, { paused: true });
  try {
    return c.nextRuns(n, from);
  } finally {
    c.stop();
  }
}

export interface JobListing {
  name: string;
  file: string;
  schedule: string | null;
  afterBackup: boolean;
  next: string[];
}

/** What `schedule list` shows: each job's triggers and its next three fire times. */
export function describeJobs(jobs: ScheduledJob[], from = new Date()): JobListing[] {
  return jobs.map((s) => ({
    name: s.name,
    file: s.file,
    schedule: s.job.schedule ?? null,
    afterBackup: Boolean(s.job.afterBackup),
    next: nextFireTimes(s, 3, from).map((d) => d.toISOString()),
  }));
}

/** A VM a backup just finished, as its definition names it. */
export interface BackedUpVm {
  name: string;
  tags?: readonly string[];
}

/**
 * Whether a backup of `vm` should trigger the job: the runner's own choice
 * of VMs (the VMs it names, else every VM or those carrying its tag), plus
 * the VMs of its application group, whose new points it boots too.
 */
export function covers(s: ScheduledJob, vm: BackedUpVm): boolean {
  if (s.job.applicationGroup.some((g) => g.name === vm.name)) return true;
  const { vms, tag } = s.job.verify;
  if (Array.isArray(vms)) return vms.includes(vm.name);
  return tag === undefined || (vm.tags ?? []).includes(tag);
}

export interface SchedulerOptions {
  jobsDir?: string;
  jobs?: ScheduledJob[];
  /** Default (startScheduler only): the configured catalog, closed by stop(). */
  history?: History;
  /** Default: a real run with the configured repository, driver and limits (src/scheduler/run.ts). */
  run?: RunJobFn;
  log?: { info(line: string): void; warn(line: string): void };
  /** Fire times and "now" (missed runs, listings); default: the system clock. Tests pass one they move by hand. */
  clock?: Clock;
  /** Shared with the API's manual runs (src/surebackup/gate.ts); default: one of its own from the config limits. */
  gate?: JobGate;
}

export type TriggerOutcome =
  { job: string; status: 'started'; runId: string; done: Promise<void> } | { job: string; status: 'skipped-overlap'; runId: string };

export class Scheduler {
  private current: ScheduledJob[];
  /** Cancels the armed fire time of each scheduled job. */
  private readonly disarms: (() => void)[] = [];
  private readonly clock: Clock;
  /** The runs this scheduler started (the gate also knows other starters' runs). */
  private readonly running = new Map<string, AbortController>();
  private readonly gate: JobGate;
  private readonly inFlight = new Set<Promise<void>>();
  private stopped = false;

  private readonly o: SchedulerOptions & { history: History; run: RunJobFn };
  private readonly ownsHistory: boolean;

  constructor(opts: SchedulerOptions & { history: History; ownsHistory?: boolean }) {
    this.current = opts.jobs ?? (opts.jobsDir === undefined ? [] : loadJobsDir(opts.jobsDir));
    this.ownsHistory = opts.ownsHistory ?? false;
    const cfg = opts.run === undefined || opts.gate === undefined ? loadConfig() : undefined;
    const history = opts.history;
    const log = opts.log ?? { info: () => undefined, warn: (l: string) => process.stderr.write(`warning: ${l}\n`) };
    this.gate = opts.gate ?? new JobGate(cfg!.limits.maxConcurrentVms, cfg!.limits.memoryBudgetMiB);
    this.o = { ...opts, history, log, run: opts.run ?? configuredRun(cfg!, history, log, this.gate.limiter) };
    this.clock = opts.clock ?? systemClock;
  }

  get jobs(): readonly ScheduledJob[] {
    return this.current;
  }

  /** Reports missed runs, then arms every schedule. */
  async start(): Promise<this> {
    for (const s of this.current) await this.o.history.recordJob(s.name, s.job, s.file);
    await this.reportMissed();
    this.arm();
    return this;
  }

  /**
   * Sets one timer per scheduled job at its next fire time; each firing
   * triggers the job and sets the next. The next time is counted from the
   * fire time (or now, if the timer ran late), so a timer that fires a
   * little early or late neither repeats nor skips a time.
   */
  private arm(): void {
    for (const s of this.current) {
      if (s.job.schedule === undefined) continue;
      const cron = new Cron(s.job.schedule, { paused: true });
      let cancel = (): void => undefined;
      const next = (after: Date): void => {
        const at = cron.nextRun(after);
        if (at === null) return;
        cancel = this.clock.at(at, () => {
          this.trigger(s.name, 'schedule').catch((err: Error) =>
            this.o.log?.warn(`job ${s.name}: scheduled trigger failed: ${err.message}`),
          );
          const now = this.clock.now();
          next(now > at ? now : at);
        });
      };
      next(this.clock.now());
      this.disarms.push(() => {
        cancel();
        cron.stop();
      });
    }
  }

  /**
   * Re-reads the jobs directory and re-arms the schedules: the API calls this
   * after a job is saved or deleted. Runs in progress go on.
   */
  reload(): void {
    if (this.o.jobsDir === undefined || this.stopped) return;
    this.current = loadJobsDir(this.o.jobsDir);
    for (const d of this.disarms.splice(0)) d();
    for (const s of this.current)
      this.o.history
        .recordJob(s.name, s.job, s.file)
        .catch((err: Error) => this.o.log?.warn(`job ${s.name}: not recorded: ${err.message}`));
    this.arm();
  }

  /** One `missed` entry per scheduled job whose fire times passed while nothing ran them. */
  async reportMissed(): Promise<{ job: string; count: number; first: Date }[]> {
    const now = this.clock.now();
    const out: { job: string; count: number; first: Date }[] = [];
    for (const s of this.jobs) {
      if (s.job.schedule === undefined) continue;
      const lastRun = await this.o.history.lastRunTime(s.name);
      const lastMiss = (await this.o.history.lastRuns({ job: s.name, limit: 50 })).find((r) => r.status === 'missed');
      const refs = [lastRun?.getTime() ?? -Infinity, lastMiss ? Date.parse(lastMiss.startedAt) : -Infinity];
      const ref = Math.max(...refs);
      if (!Number.isFinite(ref)) continue;
      const missed = missedFireTimes(s.job.schedule, ref, now);
      if (missed.length === 0) continue;
      const first = missed[0]!;
      const detail = describeMissed(missed);
      await this.o.history.recordNonRun(s.name, 'schedule', 'missed', detail, first);
      this.o.log?.warn(`job ${s.name}: ${detail}`);
      out.push({ job: s.name, count: missed.length, first });
    }
    return out;
  }

  /**
   * Starts a run of `name` unless one is in progress (then records
   * skipped-overlap). Rejects only when the job is unknown or the catalog
   * cannot record the run.
   */
  async trigger(name: string, trigger: RunTrigger): Promise<TriggerOutcome> {
    const s = this.current.find((j) => j.name === name);
    if (!s)
      throw notFound(
        'JOB_NOT_FOUND',
        `no SureBackup job named ${name}`,
        `known jobs: ${this.current.map((j) => j.name).join(', ') || 'none'}`,
      );
    const ac = new AbortController();
    const release = this.stopped ? undefined : this.gate.claim(name, ac);
    if (!release) {
      const recorded = this.o.history.recordNonRun(
        name,
        trigger,
        'skipped-overlap',
        this.stopped ? 'scheduler stopping' : `a ${trigger} trigger arrived while the previous run was still going`,
      );
      // stop() waits for it too, so the history is not closed under a write.
      this.track(recorded);
      const runId = await recorded;
      this.o.log?.info(`job ${name}: ${trigger} trigger skipped, previous run still going`);
      return { job: name, status: 'skipped-overlap', runId };
    }
    let runId: string;
    try {
      const recorded = this.o.history.startRun(name, trigger);
      this.track(recorded);
      runId = await recorded;
    } catch (err) {
      release();
      throw err;
    }
    this.running.set(name, ac);
    const done = (async () => {
      try {
        const r = await this.o.run(s, { runId, trigger, signal: ac.signal });
        if ((await this.o.history.run(runId))?.status === 'running') {
          if (r) await this.o.history.finishRun(runId, r);
          else await this.o.history.abortRun(runId, 'error', 'the run ended without a result');
        }
      } catch (err) {
        await this.o.history
          .abortRun(runId, ac.signal.aborted ? 'cancelled' : 'error', (err as Error).message ?? String(err))
          .catch((e: Error) => this.o.log?.warn(`job ${name}: run ${runId} could not be closed in the catalog: ${e.message}`));
        this.o.log?.warn(`job ${name}: run ${runId} ended with an error: ${(err as Error).message}`);
      } finally {
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

  /**
   * A backup of these VMs finished (call it only for a backup that
   * succeeded): triggers every afterBackup job covering one of them, once.
   */
  notifyBackup(vms: readonly BackedUpVm[]): Promise<TriggerOutcome[]> {
    const due = this.current.filter((s) => s.job.afterBackup && vms.some((vm) => covers(s, vm)));
    for (const s of due) this.o.log?.info(`job ${s.name}: after-backup trigger for ${vms.map((v) => v.name).join(', ')}`);
    return Promise.all(due.map((s) => this.trigger(s.name, 'after-backup')));
  }

  isRunning(name: string): boolean {
    return this.gate.isRunning(name);
  }

  list(from = this.clock.now()): (JobListing & { running: boolean })[] {
    return describeJobs([...this.current], from).map((j) => ({ ...j, running: this.gate.isRunning(j.name) }));
  }

  /** Disarms the schedules, cancels runs in progress and waits for them to tear down. */
  async stop(): Promise<void> {
    this.stopped = true;
    for (const d of this.disarms.splice(0)) d();
    for (const ac of this.running.values()) ac.abort(new Error('scheduler stopped'));
    await Promise.allSettled([...this.inFlight]);
    if (this.ownsHistory) await this.o.history.close();
  }
}

/** What `restorelab server` calls: without a history, the configured catalog's (closed by stop()). */
export async function startScheduler(o: SchedulerOptions): Promise<Scheduler> {
  if (o.history) return new Scheduler({ ...o, history: o.history }).start();
  const history = await History.open(loadConfig().catalog);
  try {
    return await new Scheduler({ ...o, history, ownsHistory: true }).start();
  } catch (err) {
    await history.close();
    throw err;
  }
}

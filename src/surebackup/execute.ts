/**
 * One run of a job from trigger to report: the history row, the runner with
 * the real tests, the report files, the notifications. `surebackup run` and
 * the scheduler both call this, so a run looks the same however it started.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { RepositoryReader } from '../repo/contract.js';
import { runDir, runReport, writeReports, type RunReport } from '../report/report.js';
import { notifyRun, type NotifyLog } from '../report/notify.js';
import { createTestRunner } from '../verify/tests.js';
import type { ScriptPolicy } from '../verify/script.js';
import type { History, RunTrigger } from './history.js';
import type { JobFile } from './job.js';
import type { Limiter } from './limiter.js';
import { runJob, type Job, type LabBackend } from './runner.js';
import type { RunResult, TestRunner } from '../verify/contract.js';

export interface ExecuteOptions {
  job: Job & Partial<JobFile>;
  jobFile?: string;
  backend: LabBackend;
  repo: () => Promise<RepositoryReader>;
  stateDir: string;
  history: History;
  trigger: RunTrigger;
  /** A run row the caller (the scheduler) already opened. */
  runId?: string;
  signal?: AbortSignal;
  limiter?: Limiter;
  /** Replaces the real tests (unit tests of this module only). */
  runTest?: TestRunner;
  /** Confines script tests: set for jobs the server runs (scheduler, API), not for the CLI. */
  scripts?: ScriptPolicy;
  log: NotifyLog;
  /**
   * Runs the job elsewhere instead of on this host (the lab workers,
   * src/workers/dispatch.ts); history, reports and notifications stay here.
   */
  runElsewhere?: (
    job: Job,
    run: { id: string; dir: string; baseline: (vm: string) => { run: string; path: string } | undefined; signal?: AbortSignal },
  ) => Promise<RunResult>;
}

export async function executeRun(o: ExecuteOptions): Promise<RunReport> {
  const startedAt = new Date();
  await o.history.recordJob(o.job.name, o.job, o.jobFile);
  const runId = o.runId ?? (await o.history.startRun(o.job.name, o.trigger, startedAt));
  const dir = runDir(o.stateDir, runId);
  // Read before the run: each VM's previous passing screenshots, never this run's.
  const passing = await o.history.passingScreenshots(o.job.name);
  const baseline = (vm: string): { run: string; path: string } | undefined =>
    passing.get(vm)?.find((b) => b.run !== runId && existsSync(b.path));
  const runTest =
    o.runTest ?? createTestRunner({ repo: o.repo, screenshotDir: dir, baseline, ...(o.scripts ? { scripts: o.scripts } : {}) });
  let r: RunResult;
  try {
    // The run's directory also keeps each VM's console log (and a failed VM's last screen).
    r = o.runElsewhere
      ? await o.runElsewhere(o.job, { id: runId, dir, baseline, ...(o.signal ? { signal: o.signal } : {}) })
      : await runJob(o.job, o.backend, runTest, { limiter: o.limiter, signal: o.signal, evidenceDir: dir });
  } catch (err) {
    await o.history.abortRun(runId, o.signal?.aborted ? 'cancelled' : 'error', err instanceof Error ? err.message : String(err));
    throw err;
  }
  await o.history.finishRun(runId, r);
  const trends = Object.fromEntries(
    await Promise.all(r.vms.map(async (v) => [v.name, await o.history.recoveryTrend(v.name, { job: o.job.name })] as const)),
  );
  const rep = runReport(runId, o.job.name, r, { startedAt, endedAt: new Date(), htmlPath: join(dir, 'report.html') });
  await attachSignals(rep, o.repo);
  const paths = writeReports(dir, rep, { trends, passRate: await o.history.passRate({ job: o.job.name, lastN: 30 }) });
  await o.history.setReports(runId, paths);
  const n = o.job.notifications;
  if (n) {
    await notifyRun(n, rep, readFileSync(paths.html, 'utf8'), o.log);
  }
  return rep;
}

/**
 * The ransomware signals of each booted point, so that the report and the
 * notification of a run (an afterBackup run above all) say when the backup
 * it verified looked like ransomware: such a point often boots fine.
 * Best effort: a point that cannot be read has none.
 */
async function attachSignals(rep: RunReport, repo: () => Promise<RepositoryReader>): Promise<void> {
  const reader = await repo().catch(() => undefined);
  for (const v of rep.vms) v.signals = (await reader?.getPoint(v.point).catch(() => undefined))?.stats.signals ?? null;
}

/** Exactly the document `surebackup run --json` promises (docs/surebackup.md, "Interface"). */
export function runOutput(rep: RunReport): {
  run: string;
  result: RunReport['result'];
  vms: {
    name: string;
    point: string;
    result: string;
    tests: { name: string; kind: string; result: string; seconds: number; detail: string }[];
    recoverySeconds: number;
    screenshot: string | null;
    console: string | null;
    worker?: string;
  }[];
  report: string;
} {
  return {
    run: rep.run,
    result: rep.result,
    vms: rep.vms.map((v) => ({
      name: v.name,
      point: v.point,
      result: v.result,
      tests: v.tests.map((t) => ({ name: t.name, kind: t.kind, result: t.result, seconds: t.seconds, detail: t.detail })),
      recoverySeconds: v.recoverySeconds,
      screenshot: v.screenshot,
      console: v.console,
      ...(v.worker !== undefined ? { worker: v.worker } : {}),
    })),
    report: rep.report,
  };
}

/** `restorelab surebackup validate|run|history|schedule list`: SureBackup verification jobs (docs/surebackup.md). */
import type { Command } from 'commander';
import { dirname, resolve } from 'node:path';
import { contextFor } from '../context.js';
import { badInput, ExitCode } from '../../errors.js';
import { projectPath } from '../../paths.js';
import { resolveRepository } from '../../repo/open.js';

/** Jobs directory: --jobs, else RESTORELAB_JOBS_DIR, else the project's lab-templates/jobs. */
function jobsDir(opt: string | undefined): string {
  return resolve(opt ?? process.env.RESTORELAB_JOBS_DIR ?? projectPath('lab-templates', 'jobs'));
}

// The human renderings and --limit check, shared with remote mode (src/cli/remote-commands.ts).

export function renderRun(
  job: string,
  r: {
    run: string;
    result: string;
    vms: Array<{ name: string; result: string; recoverySeconds: number; tests: Array<{ name: string; result: string }> }>;
    report: string | null;
  },
): string {
  return [
    `${job}: ${r.result} (run ${r.run})`,
    ...r.vms.map(
      (v) =>
        `  ${v.name.padEnd(16)} ${v.result.padEnd(18)} ${v.recoverySeconds.toFixed(1)} s  ${v.tests.map((t) => `${t.name}:${t.result}`).join(' ')}`,
    ),
    `report: ${r.report}`,
  ].join('\n');
}

export function renderHistory(out: {
  passRate: { rate: number | null; runs: number };
  runs: Array<{
    startedAt: string;
    job: string;
    trigger: string;
    status: string;
    detail: string | null;
    vms: Array<{ name: string; result: string }>;
  }>;
}): string {
  return [
    `pass rate: ${out.passRate.rate === null ? 'no runs' : `${(out.passRate.rate * 100).toFixed(0)}% of ${out.passRate.runs}`}`,
    ...out.runs.map(
      (r) =>
        `${r.startedAt}  ${r.job.padEnd(16)} ${r.trigger.padEnd(12)} ${r.status.padEnd(15)} ${r.detail ?? r.vms.map((v) => `${v.name}:${v.result}`).join(' ')}`,
    ),
  ].join('\n');
}

export function parseLimit(v: string): number {
  const limit = Number(v);
  if (!Number.isInteger(limit) || limit < 1) throw badInput('BAD_LIMIT', `--limit ${v} is not a positive integer`, 'e.g. --limit 50');
  return limit;
}

export function registerSurebackup(program: Command): void {
  const cmd = program.command('surebackup').description('verify restore points by booting them in an isolated lab');
  cmd
    .command('validate <job>')
    .description('check a job file (schema, roles, scripts, schedule) without booting anything')
    .action(async (file: string, _o, c: Command) => {
      const { loadJob } = await import('../../surebackup/job.js');
      const ctx = contextFor(c);
      const job = loadJob(file);
      ctx.out.result({ ok: true, file, job }, () => `${file}: valid job "${job.name}"`);
    });
  cmd
    .command('run <job>')
    .description('run a verification job now; exits 0 only when every VM passed')
    .option('--repo <repo>', 'backup repository, a directory or s3:// URL (default: the configured one)')
    .option('--key-file <file>', 'key file of an encrypted repository (default: RESTORELAB_KEY_FILE, then repositoryKeyFile)')
    .option('--workers', 'run the VMs on the lab workers (restorelab worker) instead of this host; needs RESTORELAB_QUEUE=postgres://…')
    .action(async (file: string, o: { repo?: string; keyFile?: string; workers?: boolean }, c: Command) => {
      const { loadJob } = await import('../../surebackup/job.js');
      const { createLabBackend } = await import('../../surebackup/backend.js');
      const { keyFileOption } = await import('../../config/key-file.js');
      const { executeRun, runOutput } = await import('../../surebackup/execute.js');
      const { History } = await import('../../surebackup/history.js');
      const { Limiter } = await import('../../surebackup/limiter.js');
      const ctx = contextFor(c);
      const job = loadJob(file);
      const cfg = await ctx.config();
      const backend = createLabBackend({
        repo: resolveRepository(o.repo ?? cfg.repository),
        stateDir: cfg.stateDir,
        catalog: cfg.catalog,
        driver: cfg.driver,
        accel: cfg.accel,
        baseDir: dirname(resolve(file)),
        ...(cfg.fuse.group !== undefined ? { fuseGroup: cfg.fuse.group } : {}),
        ...keyFileOption(o.keyFile, cfg),
      });
      const history = await History.open(cfg.catalog);
      const ac = new AbortController();
      // Ctrl-C or a service stop cancels the run; the runner still tears everything down.
      const cancel = (sig: string): void => {
        ctx.out.warn(`${sig}: cancelling, tearing the lab down`);
        ac.abort(new Error(`cancelled by ${sig}`));
      };
      const onInt = (): void => cancel('SIGINT');
      const onTerm = (): void => cancel('SIGTERM');
      process.once('SIGINT', onInt);
      process.once('SIGTERM', onTerm);
      const queue = o.workers || job.runOn === 'workers' ? await openQueue(cfg.catalog) : undefined;
      try {
        const rep = await executeRun({
          ...(queue
            ? {
                runElsewhere: async (j, run) => {
                  const { dispatchJob } = await import('../../workers/dispatch.js');
                  return dispatchJob(j, {
                    queue,
                    backend,
                    repo: o.repo ?? cfg.repository,
                    baseDir: dirname(resolve(file)),
                    run: run.id,
                    runDirectory: run.dir,
                    baseline: run.baseline,
                    ...(run.signal ? { signal: run.signal } : {}),
                    log: (l) => ctx.out.info(l),
                  });
                },
              }
            : {}),
          job,
          jobFile: resolve(file),
          backend,
          repo: () => backend.reader(),
          stateDir: cfg.stateDir,
          history,
          trigger: 'manual',
          signal: ac.signal,
          limiter: new Limiter(cfg.limits.maxConcurrentVms, cfg.limits.memoryBudgetMiB),
          log: { warn: (l) => ctx.out.warn(l) },
        });
        ctx.out.result(runOutput(rep), () => renderRun(job.name, runOutput(rep)));
        if (rep.result !== 'success') process.exitCode = ExitCode.verifyFailed;
      } finally {
        process.off('SIGINT', onInt);
        process.off('SIGTERM', onTerm);
        await history.close();
        await backend.close();
        await queue?.close();
      }
    });
  cmd
    .command('history')
    .description('past runs (newest first), pass rate and recovery-time trend per VM')
    .option('--job <name>', 'only this job')
    .option('--limit <n>', 'how many runs', '20')
    .action(async (o: { job?: string; limit: string }, c: Command) => {
      const { History } = await import('../../surebackup/history.js');
      const ctx = contextFor(c);
      const limit = parseLimit(o.limit);
      const history = await History.open((await ctx.config()).catalog);
      try {
        const rows = await history.lastRuns({ job: o.job, limit });
        const fulls = await Promise.all(rows.map((r) => history.run(r.id)));
        const runs = rows.map((r, i) => {
          const full = fulls[i]!;
          return {
            id: r.id,
            job: r.job,
            trigger: r.trigger,
            status: r.status,
            startedAt: r.startedAt,
            endedAt: r.endedAt,
            dueAt: r.dueAt,
            detail: r.detail,
            report: r.reportHtml,
            vms: full.vms.map((v) => ({
              name: v.name,
              point: v.point,
              result: v.result,
              recoverySeconds: v.recoverySeconds,
              screenshot: v.screenshot,
            })),
          };
        });
        const vms = [...new Set(runs.flatMap((r) => r.vms.map((v) => v.name)))].sort();
        const out = {
          job: o.job ?? null,
          passRate: await history.passRate({ job: o.job }),
          runs,
          recoveryTrend: Object.fromEntries(
            await Promise.all(vms.map(async (vm) => [vm, await history.recoveryTrend(vm, { job: o.job })] as const)),
          ),
        };
        ctx.out.result(out, () => renderHistory(out));
      } finally {
        await history.close();
      }
    });
  const sched = cmd.command('schedule').description('scheduled SureBackup jobs');
  sched
    .command('list')
    .description('jobs in the jobs directory with their schedules and next fire times')
    .option('--jobs <dir>', 'jobs directory (default: RESTORELAB_JOBS_DIR, else lab-templates/jobs)')
    .action(async (o: { jobs?: string }, c: Command) => {
      const { describeJobs, loadJobsDir } = await import('../../scheduler/scheduler.js');
      const ctx = contextFor(c);
      const dir = jobsDir(o.jobs);
      const jobs = describeJobs(loadJobsDir(dir));
      ctx.out.result(
        { jobsDir: dir, jobs },
        () =>
          jobs
            .map(
              (j) =>
                `${j.name.padEnd(20)} ${(j.schedule ?? '-').padEnd(16)} ${j.afterBackup ? 'after-backup ' : ''}next: ${j.next[0] ?? 'never'}`,
            )
            .join('\n') || `no jobs in ${dir}`,
      );
    });
}

async function openQueue(catalog: string): Promise<import('../../workers/queue.js').LabQueue> {
  const { LabQueue } = await import('../../workers/queue.js');
  const { workersUrl } = await import('../../workers/url.js');
  const { queueTuning } = await import('../../workers/url.js');
  return LabQueue.open({ url: workersUrl(catalog), ...queueTuning() });
}

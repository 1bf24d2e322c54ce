/**
 * SureBackup jobs (docs/surebackup.md) as files in ctx.jobsDir, one
 * `<name>.json` each, the same files the scheduler and `surebackup run`
 * read. A job is checked exactly as loadJob checks a file (schema, cron
 * expression, script paths) before it replaces the old one, and is written
 * crash-safely: a reader sees the old file or the new one, never half.
 * Running a job is a long operation over executeRun, the call the CLI and
 * the scheduler make, so a run looks the same however it started.
 * An admin is not root on the host: a job's scripts must be executables
 * inside api.scriptsDir (403 SCRIPT_NOT_ALLOWED otherwise), and the server
 * runs them as api.scriptUser (src/verify/script.ts).
 */
import { existsSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { RegisterRoutes } from './register.js';
import type { ApiContext } from '../context.js';
import { apiError } from '../errors.js';
import { principal } from '../route-table.js';
import { accepted } from '../sse.js';
import { nameParam } from './params.js';
import { checkJobText, loadJob, writeJobFile, type JobFile } from '../../surebackup/job.js';
import type { Job } from '../../surebackup/runner.js';
import { History } from '../../surebackup/history.js';
import { runConfiguredJob } from '../../scheduler/run.js';
import type { Limiter } from '../../surebackup/limiter.js';
import { nextFireTimes } from '../../scheduler/scheduler.js';
import { allowedScript } from '../../verify/script.js';
import type { TestSpec } from '../../verify/contract.js';
import { RestorelabError } from '../../errors.js';

export interface JobListing {
  name: string;
  file: string;
  definition: Job & JobFile;
  schedule: string | null;
  afterBackup: boolean;
  /** The next three fire times of the schedule. */
  next: string[];
  lastRun: { id: string; status: string; trigger: string; startedAt: string; endedAt: string | null } | null;
  running: boolean;
}

export const jobRoutes: RegisterRoutes = (t, ctx) => {
  const history = ctx.runs;
  // Shared with the scheduler: one run of a job at a time, one VM limiter for all.
  const gate = ctx.jobGate;

  const fileOf = (name: string): string => join(ctx.jobsDir, `${name}.json`);

  const listing = async (file: string, job: Job & JobFile): Promise<JobListing> => {
    const last = (await history.lastRuns({ job: job.name, limit: 1 }))[0];
    return {
      name: job.name,
      file,
      definition: job,
      schedule: job.schedule ?? null,
      afterBackup: Boolean(job.afterBackup),
      next: nextFireTimes({ name: job.name, file, job }, 3).map((d) => d.toISOString()),
      lastRun: last ? { id: last.id, status: last.status, trigger: last.trigger, startedAt: last.startedAt, endedAt: last.endedAt } : null,
      running: gate.isRunning(job.name),
    };
  };

  /** The job file `name`, loaded and checked; 404 when there is none. */
  const load = (name: string): { file: string; job: Job & JobFile } => {
    const file = fileOf(name);
    if (!existsSync(file))
      throw apiError('NOT_FOUND', `no job ${name} in ${ctx.jobsDir}`, [{ path: 'params/name', message: 'GET /api/v1/jobs lists them' }]);
    return { file, job: loadJob(file) };
  };

  t.add({
    method: 'get',
    path: '/jobs',
    role: 'viewer',
    tag: 'jobs',
    summary: 'SureBackup jobs with their schedule and last run (an invalid job file is listed under invalid)',
    handler: async () => {
      const jobs: JobListing[] = [];
      const invalid: { file: string; error: string }[] = [];
      const names = existsSync(ctx.jobsDir)
        ? readdirSync(ctx.jobsDir)
            .filter((n) => n.endsWith('.json'))
            .sort()
        : [];
      for (const n of names) {
        const file = join(ctx.jobsDir, n);
        let job: Job & JobFile;
        try {
          job = loadJob(file);
        } catch (err) {
          invalid.push({ file, error: (err as Error).message });
          continue;
        }
        jobs.push(await listing(file, job));
      }
      return { jobs, ...(invalid.length ? { invalid } : {}) };
    },
  });

  t.add({
    method: 'get',
    path: '/jobs/:name',
    role: 'viewer',
    tag: 'jobs',
    summary: 'one job',
    handler: async (req) => {
      const { file, job } = load(nameParam(req, 'name'));
      return await listing(file, job);
    },
  });

  t.add({
    method: 'put',
    path: '/jobs/:name',
    role: 'admin',
    tag: 'jobs',
    body: 'job.schema.json',
    summary: 'creates or replaces a job (checked like a job file: schema, schedule, scripts relative to the jobs directory)',
    success: { status: 200, description: 'the job as listed (201 when it is new)' },
    handler: async (req, res) => {
      const name = nameParam(req, 'name');
      const body = req.body as JobFile;
      if (body.name !== name) {
        throw apiError('VALIDATION_FAILED', `body/name: "${body.name}" differs from the name in the path, "${name}"`, [
          { path: 'body/name', message: `must be "${name}"` },
        ]);
      }
      const text = JSON.stringify(body, null, 2) + '\n';
      const job = checkJobText(ctx.jobsDir, name, text);
      checkScripts(job, ctx.config.api.scriptsDir);
      const created = !existsSync(fileOf(name));
      await writeJobFile(ctx.jobsDir, name, text);
      ctx.log.info({ by: principal(res).name, job: name, created }, 'job saved');
      ctx.scheduler?.reload();
      res.status(created ? 201 : 200).json(await listing(fileOf(name), job));
    },
  });

  t.add({
    method: 'delete',
    path: '/jobs/:name',
    role: 'admin',
    tag: 'jobs',
    summary: 'deletes a job file (its run history stays)',
    handler: (req, res) => {
      const name = nameParam(req, 'name');
      if (!existsSync(fileOf(name))) throw apiError('NOT_FOUND', `no job ${name} in ${ctx.jobsDir}`);
      rmSync(fileOf(name));
      ctx.log.info({ by: principal(res).name, job: name }, 'job deleted');
      ctx.scheduler?.reload();
      return { name, deleted: true };
    },
  });

  t.add({
    method: 'post',
    path: '/jobs/:name/run',
    role: 'operator',
    tag: 'jobs',
    summary: 'runs a job now; cancel with POST /operations/:id/cancel (the lab is still torn down)',
    success: {
      status: 202,
      description: 'the operation; its first progress event names the run, its result is the run summary, its resource /api/v1/runs/<id>',
    },
    handler: async (req, res) => {
      const { file, job } = load(nameParam(req, 'name'));
      const claim = new AbortController();
      const release = gate.claim(job.name, claim);
      if (!release)
        throw apiError('CONFLICT', `job ${job.name} is already running`, [
          { path: 'params/name', message: 'GET /api/v1/runs?job=' + job.name + ' shows it' },
        ]);
      let runId: string;
      try {
        runId = await history.startRun(job.name, 'manual');
      } catch (err) {
        release();
        throw err;
      }
      const op = ctx.operations.start('job-run', principal(res).name, async (o) => {
        try {
          return await runJob(ctx, {
            job,
            file,
            runId,
            history,
            limiter: gate.limiter,
            signal: o.signal,
            progress: (m) => o.progress(null, m, { run: runId }),
          });
        } finally {
          release();
        }
      });
      accepted(res, op);
    },
  });
};

/** Every script test of a job, with where it is (the paths are absolute: loadJob resolved them). */
function scriptTests(job: Job & JobFile): Array<{ path: string; where: string }> {
  const out: Array<{ path: string; where: string }> = [];
  const add = (tests: TestSpec[] | undefined, where: string): void => {
    for (const t of tests ?? []) if (t.kind === 'script') out.push({ path: t.path, where });
  };
  add(job.verify.tests, 'verify');
  for (const [vm, o] of Object.entries(job.verify.overrides ?? {})) add(o.tests, `VM ${vm}`);
  for (const g of job.applicationGroup) add(g.tests, `VM ${g.name}`);
  return out;
}

/** 403 SCRIPT_NOT_ALLOWED unless every script of the job is inside the scripts directory (checked again at every run). */
function checkScripts(job: Job & JobFile, scriptsDir: string): void {
  for (const s of scriptTests(job)) {
    try {
      allowedScript(s.path, scriptsDir, `job ${job.name}, ${s.where}`);
    } catch (err) {
      if (!(err instanceof RestorelabError)) throw err;
      throw apiError('SCRIPT_NOT_ALLOWED', err.message, [{ path: 'body', message: `script ${s.path} of ${s.where}` }], err.hint);
    }
  }
}

interface RunInput {
  job: Job & JobFile;
  file: string;
  runId: string;
  history: History;
  limiter: Limiter;
  signal: AbortSignal;
  progress(message: string): void;
}

async function runJob(ctx: ApiContext, r: RunInput): Promise<{ result: unknown; resource: string }> {
  r.progress(`run ${r.runId} of job ${r.job.name} started`);
  try {
    const rep = await runConfiguredJob(ctx.config, {
      job: r.job,
      file: r.file,
      history: r.history,
      trigger: 'manual',
      runId: r.runId,
      signal: r.signal,
      limiter: r.limiter,
      log: { warn: (l) => ctx.log.warn({ job: r.job.name, run: r.runId }, l) },
    });
    for (const v of rep.vms) if (v.result !== 'dependency-failed') ctx.metrics.recoverySeconds.observe(v.recoverySeconds);
    return {
      result: {
        run: rep.run,
        job: r.job.name,
        result: rep.result,
        report: `/api/v1/runs/${rep.run}/report`,
        vms: rep.vms.map((v) => ({ name: v.name, point: v.point, result: v.result, recoverySeconds: v.recoverySeconds })),
      },
      resource: `/api/v1/runs/${rep.run}`,
    };
  } catch (err) {
    // executeRun closes the row when the runner fails; a failure before that must not leave it "running".
    if ((await r.history.run(r.runId))?.status === 'running')
      await r.history.abortRun(r.runId, r.signal.aborted ? 'cancelled' : 'error', (err as Error).message ?? String(err));
    throw err;
  }
}

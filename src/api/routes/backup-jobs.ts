/**
 * Backup jobs (docs/backup.md, "Backup jobs") as the server sees them: the
 * files of ctx.backupJobsDir, the same ones its scheduler arms, and their run
 * history in the catalog. A run started here goes through the server's
 * backup job scheduler (ctx.backupJobs), so it never overlaps a scheduled run
 * of the same job: a job already running is 409 CONFLICT. Job files are
 * the host admin's (written on the host, not over the API): they name image
 * files and sockets, and the scripts of the runs the server makes must lie
 * in api.scriptsDir.
 */
import type { RegisterRoutes } from './register.js';
import { apiError } from '../errors.js';
import { principal, queryOf } from '../route-table.js';
import { accepted } from '../sse.js';
import { nameParam } from './params.js';
import { scanBackupJobsDir, type BackupJob } from '../../backup/jobs/job.js';
import { describeBackupJob } from '../../backup/jobs/scheduler.js';

export const backupJobRoutes: RegisterRoutes = (t, ctx) => {
  // Migrated when the server's context was made (createApiContext), so this is only the handle.
  const history = ctx.backupJobHistory;
  const listing = (j: BackupJob) => describeBackupJob(j, history, ctx.backupJobs.isRunning(j.name));

  /** The job `name` as its file says now; 404 when no file of the directory holds it. */
  const load = (name: string): BackupJob => {
    const { jobs, invalid } = scanBackupJobsDir(ctx.backupJobsDir);
    const job = jobs.find((j) => j.name === name);
    if (!job) {
      throw apiError('NOT_FOUND', `no backup job ${name} in ${ctx.backupJobsDir}`, [
        {
          path: 'params/name',
          message: `GET /api/v1/backup-jobs lists them${invalid.length ? ` (${invalid.length} file(s) there do not load)` : ''}`,
        },
      ]);
    }
    return job;
  };

  t.add({
    method: 'get',
    path: '/backup-jobs',
    role: 'viewer',
    tag: 'backup-jobs',
    summary:
      'backup jobs with their VMs, schedule, retention, last run and next fire times (a file that does not load is listed under invalid)',
    handler: async () => {
      const { jobs, invalid } = scanBackupJobsDir(ctx.backupJobsDir);
      return { backupJobsDir: ctx.backupJobsDir, jobs: await Promise.all(jobs.map(listing)), ...(invalid.length ? { invalid } : {}) };
    },
  });

  t.add({
    method: 'get',
    path: '/backup-jobs/:name',
    role: 'viewer',
    tag: 'backup-jobs',
    summary: 'one backup job',
    handler: (req) => listing(load(nameParam(req, 'name'))),
  });

  t.add({
    method: 'post',
    path: '/backup-jobs/:name/run',
    role: 'operator',
    tag: 'backup-jobs',
    summary: 'runs a backup job now; cancel with POST /operations/:id/cancel (it stops after the VM being backed up)',
    success: {
      status: 202,
      description:
        "the operation; its progress names the run and each VM's disk, its result is the run, its resource /api/v1/backup-job-runs/<id>",
    },
    handler: (req, res) => {
      const job = load(nameParam(req, 'name'));
      // Checked here for a 409 before any operation exists; the operation's work triggers in this same tick, so nothing slips in between.
      if (ctx.backupJobs.isRunning(job.name)) {
        throw apiError('CONFLICT', `backup job ${job.name} is already running`, [
          { path: 'params/name', message: `GET /api/v1/backup-job-runs?job=${job.name} shows it` },
        ]);
      }
      const op = ctx.operations.start('backup-job-run', principal(res).name, async (o) => {
        const started = await ctx.backupJobs.trigger(job, 'manual', {
          signal: o.signal,
          onProgress: (p) =>
            o.progress(
              (p.index + (p.total > 0 ? p.done / p.total : 1)) / p.of,
              `VM ${p.vm} (${p.index + 1} of ${p.of}) disk ${p.disk}: ${p.done} of ${p.total} bytes`,
            ),
        });
        if (started.status === 'skipped-overlap') {
          throw apiError('CONFLICT', `backup job ${job.name} is already running`, [
            { path: 'params/name', message: `GET /api/v1/backup-job-runs?job=${job.name} shows it` },
          ]);
        }
        o.progress(0, `run ${started.runId} of backup job ${job.name} started`, { run: started.runId });
        const r = await started.done;
        if (!r)
          throw apiError(
            'DOMAIN_ERROR',
            `backup job ${job.name} run ${started.runId} failed: ${(await history.run(started.runId))?.detail ?? 'no detail'}`,
          );
        return { result: r, resource: `/api/v1/backup-job-runs/${r.run}` };
      });
      accepted(res, op);
    },
  });

  t.add({
    method: 'get',
    path: '/backup-job-runs',
    role: 'viewer',
    tag: 'backup-jobs',
    query: 'api-run-list-query.schema.json',
    summary: 'backup job runs, newest first, each with its VMs (skipped and missed triggers included)',
    handler: async (_req, res) => {
      const q = queryOf<{ job?: string; limit: number }>(res);
      const runs = await history.lastRuns({ ...(q.job ? { job: q.job } : {}), limit: q.limit });
      return { runs: await Promise.all(runs.map((r) => history.run(r.id))) };
    },
  });

  t.add({
    method: 'get',
    path: '/backup-job-runs/:id',
    role: 'viewer',
    tag: 'backup-jobs',
    summary: 'one backup job run with its VMs',
    handler: async (req) => {
      const id = nameParam(req, 'id');
      const run = await history.run(id);
      if (!run)
        throw apiError('NOT_FOUND', `no backup job run ${id}`, [{ path: 'params/id', message: 'GET /api/v1/backup-job-runs lists them' }]);
      return run;
    },
  });
};

/** `restorelab backup-job run|list|history`: scheduled backups with retention (docs/backup.md, "Backup jobs"). */
import type { Command } from 'commander';
import { resolve } from 'node:path';
import { contextFor } from '../context.js';
import { ExitCode, RestorelabError } from '../../errors.js';
import { projectPath } from '../../paths.js';
import { formatBytes } from '../../format/output.js';
import { parseLimit } from './surebackup.js';
import type { BackupJobRunResult } from '../../backup/jobs/runner.js';
import type { BackupJobListing } from '../../backup/jobs/scheduler.js';
import type { BackupRunRow, BackupVmResult } from '../../backup/jobs/history.js';

const DIR_HELP =
  'backup jobs directory (default: backupJobsDir of the config or RESTORELAB_BACKUP_JOBS_DIR, else lab-templates/backup-jobs)';

// The human renderings, shared with remote mode.

export function renderVm(v: BackupVmResult): string {
  const what =
    v.status === 'success'
      ? `point ${v.point} ${v.consistency}, read ${formatBytes(v.bytesRead)}, new ${formatBytes(v.bytesNew)}, ${v.seconds} s` +
        (v.changedBlockTracking ? `, CBT ${v.changedBlockTracking.used ? 'used' : 'not used'} (${v.changedBlockTracking.reason})` : '') +
        (v.pruned.length ? `, pruned ${v.pruned.length}: ${v.pruned.join(' ')}` : '') +
        (v.pruneError ? `; retention failed: ${v.pruneError}` : '')
      : (v.error ?? '');
  return `  ${v.vm.padEnd(16)} ${v.status.padEnd(9)} ${what}`;
}

export function renderBackupRun(r: Pick<BackupJobRunResult, 'job' | 'run' | 'status' | 'detail' | 'vms' | 'surebackup'>): string {
  return [
    `${r.job}: ${r.status} (run ${r.run})${r.detail ? `: ${r.detail}` : ''}`,
    ...r.vms.map(renderVm),
    ...r.surebackup.map(
      (s) => `  surebackup ${s.job}: ${s.run ? `run ${s.run} ${s.status}` : s.status}${s.detail ? ` (${s.detail})` : ''}`,
    ),
  ].join('\n');
}

export function renderBackupJobs(dir: string, jobs: BackupJobListing[], invalid: { file: string; error: string }[]): string {
  const lines = jobs.map(
    (j) =>
      `${j.name.padEnd(20)} ${(j.schedule ?? '-').padEnd(14)} ${j.vms
        .map((v) => v.name)
        .join(',')
        .padEnd(20)} ` +
      `last: ${j.lastRun ? `${j.lastRun.status} ${j.lastRun.startedAt}` : 'never'}  next: ${j.next[0] ?? 'never'}${j.running ? '  (running)' : ''}`,
  );
  for (const x of invalid) lines.push(`invalid: ${x.file}: ${x.error}`);
  return lines.join('\n') || `no backup jobs in ${dir}`;
}

export function renderBackupHistory(runs: (BackupRunRow & { vms: BackupVmResult[] })[]): string {
  return (
    runs
      .map((r) =>
        [
          `${r.startedAt}  ${r.job.padEnd(16)} ${r.trigger.padEnd(9)} ${r.status.padEnd(15)} ${r.detail ?? ''}`,
          ...r.vms.map(renderVm),
        ].join('\n'),
      )
      .join('\n') || 'no runs'
  );
}

export function registerBackupJob(program: Command): void {
  const cmd = program.command('backup-job').description('backup jobs: VMs, sources, schedule, retention, linked SureBackup jobs');
  cmd
    .command('run <job>')
    .description('run a backup job now (NAME in the backup jobs directory, or a job FILE); exits 0 when every VM was backed up')
    .option('--backup-jobs <dir>', DIR_HELP)
    .option(
      '--jobs <dir>',
      'SureBackup jobs the job links to, when no server runs on this state directory (default: RESTORELAB_JOBS_DIR or lab-templates/jobs)',
    )
    .option('--no-surebackup', 'do not fire the linked SureBackup jobs')
    .action(async (name: string, o: { backupJobs?: string; jobs?: string; surebackup: boolean }, c: Command) => {
      const { backupJobsDir, findBackupJob } = await import('../../backup/jobs/job.js');
      const { BackupJobHistory } = await import('../../backup/jobs/history.js');
      const { configuredBackupRun } = await import('../../backup/jobs/run.js');
      const { fireFromCli } = await import('../../backup/jobs/surebackup-link.js');
      const { claimRunLock } = await import('../../backup/jobs/run-lock.js');
      const ctx = contextFor(c);
      const cfg = await ctx.config();
      const job = findBackupJob(name, backupJobsDir(o.backupJobs, cfg));
      const log = { info: (l: string) => ctx.out.info(l), warn: (l: string) => ctx.out.warn(l) };
      const history = await BackupJobHistory.open(cfg.catalog);
      // The server (its schedule, its API) may be running this job right now: never two runs at once.
      const lock = claimRunLock(cfg.stateDir, job.name);
      if ('heldBy' in lock) {
        await history.recordNonRun(
          job.name,
          'manual',
          'skipped-overlap',
          `a manual run was asked for while process ${lock.heldBy} was still running the job`,
        );
        await history.close();
        throw new RestorelabError('BACKUP_JOB_BUSY', `backup job ${job.name} is being run by process ${lock.heldBy}`, {
          hint: `wait for it to end: restorelab backup-job history ${job.name}`,
        });
      }
      const ac = new AbortController();
      // Ctrl-C stops the run after the VM being backed up (a live backup at once); what is done stays recorded.
      const cancel = (sig: string): void => {
        ctx.out.warn(`${sig}: cancelling backup job ${job.name}`);
        ac.abort(new Error(`cancelled by ${sig}`));
      };
      const onInt = (): void => cancel('SIGINT');
      const onTerm = (): void => cancel('SIGTERM');
      process.once('SIGINT', onInt);
      process.once('SIGTERM', onTerm);
      let bar: ReturnType<typeof ctx.out.progress> | undefined;
      let current = '';
      let runId: string;
      try {
        runId = await history.startRun(job.name, 'manual');
      } catch (err) {
        process.off('SIGINT', onInt);
        process.off('SIGTERM', onTerm);
        lock.release();
        await history.close();
        throw err;
      }
      try {
        const run = configuredBackupRun(cfg, {
          history,
          log,
          confineScripts: false,
          ...(o.surebackup
            ? {
                fireSureBackup: fireFromCli(
                  cfg,
                  resolve(o.jobs ?? process.env.RESTORELAB_JOBS_DIR ?? projectPath('lab-templates', 'jobs')),
                  log,
                  ac.signal,
                ),
              }
            : {}),
        });
        const r = await run(job, {
          runId,
          trigger: 'manual',
          signal: ac.signal,
          onProgress: (p) => {
            const key = `${p.vm}/${p.disk}`;
            if (key !== current) {
              bar?.finish();
              current = key;
              bar = ctx.out.progress(`backup ${key} (VM ${p.index + 1} of ${p.of})`, p.total);
            }
            bar?.update(p.done, `new ${formatBytes(p.bytesNew)}`);
          },
        }).catch(async (err: unknown) => {
          await history.finishRun(runId, ac.signal.aborted ? 'cancelled' : 'error', (err as Error).message ?? String(err));
          throw err;
        });
        bar?.finish();
        ctx.out.result(r, () => renderBackupRun(r));
        if (r.status !== 'success' && r.status !== 'warning') process.exitCode = ExitCode.failure;
        // The points are recorded; a linked verification this process waited for that did not pass is its own exit code, as for `backup`.
        else if (r.surebackup.some((s) => !['running', 'success', 'warning'].includes(s.status))) process.exitCode = ExitCode.verifyFailed;
      } finally {
        process.off('SIGINT', onInt);
        process.off('SIGTERM', onTerm);
        lock.release();
        await history.close();
      }
    });
  cmd
    .command('list')
    .description('backup jobs with their VMs, schedule, last run and next fire times (a file that does not load is listed as invalid)')
    .option('--backup-jobs <dir>', DIR_HELP)
    .action(async (o: { backupJobs?: string }, c: Command) => {
      const { backupJobsDir, scanBackupJobsDir } = await import('../../backup/jobs/job.js');
      const { BackupJobHistory } = await import('../../backup/jobs/history.js');
      const { describeBackupJob } = await import('../../backup/jobs/scheduler.js');
      const ctx = contextFor(c);
      const cfg = await ctx.config();
      const dir = backupJobsDir(o.backupJobs, cfg);
      const { jobs, invalid } = scanBackupJobsDir(dir);
      const history = await BackupJobHistory.open(cfg.catalog);
      try {
        // Whether a server runs one now is its API's to say (GET /backup-jobs); this process runs none.
        const listed = await Promise.all(jobs.map((j) => describeBackupJob(j, history, false)));
        ctx.out.result({ backupJobsDir: dir, jobs: listed, invalid }, () => renderBackupJobs(dir, listed, invalid));
        if (invalid.length > 0) process.exitCode = ExitCode.badInput;
      } finally {
        await history.close();
      }
    });
  cmd
    .command('history [job]')
    .description("past runs, newest first, with each VM's point, consistency, CBT, bytes, time and pruned points")
    .option('--limit <n>', 'how many runs', '20')
    .action(async (job: string | undefined, o: { limit: string }, c: Command) => {
      const { BackupJobHistory } = await import('../../backup/jobs/history.js');
      const ctx = contextFor(c);
      const limit = parseLimit(o.limit);
      const history = await BackupJobHistory.open((await ctx.config()).catalog);
      try {
        const runs = await Promise.all(
          (await history.lastRuns({ ...(job !== undefined ? { job } : {}), limit })).map(async (r) => (await history.run(r.id))!),
        );
        ctx.out.result({ job: job ?? null, runs }, () => renderBackupHistory(runs));
      } finally {
        await history.close();
      }
    });
}

/**
 * `restorelab server`: the long-running daemon. It serves the REST API and
 * the dashboard (docs/api.md), every publication
 * recorded in the state directory over NFS (those not held by a live
 * `publish` process, which serves its own), and runs scheduled SureBackup
 * jobs. File handles survive a restart of the server, so VMs booted from its
 * NFS export keep running across one (docs/nfs.md).
 */
import type { Command } from 'commander';
import { contextFor } from '../context.js';
import { badInput } from '../../errors.js';
import type { PublicationDatastore } from '../../datastore/publication-datastore.js';
import type { Scheduler } from '../../scheduler/scheduler.js';
import type { BackupJobScheduler } from '../../backup/jobs/scheduler.js';
import type { Config } from '../../config/config.js';
import { projectPath } from '../../paths.js';
import { resolve } from 'node:path';
import { keyFileOption } from '../../config/key-file.js';

interface ServerFlags {
  nfs: boolean;
  nfsPort?: string;
  mountPort?: string;
  portmapPort?: string;
  allow: string[];
  nfsListen: string[];
  rootSquash?: boolean;
  readOnly?: boolean;
  jobs?: string;
  backupJobs?: string;
  schedule: boolean;
  api: boolean;
  listen?: string;
  port?: string;
}

export function parsePort(flag: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0 || n > 65535)
    throw badInput('BAD_PORT', `${flag} must be a port number 0-65535, got "${v}"`, `e.g. ${flag} 2049 (0 picks a free port)`);
  return n;
}

/**
 * The NFS export flags `server` and `publish --nfs` share (ports, who may
 * mount, where to listen, root squash); both read them with `parsePort` and
 * fall back to the config's `nfs` section.
 */
export function withNfsExportOptions(cmd: Command, nfsPortHelp = 'NFS port (default from config, 2049)'): Command {
  return cmd
    .option('--nfs-port <n>', nfsPortHelp)
    .option('--mount-port <n>', 'MOUNT port (default from config, 20048)')
    .option('--portmap-port <n>', 'portmapper port, 0 for none (default from config, 111)')
    .option(
      '--allow <cidr>',
      'client address or CIDR allowed to mount (repeatable; default from config)',
      (v: string, acc: string[]) => [...acc, v],
      [] as string[],
    )
    .option(
      '--nfs-listen <addr>',
      'address NFS listens on (repeatable; default from config, 127.0.0.1: this host only; 0.0.0.0 or the address ESXi reaches for other hosts)',
      (v: string, acc: string[]) => [...acc, v],
      [] as string[],
    )
    .option('--no-root-squash', 'let NFS clients act as uid/gid 0 (ESXi mounts as root); default from config: squash to 65534');
}

export function registerServer(program: Command): void {
  const server = program
    .command('server')
    .description('serve every publication over NFS and run scheduled verification jobs, until SIGINT/SIGTERM')
    .option('--no-nfs', 'do not serve NFS');
  withNfsExportOptions(server)
    .option('--read-only', 'refuse every write over NFS')
    .option('--jobs <dir>', 'directory of SureBackup job files to schedule (default: RESTORELAB_JOBS_DIR or lab-templates/jobs)')
    .option(
      '--backup-jobs <dir>',
      'directory of backup job files to schedule (default: backupJobsDir of the config or RESTORELAB_BACKUP_JOBS_DIR, else lab-templates/backup-jobs)',
    )
    .option('--no-schedule', 'do not run scheduled jobs (SureBackup and backup jobs)')
    .option('--no-api', 'do not serve the REST API and dashboard')
    .option('--listen <addr>', 'API listen address (default from config, 127.0.0.1)')
    .option('--port <n>', 'API port (default from config, 8470; 0 picks a free port)')
    .option('--json', 'print one JSON object once serving')
    .action(async (o: ServerFlags, c: Command) => {
      const { JobGate } = await import('../../surebackup/gate.js');
      const ctx = contextFor(c);
      const cfg = await ctx.config();
      const closers: Array<() => Promise<void>> = [];
      const result: Record<string, unknown> = { pid: process.pid };
      let datastore: PublicationDatastore | undefined;
      let scheduler: Scheduler | undefined;
      let backupJobs: BackupJobScheduler | undefined;
      const { backupJobsDir } = await import('../../backup/jobs/job.js');
      const backupDir = backupJobsDir(o.backupJobs, cfg);
      // Scheduled and API-started runs share one gate: no overlap of a job, one VM limiter.
      const jobGate = new JobGate(cfg.limits.maxConcurrentVms, cfg.limits.memoryBudgetMiB);
      // Reconcile first, and never fatally: one stale record must not keep
      // the API, the other publications and the schedules down.
      try {
        const { reconcile } = await import('../../reconcile/reconcile.js');
        const rec = await reconcile({
          stateDir: cfg.stateDir,
          ...keyFileOption(undefined, cfg),
          log: (l) => ctx.out.warn(`reconcile: ${l}`),
        });
        for (const s of rec.stale.filter((x) => x.outcome?.action !== 'removed'))
          ctx.out.warn(`stale: ${s.id}: ${s.reason} (restorelab cleanup)`);
        result.reconcile = {
          resumable: rec.resumable.map((p) => p.id),
          stale: rec.stale.map((x) => ({ id: x.id, reason: x.reason, action: x.outcome?.action ?? 'kept' })),
        };
      } catch (err) {
        ctx.out.warn(`reconcile at start failed, serving anyway: ${(err as Error).message}`);
      }
      try {
        if (o.nfs) {
          const { PublicationDatastore } = await import('../../datastore/publication-datastore.js');
          const { restorePublications } = await import('../../publish/publish.js');
          const { processAlive: pidAlive } = await import('../../host/process.js');
          const { startNfsExport } = await import('../../nfs/export.js');
          datastore = new PublicationDatastore();
          const pubs = await restorePublications(cfg.stateDir, datastore, {
            // Publications of an encrypted configured repository reopen with its key file.
            ...keyFileOption(undefined, cfg),
            onWarning: (m) => ctx.out.warn(m),
            // A publication whose `publish` process is alive is served by that process.
            filter: (rec) => !(rec.pid !== undefined && rec.pid !== process.pid && pidAlive(rec.pid)),
          });
          closers.push(pubs.close);
          const portmap = parsePort('--portmap-port', o.portmapPort) ?? cfg.nfs.portmapPort;
          const nfs = await startNfsExport({
            datastore,
            stateDir: cfg.stateDir,
            port: parsePort('--nfs-port', o.nfsPort) ?? cfg.nfs.port,
            mountPort: parsePort('--mount-port', o.mountPort) ?? cfg.nfs.mountPort,
            portmapPort: portmap === 0 ? null : portmap,
            allow: o.allow.length > 0 ? o.allow : cfg.nfs.allow,
            listen: o.nfsListen.length > 0 ? o.nfsListen : cfg.nfs.listen,
            // The flag can only turn squash off; without it the configuration decides.
            rootSquash: o.rootSquash === false ? false : cfg.nfs.rootSquash,
            ...(cfg.nfs.limits ? { limits: cfg.nfs.limits } : {}),
            readOnly: o.readOnly ?? cfg.nfs.readOnly,
            log: { warn: (m) => ctx.out.warn(m) },
          });
          closers.unshift(() => nfs.stop());
          result.nfs = {
            host: nfs.host,
            port: nfs.port,
            mountPort: nfs.mountPort,
            portmapPort: nfs.portmapPort,
            export: nfs.exportPath,
            publications: pubs.restored,
            skipped: pubs.skipped,
          };
        }
        // Jobs with "runOn": "workers", scheduled or started through the API, go to the lab workers (queue opened on first use).
        const { queueDispatch } = await import('../../workers/dispatch.js');
        const { setLabDispatch } = await import('../../scheduler/run.js');
        const labs = queueDispatch(cfg.catalog, (l) => ctx.out.info(l));
        setLabDispatch(labs.dispatch);
        closers.push(async () => {
          setLabDispatch(undefined);
          await labs.close();
        });
        if (o.schedule) {
          const { startScheduler } = await import('../../scheduler/scheduler.js');
          const s = await startScheduler({
            jobsDir: o.jobs ?? process.env.RESTORELAB_JOBS_DIR ?? projectPath('lab-templates', 'jobs'),
            gate: jobGate,
            log: { info: (l) => ctx.out.info(l), warn: (l) => ctx.out.warn(l) },
          });
          scheduler = s;
          closers.unshift(async () => {
            await s.stop();
          });
          result.jobs = s.jobs.map((j) => j.name);
          // `restorelab backup` on this host tells the scheduler of its backups here (afterBackup jobs).
          // Never fatal: without it the API's backups still trigger, and the CLI runs the jobs itself.
          const { serveBackupNotices } = await import('../../scheduler/notice.js');
          const notices = await serveBackupNotices({
            stateDir: cfg.stateDir,
            jobsDir: resolve(o.jobs ?? process.env.RESTORELAB_JOBS_DIR ?? projectPath('lab-templates', 'jobs')),
            notify: (vms) => s.notifyBackup(vms),
            // `backup-job run` on this host fires its linked SureBackup jobs here.
            run: (job) => (s.jobs.some((j) => j.name === job) ? s.trigger(job, 'after-backup') : undefined),
            log: { info: (l) => ctx.out.info(l), warn: (l) => ctx.out.warn(l) },
          }).catch((err: Error) => {
            ctx.out.warn(
              `backup notices: cannot listen in ${cfg.stateDir}: ${err.message}; \`restorelab backup\` will run afterBackup jobs itself`,
            );
            return undefined;
          });
          if (notices) closers.unshift(() => notices.close());
          result.backupNotices = notices?.path ?? null;
          backupJobs = await startBackupJobs(cfg, backupDir, s, { info: (l) => ctx.out.info(l), warn: (l) => ctx.out.warn(l) });
          const bj = backupJobs;
          closers.unshift(() => bj.stop());
          result.backupJobs = bj.jobs.map((j) => j.name);
        }
        if (o.api) {
          const { startApiServer } = await import('../../api/server.js');
          const jobsDir = o.jobs ?? process.env.RESTORELAB_JOBS_DIR ?? projectPath('lab-templates', 'jobs');
          const api = await startApiServer({
            config: cfg,
            jobsDir,
            jobGate,
            ...(datastore ? { datastore } : {}),
            ...(scheduler ? { scheduler } : {}),
            backupJobsDir: backupDir,
            ...(backupJobs ? { backupJobs } : {}),
            ...(o.listen ? { listen: o.listen } : {}),
            ...(o.port !== undefined ? { port: parsePort('--port', o.port) } : {}),
          });
          closers.unshift(() => api.close());
          result.api = { url: api.url, tls: api.tls, dashboard: `${api.url}/` };
        }
      } catch (err) {
        for (const close of closers) await close().catch(() => undefined);
        throw err;
      }
      ctx.out.result(result, () =>
        [
          `restorelab server (pid ${process.pid})`,
          result.nfs ? `  NFS: ${JSON.stringify(result.nfs)}` : '  NFS: off',
          result.jobs ? `  scheduled jobs: ${(result.jobs as string[]).join(', ') || 'none'}` : '  scheduler: off',
          result.backupJobs ? `  backup jobs: ${(result.backupJobs as string[]).join(', ') || 'none'} (${backupDir})` : '',
          result.api
            ? `  API and dashboard: ${(result.api as { url: string }).url}/ (tokens: restorelab token create NAME --role viewer)`
            : '  API: off',
        ]
          .filter((l) => l !== '')
          .join('\n'),
      );
      await new Promise<void>((resolve) => {
        const stop = (): void => resolve();
        process.once('SIGINT', stop);
        process.once('SIGTERM', stop);
      });
      for (const close of closers) await close().catch((e: Error) => ctx.out.warn(`while stopping: ${e.message}`));
    });
}

/**
 * The backup job scheduler of the server: the jobs of `dir` (none when the
 * directory does not exist: a host may have no backup jobs; a bad file stops
 * the start, as a bad SureBackup job does), armed, firing their linked
 * SureBackup jobs through the server's SureBackup scheduler.
 */
async function startBackupJobs(
  cfg: Config,
  dir: string,
  surebackup: Scheduler,
  log: { info(l: string): void; warn(l: string): void },
): Promise<BackupJobScheduler> {
  const { existsSync } = await import('node:fs');
  const { BackupJobScheduler } = await import('../../backup/jobs/scheduler.js');
  const { BackupJobHistory } = await import('../../backup/jobs/history.js');
  const { configuredBackupRun } = await import('../../backup/jobs/run.js');
  const { fireThroughScheduler } = await import('../../backup/jobs/surebackup-link.js');
  const history = await BackupJobHistory.open(cfg.catalog);
  try {
    const s = await new BackupJobScheduler({
      ...(existsSync(dir) ? { jobsDir: dir } : { jobs: [] }),
      history,
      closeHistory: true,
      log,
      stateDir: cfg.stateDir,
      run: configuredBackupRun(cfg, { history, log, confineScripts: true, fireSureBackup: fireThroughScheduler(surebackup) }),
    }).start();
    return s;
  } catch (err) {
    await history.close();
    throw err;
  }
}

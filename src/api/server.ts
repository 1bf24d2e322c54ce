/**
 * Builds the API's context and serves it over HTTP, or HTTPS when the config
 * names a certificate and key. `restorelab server` calls startApiServer; the
 * in-process tests call createApiContext and hand its app to supertest.
 */
import { createServer as createHttp, type Server } from 'node:http';
import { createServer as createHttps } from 'node:https';
import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { pino, type Logger } from 'pino';
import type { Config } from '../config/config.js';
import { connectCatalog } from '../catalog/catalog.js';
import { BackupJobHistory } from '../backup/jobs/history.js';
import { BackupJobScheduler } from '../backup/jobs/scheduler.js';
import { configuredBackupRun } from '../backup/jobs/run.js';
import { fireThroughScheduler } from '../backup/jobs/surebackup-link.js';
import { backupJobsDir } from '../backup/jobs/job.js';
import { History } from '../surebackup/history.js';
import { listPublications } from '../publish/publish.js';
import { listSessions } from '../session/recover.js';
import { badInput } from '../errors.js';
import { TokenStore } from './tokens.js';
import { OperationRegistry } from './operations.js';
import { Metrics } from './metrics.js';
import { AuthFailureLimiter } from './rate-limit.js';
import { createApp } from './app.js';
import { createApiDirs } from './host-paths.js';
import { errorBody, toApiError } from './errors.js';
import type { ApiContext } from './context.js';
import type { PublicationDatastore } from '../datastore/publication-datastore.js';
import { JobGate } from '../surebackup/gate.js';

export interface ApiOptions {
  config: Config;
  jobsDir: string;
  log?: Logger;
  authLimiter?: AuthFailureLimiter;
  datastore?: PublicationDatastore;
  jobGate?: JobGate;
  scheduler?: ApiContext['scheduler'];
  /** Default: lab-templates/backup-jobs (or the config's backupJobsDir). */
  backupJobsDir?: string;
  /** The server's backup job scheduler; default: one of the API's own, armed with no schedule. */
  backupJobs?: ApiContext['backupJobs'];
}

export async function createApiContext(o: ApiOptions): Promise<ApiContext & { close(): Promise<void> }> {
  const sql = await connectCatalog(o.config.catalog);
  const closers: Array<() => Promise<void> | void> = [];
  let backupJobHistory: BackupJobHistory;
  let runs: History;
  try {
    createApiDirs(o.config.api, o.config.stateDir);
    backupJobHistory = await BackupJobHistory.on(sql);
    runs = await History.on(sql);
  } catch (err) {
    await sql.close();
    throw err;
  }
  const operations = new OperationRegistry((err) => {
    const { error } = toApiError(err);
    return { ...errorBody(error).error, status: error.status };
  });
  const stateDir = o.config.stateDir;
  const backupJobs = o.backupJobs ?? ownBackupJobs(o, backupJobHistory, closers);
  const metrics = new Metrics({
    publications: () => listPublications(stateDir).filter((p) => p.running).length,
    sessionsByState: async () => {
      const out: Record<string, number> = {};
      for (const s of await listSessions(stateDir)) out[s.state] = (out[s.state] ?? 0) + 1;
      return out;
    },
    jobRunsByResult: () => runs.runsByStatus(),
  });
  return {
    config: o.config,
    sql,
    backupJobHistory,
    runs,
    tokens: new TokenStore(sql),
    operations,
    metrics,
    // Logs go to stderr so that stdout stays one JSON document under --json; journald takes both.
    log: o.log ?? pino({ level: process.env.RESTORELAB_LOG_LEVEL ?? 'info' }, pino.destination(2)),
    authLimiter: o.authLimiter ?? new AuthFailureLimiter(),
    jobsDir: o.jobsDir,
    ...(o.datastore ? { datastore: o.datastore } : {}),
    jobGate: o.jobGate ?? new JobGate(o.config.limits.maxConcurrentVms, o.config.limits.memoryBudgetMiB),
    ...(o.scheduler ? { scheduler: o.scheduler } : {}),
    backupJobsDir: backupJobsDir(o.backupJobsDir, o.config),
    backupJobs,
    onClose: (fn) => {
      closers.push(fn);
    },
    close: async () => {
      await operations.shutdown();
      for (const fn of closers.reverse()) await fn();
      await sql.close();
    },
  };
}

/** A backup job scheduler that only runs what the API starts, stopped (runs cancelled and awaited) when the API closes. */
function ownBackupJobs(o: ApiOptions, history: BackupJobHistory, closers: Array<() => Promise<void> | void>): BackupJobScheduler {
  const log = o.log ?? pino({ level: process.env.RESTORELAB_LOG_LEVEL ?? 'info' }, pino.destination(2));
  const s = new BackupJobScheduler({
    history,
    stateDir: o.config.stateDir,
    log: { info: (l) => log.info(l), warn: (l) => log.warn(l) },
    run: configuredBackupRun(o.config, {
      history,
      log: { info: (l) => log.info(l), warn: (l) => log.warn(l) },
      confineScripts: true,
      ...(o.scheduler ? { fireSureBackup: fireThroughScheduler(o.scheduler) } : {}),
    }),
  });
  closers.push(() => s.stop());
  return s;
}

export interface RunningApi {
  url: string;
  port: number;
  tls: boolean;
  server: Server;
  ctx: ApiContext;
  close(): Promise<void>;
}

export async function startApiServer(o: ApiOptions & { listen?: string; port?: number }): Promise<RunningApi> {
  const cfg = o.config.server;
  const ctx = await createApiContext(o);
  const { app } = createApp(ctx);
  const tls = Boolean(cfg.tlsCert || cfg.tlsKey);
  if (tls && !(cfg.tlsCert && cfg.tlsKey)) {
    await ctx.close();
    throw badInput(
      'TLS_INCOMPLETE',
      'server.tlsCert and server.tlsKey must be set together',
      'set both in the config file, or neither for plain HTTP',
    );
  }
  let server: Server;
  try {
    server = tls
      ? (createHttps({ cert: readFileSync(cfg.tlsCert as string), key: readFileSync(cfg.tlsKey as string) }, app) as unknown as Server)
      : createHttp(app);
  } catch (err) {
    await ctx.close();
    throw badInput(
      'TLS_UNREADABLE',
      `cannot load the TLS certificate or key: ${(err as Error).message}`,
      'check server.tlsCert and server.tlsKey point to PEM files readable by the server',
    );
  }
  const host = o.listen ?? cfg.listen;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.port ?? cfg.port, host, () => {
      server.off('error', reject);
      resolve();
    });
  }).catch(async (err: NodeJS.ErrnoException) => {
    await ctx.close();
    throw badInput(
      'API_LISTEN_FAILED',
      `cannot listen on ${host}:${o.port ?? cfg.port}: ${err.message}`,
      'choose another port with --port, or stop what holds it',
    );
  });
  const port = (server.address() as AddressInfo).port;
  const url = `${tls ? 'https' : 'http'}://${host.includes(':') ? `[${host}]` : host}:${port}`;
  ctx.log.info({ url }, 'API listening');
  return {
    url,
    port,
    tls,
    server,
    ctx,
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await ctx.close();
    },
  };
}

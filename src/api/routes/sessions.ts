/**
 * Recovery sessions (docs/recovery.md) over the session library, exactly as
 * the recover, sessions, stop and migrate commands call it. A session lives
 * in its own detached supervisor process, not in the server: it survives a
 * server restart, and the next server lists and stops it from the record.
 */
import type { Response } from 'express';
import type { RegisterRoutes } from './register.js';
import type { ApiContext } from '../context.js';
import { apiError } from '../errors.js';
import { principal } from '../route-table.js';
import { accepted } from '../sse.js';
import { nameParam } from './params.js';
import { labTemplateFile } from './labs.js';
import { allowedTarget } from '../host-paths.js';
import { migrateSession, recover, stopSession, type RecoveryScan } from '../../session/recover.js';
import { planRecovery, type RecoverRequest } from '../../session/plan.js';
import { depsWithKey } from '../../session/deps.js';
import { keyFileOption } from '../../config/key-file.js';
import type { RecoverySession } from '../../session/session.js';
import { compileRuleSource, type CompiledRules } from '../../scan/scan.js';
import type { OperationContext } from '../operations.js';
import { LabQueue } from '../../workers/queue.js';
import { queueTuning } from '../../workers/url.js';
import {
  listAllSessions,
  migrateOnWorker,
  planWorkerRecovery,
  recoverOnWorkers,
  recoverQueueUrl,
  runsOnWorker,
  screenshotOnWorker,
  sessionAfterWorker,
  stopAnySession,
} from '../../workers/sessions.js';
import { SCREEN_STATES, sessionScreenshot } from '../../session/screenshot.js';

interface CreateBody {
  vm: string;
  point?: string;
  lab?: string;
  network?: string;
  driver?: 'qemu' | 'libvirt';
  accel?: 'auto' | 'kvm' | 'tcg';
  publish?: 'fuse' | 'nbd';
  scan?: { rules: string; allowInfected?: boolean };
  runOn?: 'host' | 'workers';
}

/** The session as listed (a dead supervisor noticed), or a 404. */
/** A session as clients see it: the record without the server's key file path (where the server keeps its key is not theirs to know). */
function shown(s: RecoverySession): Omit<RecoverySession, 'keyFile'> {
  const { keyFile: _keyFile, ...rest } = s;
  return rest;
}

async function findSession(stateDir: string, id: string): Promise<RecoverySession> {
  const s = (await listAllSessions(stateDir)).find((x) => x.id === id);
  if (!s) throw apiError('NOT_FOUND', `no recovery session ${id}`, [{ path: 'params/id', message: 'GET /api/v1/sessions lists them' }]);
  return s;
}

/**
 * The recovery gate over the API (docs/secure-restore.md): the rules the
 * body's source compiled to, scanned with the server's catalog (its verdict
 * cache and point scan status), the scan's progress on the operation.
 */
function scanGate(ctx: ApiContext, rules: CompiledRules, allowInfected: boolean, o: OperationContext): RecoveryScan {
  o.progress(
    null,
    `scanning the point with the given YARA rules first${allowInfected ? ' (an infected point is recovered in quarantine)' : ''}`,
  );
  // The scan reports every file; a client following the events needs one line a second.
  let last = 0;
  return {
    rules,
    allowInfected,
    catalog: ctx.sql,
    onProgress: (d) => {
      if (Date.now() - last < 1000) return;
      last = Date.now();
      o.progress(null, `scanning: ${d.files} file(s) hashed (${d.partition})`);
    },
  };
}

function sendPng(res: Response, png: Buffer): void {
  // A console changes every second: the dashboard polls, nothing may cache it.
  res.status(200).set({ 'content-type': 'image/png', 'cache-control': 'no-store' }).send(png);
}

export const sessionRoutes: RegisterRoutes = (t, ctx) => {
  const stateDir = ctx.config.stateDir;
  // The lab queue, opened on the first request that needs it (a recovery or a stop on the workers) and kept.
  let queue: Promise<LabQueue> | undefined;
  const withLabQueue = async <T>(f: (q: LabQueue) => Promise<T>): Promise<T> => {
    const url = recoverQueueUrl(ctx.config.catalog);
    queue ??= LabQueue.open({ url, ...queueTuning() }).catch((err: unknown) => {
      queue = undefined;
      throw err;
    });
    return f(await queue);
  };
  ctx.onClose(async () => {
    const q = await queue?.catch(() => undefined);
    await q?.close();
  });

  t.add({
    method: 'get',
    path: '/sessions',
    role: 'viewer',
    tag: 'sessions',
    summary: 'recovery sessions, every state (a session whose supervisor died is reported failed)',
    handler: async () => ({ sessions: (await listAllSessions(stateDir)).map(shown) }),
  });

  t.add({
    method: 'get',
    path: '/sessions/:id',
    role: 'viewer',
    tag: 'sessions',
    summary: 'one recovery session',
    handler: async (req) => shown(await findSession(stateDir, nameParam(req, 'id'))),
  });

  t.add({
    method: 'post',
    path: '/sessions',
    role: 'operator',
    tag: 'sessions',
    body: 'api-session-create.schema.json',
    summary:
      "instant recovery of a VM (latest point by default), in a lab or on a bridge; the operation ends when the guest's heartbeat is seen",
    success: { status: 202, description: 'the operation; its result is the RecoverySession and its resource /api/v1/sessions/<id>' },
    handler: async (req, res) => {
      const b = req.body as CreateBody;
      if (b.runOn === 'workers') return recoverOnWorkersRoute(b, res);
      const request: RecoverRequest = {
        repo: ctx.config.repository,
        vm: b.vm,
        stateDir,
        driver: b.driver ?? ctx.config.driver,
        accel: b.accel ?? ctx.config.accel,
        ...(b.point ? { point: b.point } : {}),
        ...(b.lab ? { lab: labTemplateFile(b.lab) } : {}),
        ...(b.network ? { network: b.network } : {}),
        ...(b.publish === 'nbd' ? { publish: { via: 'nbd' as const } } : {}),
        ...keyFileOption(undefined, ctx.config),
      };
      // The same checks recover makes first, made before the 202: an unknown
      // VM or point, a clashing lab or a missing bridge is the client's 4xx,
      // not a failed operation to poll for.
      await planRecovery(request, depsWithKey(request.keyFile));
      // Compiled before the 202 through the API's rule policy, as the scan route does: bad rules are a 400 and nothing is mounted.
      const rules = b.scan ? await compileRuleSource(stateDir, b.scan.rules) : undefined;
      const by = principal(res).name;
      const op = ctx.operations.start('recover', by, async (o) => {
        o.progress(null, `recovering ${b.vm}${b.point ? `@${b.point}` : ''} with the ${request.driver} driver`);
        // The FUSE access group (config fuse.group) for a hypervisor whose QEMU runs as another user.
        const s = await recover({
          ...request,
          ...(ctx.config.fuse.group !== undefined ? { fuseGroup: ctx.config.fuse.group } : {}),
          ...(rules ? { scan: scanGate(ctx, rules, b.scan?.allowInfected === true, o) } : {}),
        }).finally(() => rules?.dispose());
        ctx.metrics.recoverySeconds.observe(s.heartbeatSeconds ?? 0);
        ctx.log.info(
          { by, session: s.id, vm: s.vm, heartbeatSeconds: s.heartbeatSeconds, scan: s.scan?.verdict, quarantine: s.quarantine === true },
          'session recovered',
        );
        // Recovery cannot be interrupted half-way (the supervisor owns it);
        // a cancel that came meanwhile stops the session it made.
        if (o.signal.aborted) {
          await stopSession(stateDir, s.id);
          throw apiError('CONFLICT', `cancelled: session ${s.id} was stopped after it came up`);
        }
        return { result: shown(s), resource: `/api/v1/sessions/${s.id}` };
      });
      accepted(res, op);
    },
  });

  /** `runOn: workers`: checked here (the point, the lab template), then a lab worker recovers it. */
  async function recoverOnWorkersRoute(b: CreateBody, res: Response): Promise<void> {
    const here = (['network', 'driver', 'accel', 'scan'] as const).filter((k) => b[k] !== undefined);
    if (here.length > 0)
      throw apiError(
        'VALIDATION_FAILED',
        `runOn: workers does not go with ${here.join(', ')}: a worker recovers into a lab with its own driver, accelerator and key file`,
        here.map((k) => ({ path: `body/${k}`, message: 'not with runOn: workers' })),
      );
    // No queue: refused before anything is checked or started (RECOVER_NEEDS_WORKERS).
    recoverQueueUrl(ctx.config.catalog);
    const task = await planWorkerRecovery(
      {
        repo: ctx.config.repository,
        vm: b.vm,
        ...(b.point ? { point: b.point } : {}),
        ...(b.lab ? { lab: labTemplateFile(b.lab) } : {}),
        ...(b.publish ? { publish: b.publish } : {}),
        baseDir: process.cwd(),
      },
      await depsWithKey(keyFileOption(undefined, ctx.config).keyFile).openRepository(ctx.config.repository),
    );
    const by = principal(res).name;
    const op = ctx.operations.start('recover', by, async (o) => {
      o.progress(null, `recovering ${task.vm}@${task.point} on a lab worker`);
      const s = await withLabQueue((q) => recoverOnWorkers(q, task, { signal: o.signal, log: (l) => o.progress(null, l) }));
      ctx.log.info(
        { by, session: s.id, vm: s.vm, worker: s.worker, heartbeatSeconds: s.heartbeatSeconds },
        'session recovered on a worker',
      );
      return { result: s, resource: `/api/v1/sessions/${s.id}` };
    });
    accepted(res, op);
  }

  t.add({
    method: 'post',
    path: '/sessions/:id/stop',
    role: 'operator',
    tag: 'sessions',
    summary: 'stops a session: the VM, its taps and its publication go, the backup is untouched; idempotent',
    handler: async (req, res) => {
      const id = nameParam(req, 'id');
      // Here, or on the lab worker that runs it (SESSION_NOT_FOUND, a 404, for neither).
      const s = await stopAnySession(stateDir, id, withLabQueue);
      ctx.log.info({ by: principal(res).name, session: id, state: s.state, worker: s.worker }, 'session stopped');
      return shown(s);
    },
  });

  t.add({
    method: 'post',
    path: '/sessions/:id/migrate',
    role: 'operator',
    tag: 'sessions',
    body: 'api-session-migrate.schema.json',
    summary: "copies a running session's disks to production storage while it runs, then stops depending on the backup",
    success: { status: 202, description: 'the operation; its result is the migrated RecoverySession' },
    handler: async (req, res) => {
      const id = nameParam(req, 'id');
      const b = req.body as { dir: string; format: 'raw' | 'qcow2' };
      const remote = (await listAllSessions(stateDir)).find((x) => x.id === id);
      if (remote && (await runsOnWorker(stateDir, remote))) {
        if (remote.state !== 'running')
          throw apiError('CONFLICT', `session ${id} is ${remote.state}; only a running session can be migrated`);
        // `dir` is a path on the worker's host: held there to that worker's restore roots.
        const op = ctx.operations.start('migrate', principal(res).name, async (o) => {
          o.progress(null, `migrating session ${id} on worker ${remote.worker ?? '?'} to ${b.dir} (${b.format})`);
          await withLabQueue((q) => migrateOnWorker(q, remote, b.dir, b.format, o.signal));
          return { result: shown(await sessionAfterWorker(id, remote)), resource: `/api/v1/sessions/${id}` };
        });
        return accepted(res, op);
      }
      // The disks land where restored disks may (api.restoreRoots), checked
      // first (before the session is looked up) and on the real path, which is the one the copy then uses.
      const dir = allowedTarget(ctx.config.api, b.dir, 'migration target');
      const s = await findSession(stateDir, id);
      if (s.state !== 'running') throw apiError('CONFLICT', `session ${id} is ${s.state}; only a running session can be migrated`);
      const op = ctx.operations.start('migrate', principal(res).name, async (o) => {
        o.progress(null, `migrating session ${id} to ${dir} (${b.format})`);
        const done = await migrateSession(stateDir, id, dir, b.format);
        return { result: shown(done), resource: `/api/v1/sessions/${id}` };
      });
      accepted(res, op);
    },
  });

  t.add({
    method: 'get',
    path: '/sessions/:id/screenshot',
    role: 'viewer',
    tag: 'sessions',
    summary: "the live console of the session's VM (404 unless it runs)",
    success: { status: 200, description: 'a PNG image', contentType: 'image/png' },
    handler: async (req, res) => {
      const s = await findSession(stateDir, nameParam(req, 'id'));
      if (!SCREEN_STATES.includes(s.state)) throw apiError('NOT_FOUND', `session ${s.id} is ${s.state}: its VM has no screen`);
      // A session on a lab worker: only that worker reaches its VM's console.
      const png = (await runsOnWorker(stateDir, s))
        ? await withLabQueue((q) => screenshotOnWorker(q, s))
        : await sessionScreenshot(stateDir, s);
      sendPng(res, png);
    },
  });
};

/**
 * `restorelab worker`: one lab host taking verification and recovery tasks
 * from the queue, and stop requests for its sessions from its own queue.
 *
 * On start it first cleans up what an earlier life of it left behind (labs,
 * sessions, publications: the reconciler of `restorelab cleanup`), so a
 * worker that died mid-task and comes back leaves no VM or namespace
 * running; the task itself went back to the queue when its lease expired.
 */
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { totalmem } from 'node:os';
import { isAbsolute, join, resolve } from 'node:path';
import type { Config } from '../config/config.js';
import { RestorelabError } from '../errors.js';
import { ERROR_CLASSES } from '../errors/registry.js';
import { processAlive } from '../host/process.js';
import { confine, isInside } from '../host/confine.js';
import { writeFileAtomicSync } from '../host/atomic-file.js';
import { LabQueue, workerQueue, type QueueOptions } from './queue.js';
import { HEARTBEAT_MS, WorkerRegistry } from './registry.js';
import {
  checkAnyTask,
  checkSessionTask,
  MAX_EVIDENCE_BYTES,
  packResult,
  workerSession,
  type RecoverTask,
  type RefusalReply,
  type ScreenshotReply,
  type SessionReply,
  type SessionTask,
  type TaskResult,
  type VerifyTask,
} from './task.js';
import { SESSIONS_CATALOG_ENV } from '../session/catalog.js';
import { fits, taskMemory } from './placement.js';
import { SessionStore } from '../session/store.js';
import { ACTIVE_STATES } from '../session/session.js';

export interface WorkerOptions extends Omit<QueueOptions, 'url'> {
  name: string;
  slots: number;
  url: string;
  config: Config;
  signal: AbortSignal;
  log: (line: string) => void;
  /** Lab networks this host can mirror, shown in `workers`. */
  networks?: string[];
  /** Labs are mirrored onto free masquerade subnets of this pool (src/lab/masquerade-pool.ts). */
  masqueradePool?: string;
  /** VM memory budget (MiB) for placement (placement.ts); default the config's limits.memoryBudgetMiB. */
  memoryMiB?: number;
}

export async function runWorker(o: WorkerOptions): Promise<void> {
  claimStateDir(o.config.stateDir, o.name);
  // Migrations of this worker's sessions land under its restore roots; the default ones, in its state directory, exist from the start (0755: only root writes them).
  for (const root of o.config.api.restoreRoots)
    if (isInside(resolve(root), resolve(o.config.stateDir))) mkdirSync(root, { recursive: true, mode: 0o755 });
  // Every session this process (and the supervisors it starts) records goes to the queue's catalog, where the server reads it.
  process.env[SESSIONS_CATALOG_ENV] = o.url;
  const { reconcile } = await import('../reconcile/reconcile.js');
  const { keyFileOption } = await import('../config/key-file.js');
  const left = await reconcile({
    stateDir: o.config.stateDir,
    dryRun: false,
    discardWrites: false,
    ...keyFileOption(undefined, o.config),
    log: o.log,
  });
  // No task runs yet: task directories here are an earlier life's, killed mid-task.
  rmSync(join(o.config.stateDir, 'worker-tasks'), { recursive: true, force: true });
  const removed = left.stale.filter((s) => s.outcome?.action === 'removed').length;
  if (removed > 0) o.log(`worker ${o.name}: removed ${removed} leftover item(s) of an earlier run`);
  for (const s of left.stale.filter((x) => x.outcome?.action !== 'removed' && x.kind !== 'netns'))
    o.log(`worker ${o.name}: left ${s.id} (${s.outcome?.action ?? 'not safe'}): ${s.outcome?.detail ?? s.reason}`);
  const lost = await reconcileSessionRows(o);
  if (lost > 0) o.log(`worker ${o.name}: ${lost} session(s) in the shared catalog had no record here; marked failed`);

  const budget = o.memoryMiB ?? Math.min(o.config.limits.memoryBudgetMiB, Math.floor(totalmem() / 2 ** 20));
  const queue = await LabQueue.open(o);
  const registry = new WorkerRegistry(queue.sql);
  await registry.ensureSchema();
  await registry.register({
    name: o.name,
    slots: o.slots,
    memoryMiB: budget,
    networks: o.networks ?? ['isolated'],
  });
  const running = new Set<string>();
  // VM memory of the tasks running here, by task id; the sessions' is read from their records (they outlive their tasks).
  const taskMiB = new Map<string, number>();
  // Synchronous, so that checking a task and reserving its memory happen with no await between (two slots at once).
  const inUse = (): number => {
    const sessions = new SessionStore(o.config.stateDir)
      .list()
      .filter((x) => ACTIVE_STATES.includes(x.state) && processAlive(x.supervisorPid));
    return [...taskMiB.values()].reduce((a, b) => a + b, 0) + sessions.reduce((a, x) => a + (x.memoryMiB ?? 0), 0);
  };
  // Two tasks of one lab on one host would build the same namespaces and masquerade routes: they take turns.
  const labTurns = new Map<string, Promise<unknown>>();
  const beat = (): void => {
    registry.heartbeat(o.name, [...running], inUse()).catch((err: Error) => o.log(`worker ${o.name}: heartbeat failed: ${err.message}`));
  };
  const timer = setInterval(beat, HEARTBEAT_MS);
  o.log(`worker ${o.name}: ${o.slots} slot(s), ${budget} MiB for VMs, waiting for tasks`);

  // Requests about this worker's sessions (stop, screenshot, migrate) come on its own queue: only it can reach their supervisors.
  await queue.ensureQueue(workerQueue(o.name));
  await queue.work(1, async (id, data) => answerSessionTask(o, id, checkSessionTask(data)), workerQueue(o.name));

  await queue.work(o.slots, async (id, data) => {
    const task = checkAnyTask(data);
    const need = taskMemory(task);
    const used = inUse();
    if (!fits(budget, used, need)) {
      // Left for a worker with room (or for this one once some ends): no retry spent.
      o.log(`worker ${o.name}: task ${id} needs ${need} MiB, ${used} of ${budget} MiB in use: given back`);
      await queue.giveBack(id);
      return { givenBack: o.name };
    }
    taskMiB.set(id, need);
    try {
      return await runAny(id, task);
    } finally {
      taskMiB.delete(id);
      beat();
    }
  });

  async function runAny(id: string, task: VerifyTask | RecoverTask): Promise<object> {
    if (task.kind === 'recover') {
      running.add(id);
      beat();
      o.log(`worker ${o.name}: recover ${task.vm}${task.point ? `@${task.point}` : ''} (task ${id})`);
      try {
        const out = await runRecover(o, task);
        o.log(`worker ${o.name}: session ${out.session.id} of ${task.vm} is ${out.session.state}`);
        return out;
      } finally {
        running.delete(id);
        beat();
      }
    }
    running.add(id);
    beat();
    o.log(
      `worker ${o.name}: task ${id} (run ${task.run}): ${task.job.applicationGroup.map((g) => g.name).join(', ') || '-'} | ${describeVms(task)}`,
    );
    const lab = JSON.stringify(task.job.lab);
    const turn = (labTurns.get(lab) ?? Promise.resolve()).catch(() => undefined).then(() => runTask(o, id, task));
    labTurns.set(lab, turn);
    try {
      const out = await turn;
      o.log(`worker ${o.name}: task ${id} ${out.result.result}`);
      return out;
    } finally {
      if (labTurns.get(lab) === turn) labTurns.delete(lab);
      running.delete(id);
      beat();
    }
  }

  await new Promise<void>((res) => o.signal.addEventListener('abort', () => res(), { once: true }));
  clearInterval(timer);
  o.log(`worker ${o.name}: stopping`);
  // Unregistered while the queue's connection is still open (it goes with close): a server then
  // knows at once that this worker takes no more stops, instead of after three missed heartbeats.
  await registry.unregister(o.name).catch((err: Error) => o.log(`worker ${o.name}: could not unregister: ${err.message}`));
  await queue.close();
}

/**
 * A worker owns its state directory: at start it removes whatever an earlier
 * life left there, which would pull the VMs out from under a second live
 * worker sharing it.
 */
function claimStateDir(stateDir: string, name: string): void {
  const file = join(stateDir, 'worker.json');
  try {
    const held = JSON.parse(readFileSync(file, 'utf8')) as { pid?: unknown; name?: unknown };
    if (typeof held.pid === 'number' && held.pid !== process.pid && processAlive(held.pid))
      throw new RestorelabError('WORKER_STATE_BUSY', `worker ${String(held.name)} (pid ${held.pid}) already uses ${stateDir}`, {
        hint: 'give each worker its own state directory (RESTORELAB_STATE_DIR or stateDir in its config)',
      });
  } catch (err) {
    if (err instanceof RestorelabError) throw err;
    // no claim yet, or an unreadable one: ours now
  }
  mkdirSync(stateDir, { recursive: true });
  writeFileAtomicSync(stateDir, 'worker.json', JSON.stringify({ pid: process.pid, name }) + '\n');
}

/**
 * The shared catalog's rows of this worker's sessions, set right after the
 * reconciler dealt with the records: each row gets its record's state again,
 * and a row whose record is gone (a wiped state directory) is marked failed,
 * so the server never lists a session that nothing runs. Returns how many
 * rows were marked.
 */
async function reconcileSessionRows(o: WorkerOptions): Promise<number> {
  const { SessionStore } = await import('../session/store.js');
  const { flushSessionCatalog, sharedSessions } = await import('../session/catalog.js');
  const { ACTIVE_STATES } = await import('../session/session.js');
  const store = new SessionStore(o.config.stateDir, undefined, o.url);
  store.syncCatalog();
  await flushSessionCatalog();
  const catalog = await sharedSessions(o.url);
  let lost = 0;
  for (const s of await catalog.onWorkers(o.name)) {
    if (!ACTIVE_STATES.includes(s.state) || store.find(s.id)) continue;
    s.state = 'failed';
    s.error = { code: 'SUPERVISOR_GONE', message: `worker ${o.name} came back without a record of this session` };
    s.updatedAt = new Date().toISOString();
    await catalog.record(s);
    lost++;
  }
  return lost;
}

/** A recovery on this host, as `restorelab recover` makes it, under this worker's driver, key file and state. */
async function runRecover(o: WorkerOptions, task: RecoverTask): Promise<SessionReply> {
  const { recover } = await import('../session/recover.js');
  const { keyFileOption } = await import('../config/key-file.js');
  const cfg = o.config;
  const s = await recover({
    repo: task.repo,
    vm: task.vm,
    ...(task.point !== undefined ? { point: task.point } : {}),
    driver: cfg.driver,
    accel: cfg.accel,
    stateDir: cfg.stateDir,
    // Resolved as a verification task's lab is (src/surebackup/backend.ts).
    ...(task.lab !== undefined ? { lab: isAbsolute(task.lab) ? task.lab : resolve(task.baseDir, task.lab) } : {}),
    publish: { via: task.publish },
    ...keyFileOption(undefined, cfg),
    ...(cfg.fuse.group !== undefined ? { fuseGroup: cfg.fuse.group } : {}),
    worker: o.name,
    sharedCatalog: o.url,
    // Mirrored onto this worker's own subnets, as its verification labs are: another worker on this host may run the same lab.
    ...(o.masqueradePool !== undefined ? { masqueradePool: o.masqueradePool } : {}),
  });
  return { worker: o.name, session: workerSession(o.name, s) };
}

function describeVms(t: VerifyTask): string {
  const v = t.job.verify.vms;
  return Array.isArray(v) ? v.join(', ') : 'all';
}

async function runTask(o: WorkerOptions, id: string, task: VerifyTask): Promise<TaskResult> {
  const { createLabBackend } = await import('../surebackup/backend.js');
  const { createTestRunner } = await import('../verify/tests.js');
  const { serverScriptPolicy } = await import('../verify/script.js');
  const { runJob } = await import('../surebackup/runner.js');
  const { Limiter } = await import('../surebackup/limiter.js');
  const { keyFileOption } = await import('../config/key-file.js');
  const cfg = o.config;
  const dir = join(cfg.stateDir, 'worker-tasks', id);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const baselines = new Map<string, { run: string; path: string }>();
  for (const [vm, b] of Object.entries(task.baselines)) {
    const path = join(dir, `baseline-${vm}.png`);
    writeFileSync(path, Buffer.from(b.png, 'base64'));
    baselines.set(vm, { run: b.run, path });
  }
  const backend = createLabBackend({
    repo: task.repo,
    stateDir: cfg.stateDir,
    catalog: cfg.catalog,
    driver: cfg.driver,
    accel: cfg.accel,
    baseDir: task.baseDir,
    ...(cfg.fuse.group !== undefined ? { fuseGroup: cfg.fuse.group } : {}),
    ...(o.masqueradePool !== undefined ? { masqueradePool: o.masqueradePool } : {}),
    ...keyFileOption(undefined, cfg),
  });
  try {
    // Tasks come from whoever can write the queue: scripts run only from this host's scripts directory, as its script user.
    const runTest = createTestRunner({
      repo: () => backend.reader(),
      screenshotDir: dir,
      baseline: (vm) => baselines.get(vm),
      scripts: serverScriptPolicy(cfg.api),
    });
    const result = await runJob(task.job, backend, runTest, {
      limiter: new Limiter(cfg.limits.maxConcurrentVms, cfg.limits.memoryBudgetMiB),
      evidenceDir: dir,
    });
    return packResult(o.name, result);
  } finally {
    await backend.close();
    // The evidence went back inline with the result: nothing here is read again.
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * A request about one of this worker's sessions. Refusals a client should
 * see as such (a path outside this host's restore roots, a session that is
 * not running) come back as answers with their code; anything else fails
 * the task.
 */
async function answerSessionTask(o: WorkerOptions, id: string, task: SessionTask): Promise<SessionReply | ScreenshotReply | RefusalReply> {
  o.log(`worker ${o.name}: ${task.kind} ${task.session} (task ${id})`);
  try {
    const { listSessions, stopSession, migrateSession } = await import('../session/recover.js');
    if (task.kind === 'stop') return { worker: o.name, session: workerSession(o.name, await stopSession(o.config.stateDir, task.session)) };
    if (task.kind === 'screenshot') {
      const { sessionScreenshot } = await import('../session/screenshot.js');
      const s =
        (await listSessions(o.config.stateDir)).find((x) => x.id === task.session) ?? new SessionStore(o.config.stateDir).get(task.session);
      const png = await sessionScreenshot(o.config.stateDir, s);
      // The answer lives in the queue's table: bounded like any evidence.
      if (png.length > MAX_EVIDENCE_BYTES)
        throw new Error(`the screenshot of session ${task.session} is ${png.length} bytes, over ${MAX_EVIDENCE_BYTES}`);
      return { worker: o.name, png: png.toString('base64') };
    }
    // The target is a path on this host: only here can it be resolved and held to this host's restore roots.
    const dir = confine(task.dir, o.config.api.restoreRoots);
    if (dir === undefined)
      throw new RestorelabError(
        'PATH_NOT_ALLOWED',
        `migration target ${task.dir} is outside worker ${o.name}'s restore target directories (${o.config.api.restoreRoots.join(', ')})`,
        {
          hint: `choose a path under one of them, or add a directory to api.restoreRoots in the worker's config file`,
        },
      );
    return { worker: o.name, session: workerSession(o.name, await migrateSession(o.config.stateDir, task.session, dir, task.format)) };
  } catch (err) {
    if (!(err instanceof RestorelabError) || err.exitCode === ERROR_CLASSES.failure.exitCode) throw err;
    o.log(`worker ${o.name}: ${task.kind} ${task.session} refused: ${err.code}: ${err.message}`);
    return { worker: o.name, refused: { code: err.code, message: err.message, ...(err.hint ? { hint: err.hint } : {}) } };
  }
}

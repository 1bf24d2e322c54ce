/**
 * Recovery sessions on lab workers, as the server (and the CLI) asks for
 * them: a recovery goes to the shared queue like a verification task, a stop
 * goes to the queue of the one worker that runs the session, and listings
 * read the sessions table of the shared catalog, where every worker records
 * its sessions with its name (src/session/catalog.ts).
 *
 * Why a queue per worker for stops: only the worker that runs a session can
 * reach its supervisor (a unix socket on its host), so the stop must land
 * there and nowhere else; pg-boss has no "job for consumer X", but a queue
 * only X polls is exactly that, with pg-boss keeping the answer.
 */
import { existsSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';
import { RestorelabError, badInput, notFound } from '../errors.js';
import type { RepositoryReader } from '../repo/contract.js';
import { ACTIVE_STATES, type RecoverySession } from '../session/session.js';
import { sharedSessions, sharedSessionsUrl } from '../session/catalog.js';
import { checkSessionId } from '../session/store.js';
import { LabQueue, STOP_LEASE_SECONDS, workerQueue } from './queue.js';
import { WorkerRegistry } from './registry.js';
import { watchOrphans } from './dispatch.js';
import { queueTuning, workersUrl } from './url.js';
import {
  MAX_EVIDENCE_BYTES,
  type RecoverTask,
  type RefusalReply,
  type ScreenshotReply,
  type SessionReply,
  type SessionTask,
  type WorkerSession,
} from './task.js';
import { isErrorCode } from '../errors/registry.js';

export interface WorkerRecoverRequest {
  repo: string;
  vm: string;
  point?: string;
  /** A lab file on a path the workers share (resolved here against `baseDir`, and on the worker as a verification task's lab). */
  lab?: string;
  publish?: 'fuse' | 'nbd';
  baseDir: string;
}

/**
 * The queue's URL for `recover --run-on workers`: a process without a
 * PostgreSQL queue refuses rather than recover the VM on its own host unasked.
 */
export function recoverQueueUrl(catalog: string, env: NodeJS.ProcessEnv = process.env): string {
  try {
    return workersUrl(catalog, env);
  } catch (err) {
    throw badInput(
      'RECOVER_NEEDS_WORKERS',
      `a recovery on the lab workers needs their queue, and this process has none (${(err as Error).message})`,
      'export RESTORELAB_QUEUE=postgres://… (the workers’ queue; scripts/services up prints it), or recover on this host without --run-on workers',
    );
  }
}

/**
 * What the server checks before anything is queued, so a typo fails here and
 * not on a worker: the point exists and belongs to the VM, and the lab file
 * exists. Returns the task.
 */
export async function planWorkerRecovery(req: WorkerRecoverRequest, repo: RepositoryReader): Promise<RecoverTask> {
  let vmMemory: number;
  let point: string;
  if (req.point) {
    const p = await repo.getPoint(req.point);
    if (p.vm.name !== req.vm)
      throw notFound(
        'POINT_NOT_FOUND',
        `restore point ${req.point} belongs to VM ${p.vm.name}, not ${req.vm}`,
        `restorelab points --vm ${req.vm} lists that VM's points`,
      );
    vmMemory = p.vm.memoryMiB;
    point = p.id;
  } else {
    const latest = [...(await repo.listPoints({ vm: req.vm }))].sort((a, b) => a.time.localeCompare(b.time)).at(-1);
    if (!latest)
      throw notFound(
        'VM_NOT_FOUND',
        `the repository ${req.repo} has no restore point of a VM named ${req.vm}`,
        'check the VM name (restorelab points lists what the repository holds)',
      );
    vmMemory = latest.vm.memoryMiB;
    point = latest.id;
  }
  const lab = req.lab === undefined ? undefined : isAbsolute(req.lab) ? req.lab : resolve(req.baseDir, req.lab);
  if (lab !== undefined && !existsSync(lab))
    throw notFound('LAB_FILE_NOT_FOUND', `no lab definition at ${lab}`, 'pass a lab JSON file on a path the workers share');
  return {
    kind: 'recover',
    repo: req.repo,
    vm: req.vm,
    // The point is pinned here: a backup landing meanwhile must not change what the worker recovers.
    point,
    ...(lab !== undefined ? { lab } : {}),
    baseDir: req.baseDir,
    publish: req.publish ?? 'fuse',
    memoryMiB: vmMemory,
  };
}

/**
 * Queues the recovery and waits for the worker that took it to report the
 * session running (or the task failed). A recovery is not retried on another
 * worker: a failed start is the caller's to look at; but a task whose worker
 * died before answering goes back to the queue (dispatch.ts, watchOrphans).
 */
export async function recoverOnWorkers(
  queue: LabQueue,
  task: RecoverTask,
  o: { signal?: AbortSignal; log?: (line: string) => void } = {},
): Promise<WorkerSession> {
  const id = await queue.submit(task, undefined, { retryLimit: 1 });
  o.log?.(`recovery of ${task.vm}@${task.point} queued for the lab workers (task ${id})`);
  const watch = new AbortController();
  const watching = watchOrphans(queue, [id], watch.signal, o.log).catch((err: Error) => o.log?.(`orphan watch stopped: ${err.message}`));
  try {
    const reply = await queue.outcome<SessionReply>(id, o.signal);
    return reply.session;
  } finally {
    watch.abort();
    await watching;
  }
}

/** The sessions lab workers run, as the shared catalog has them, oldest first. */
export async function workerSessions(url: string): Promise<RecoverySession[]> {
  return (await sharedSessions(url)).onWorkers();
}

/** The record of a session that runs on a worker, or undefined (a local session, or none). */
export async function workerSession(url: string, id: string): Promise<RecoverySession | undefined> {
  checkSessionId(id);
  const s = await (await sharedSessions(url)).get(id);
  return s?.worker !== undefined ? s : undefined;
}

/** How long a migration on a worker may take before the server stops waiting (the copy goes on there). */
export const MIGRATE_LEASE_SECONDS = 6 * 3600;

/**
 * Asks the worker that runs session `s` to do `task` for it, and waits for
 * its answer: a task on that worker's own queue. A worker that is gone
 * cannot do anything: refused at once (it stops the session's leftovers
 * when it comes back), rather than leaving a task nobody takes. A refusal
 * the worker answered (a path outside its roots, a session not running)
 * is thrown with the worker's own code.
 */
async function askWorker<T extends object>(
  queue: LabQueue,
  s: RecoverySession,
  task: SessionTask,
  leaseSeconds: number,
  signal?: AbortSignal,
): Promise<T> {
  const worker = s.worker as string;
  const registry = new WorkerRegistry(queue.sql);
  await registry.ensureSchema();
  const gone = async (): Promise<string | undefined> => {
    const w = (await registry.list()).find((x) => x.name === worker);
    return w?.alive ? undefined : w ? 'not answering' : 'not registered';
  };
  const refuse = (why: string): RestorelabError =>
    new RestorelabError('SESSION_WORKER_GONE', `session ${s.id} runs on worker ${worker}, which is ${why}`, {
      hint: `start the worker again (restorelab worker --name ${worker}): it cleans up its sessions first; restorelab workers --json shows who is there`,
    });
  const before = await gone();
  if (before !== undefined) throw refuse(before);
  const name = workerQueue(worker);
  await queue.ensureQueue(name);
  const id = await queue.submit(task, name, { retryLimit: 0, leaseSeconds });
  const end = Date.now() + (leaseSeconds + 60) * 1000;
  for (;;) {
    if (signal?.aborted) {
      await queue.cancel(id, name).catch(() => undefined);
      throw signal.reason;
    }
    const st = await queue.status<T | RefusalReply>(id, name);
    if (st.state === 'completed' && st.output) {
      if ('refused' in st.output) throw refusedBy(worker, st.output.refused);
      return st.output;
    }
    if (st.state === 'failed' || st.state === 'cancelled')
      throw new RestorelabError('TASK_FAILED', `worker ${worker} could not ${task.kind} session ${s.id}: ${st.failure ?? st.state}`, {
        hint: `its log says more; restorelab sessions shows the session's state`,
      });
    // A task nobody took while the worker went away would wait for ever: withdrawn, and said so.
    const why = st.state === 'created' ? await gone() : undefined;
    if (why !== undefined || Date.now() > end) {
      await queue.cancel(id, name).catch(() => undefined);
      throw refuse(why ?? `not done after ${leaseSeconds + 60} s`);
    }
    await new Promise((r) => setTimeout(r, 500));
  }
}

/** A worker's refusal as the error it was there; a code this build does not know stays a task failure. */
function refusedBy(worker: string, r: RefusalReply['refused']): RestorelabError {
  const text = `worker ${worker}: ${String(r.message).slice(0, 2000)}`;
  const hint = typeof r.hint === 'string' ? r.hint.slice(0, 1000) : undefined;
  if (typeof r.code === 'string' && isErrorCode(r.code)) return new RestorelabError(r.code, text, { hint });
  return new RestorelabError('TASK_FAILED', text, { hint });
}

/** Stops a session on the worker that runs it, and waits for its answer. */
export async function stopOnWorker(queue: LabQueue, s: RecoverySession, signal?: AbortSignal): Promise<WorkerSession> {
  return (await askWorker<SessionReply>(queue, s, { kind: 'stop', session: s.id }, STOP_LEASE_SECONDS, signal)).session;
}

/** The live console of a session a worker runs, as PNG. */
export async function screenshotOnWorker(queue: LabQueue, s: RecoverySession, signal?: AbortSignal): Promise<Buffer> {
  const r = await askWorker<ScreenshotReply>(queue, s, { kind: 'screenshot', session: s.id }, STOP_LEASE_SECONDS, signal);
  const png = Buffer.from(String(r.png), 'base64');
  if (png.length === 0 || png.length > MAX_EVIDENCE_BYTES || !png.subarray(0, 8).equals(PNG_MAGIC))
    throw new RestorelabError('TASK_FAILED', `worker ${s.worker ?? '?'} answered no PNG for session ${s.id}`, {
      hint: 'run the same restorelab version on the server and on every worker',
    });
  return png;
}

/**
 * Migrates a session a worker runs onto `dir`, a path on that worker's host
 * (held there to the worker's own api.restoreRoots), and waits for the copy.
 */
export async function migrateOnWorker(
  queue: LabQueue,
  s: RecoverySession,
  dir: string,
  format: 'raw' | 'qcow2',
  signal?: AbortSignal,
): Promise<WorkerSession> {
  if (!isAbsolute(dir))
    throw badInput(
      'BAD_FLAGS',
      `migration target ${dir} is relative`,
      `session ${s.id} runs on worker ${s.worker ?? '?'}: name an absolute path on that host`,
    );
  const task = { kind: 'migrate' as const, session: s.id, dir, format };
  return (await askWorker<SessionReply>(queue, s, task, MIGRATE_LEASE_SECONDS, signal)).session;
}

const PNG_MAGIC = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

/** Opens the queue for one CLI command, runs `f`, closes it. */
export async function withQueue<T>(url: string, f: (q: LabQueue) => Promise<T>): Promise<T> {
  const queue = await LabQueue.open({ url, ...queueTuning(), maintenanceSeconds: 3600 });
  try {
    return await f(queue);
  } finally {
    await queue.close();
  }
}

/**
 * Every session this host knows: its own records (a dead supervisor
 * noticed, src/session/recover.ts) and, with a shared catalog, the sessions
 * lab workers run; oldest first.
 */
export async function listAllSessions(stateDir: string): Promise<RecoverySession[]> {
  const { listSessions } = await import('../session/recover.js');
  const local = await listSessions(stateDir);
  const url = sharedSessionsUrl();
  if (url === undefined) return local;
  const mine = new Set(local.map((s) => s.id));
  let remote: RecoverySession[] = [];
  try {
    remote = (await workerSessions(url)).filter((s) => !mine.has(s.id));
  } catch (err) {
    // This host's own sessions are still worth listing.
    process.emitWarning(`the sessions of the lab workers are not listed: ${(err as Error).message}`);
  }
  return [...local, ...remote].sort((a, b) => a.createdAt.localeCompare(b.createdAt));
}

/**
 * The session as the shared catalog lists it, when a lab worker runs it and
 * this host keeps no record of it. Undefined for this host's sessions and
 * for unknown ones (the local call then answers SESSION_NOT_FOUND).
 */
async function onWorker(stateDir: string, id: string): Promise<RecoverySession | undefined> {
  const { SessionStore } = await import('../session/store.js');
  if (new SessionStore(stateDir).find(id) !== undefined) return undefined;
  const url = sharedSessionsUrl();
  return url === undefined ? undefined : workerSession(url, id);
}

/**
 * Stops a session wherever it runs: here when this host has its record, else
 * on its worker (through `queue`, opened only then). Unknown: SESSION_NOT_FOUND.
 */
export async function stopAnySession(
  stateDir: string,
  id: string,
  withLabQueue: <T>(f: (q: LabQueue) => Promise<T>) => Promise<T>,
): Promise<RecoverySession> {
  const remote = await onWorker(stateDir, id);
  if (remote === undefined) return (await import('../session/recover.js')).stopSession(stateDir, id);
  // Idempotent, as a local stop: a session that ended needs no worker (which may be gone by now).
  if (!ACTIVE_STATES.includes(remote.state)) return remote;
  await withLabQueue((q) => stopOnWorker(q, remote));
  // The worker recorded the stop in the shared catalog before it answered.
  return sessionAfterWorker(id, remote);
}

/**
 * Whether `s` (as listed) runs on a lab worker rather than on this host:
 * it names a worker, and this host keeps no record of it.
 */
export async function runsOnWorker(stateDir: string, s: RecoverySession): Promise<boolean> {
  if (s.worker === undefined) return false;
  const { SessionStore } = await import('../session/store.js');
  return new SessionStore(stateDir).find(s.id) === undefined;
}

/** The session as the shared catalog holds it after a worker answered (it records before answering). */
export async function sessionAfterWorker(id: string, fallback: RecoverySession): Promise<RecoverySession> {
  const url = sharedSessionsUrl();
  return (url !== undefined ? await workerSession(url, id) : undefined) ?? fallback;
}

/**
 * Migrates a session wherever it runs: here when this host has its record
 * (`dir` a path here), else on its worker (`dir` a path on that host, held
 * there to the worker's restore roots). Unknown: SESSION_NOT_FOUND.
 */
export async function migrateAnySession(
  stateDir: string,
  id: string,
  dir: string,
  format: 'raw' | 'qcow2',
  withLabQueue: <T>(f: (q: LabQueue) => Promise<T>) => Promise<T>,
): Promise<RecoverySession> {
  const remote = await onWorker(stateDir, id);
  if (remote === undefined) return (await import('../session/recover.js')).migrateSession(stateDir, id, dir, format);
  await withLabQueue((q) => migrateOnWorker(q, remote, dir, format));
  return sessionAfterWorker(id, remote);
}

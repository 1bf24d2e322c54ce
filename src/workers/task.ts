/**
 * What travels through the lab queue: a verification task and its result.
 *
 * Evidence (screenshots, console logs) is made on the worker's host, but the
 * report is written where the run was started; so a task's result carries
 * its evidence files inline, each bounded, and the server writes them into
 * the run's directory. Baseline screenshots travel the other way, in the task.
 */
import { readFileSync, statSync, writeFileSync, mkdirSync } from 'node:fs';
import { basename, isAbsolute, join } from 'node:path';
import type { Job } from '../surebackup/runner.js';
import type { RunResult, VmResult } from '../verify/contract.js';
import { RestorelabError } from '../errors.js';

/** An evidence file larger than this stays on the worker (its path is reported as missing). */
export const MAX_EVIDENCE_BYTES = 4 * 1024 * 1024;
/** Evidence and baseline names are plain file names: never a path a worker could steer. */
const SAFE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

export interface VerifyTask {
  kind: 'verify';
  /** The job, cut down to this task's VMs (dispatch.ts). */
  job: Job;
  /** The repository every worker reads the points from (a shared path or an s3:// URL). */
  repo: string;
  /** Where relative paths of the job (its lab file) are resolved, on the worker. */
  baseDir: string;
  /** The run this task belongs to, for the worker's logs. */
  run: string;
  /** Previous passing screenshots by VM name (base64 PNG), for the screenshot test's comparison. */
  baselines: Record<string, { run: string; png: string }>;
}

export interface TaskResult {
  worker: string;
  result: RunResult;
  /** Evidence files by plain name (base64). */
  evidence: Record<string, string>;
}

export function checkTask(data: unknown): VerifyTask {
  const t = data as Partial<VerifyTask> | null;
  if (!t || t.kind !== 'verify' || typeof t.repo !== 'string' || typeof t.baseDir !== 'string' || typeof t.run !== 'string' || !t.job) {
    throw new RestorelabError('TASK_INVALID', 'a lab task is not a verification task this worker understands', {
      hint: 'run the same restorelab version on the server and on every worker',
    });
  }
  for (const vm of Object.keys(t.baselines ?? {}))
    if (!SAFE_NAME.test(vm)) throw new RestorelabError('TASK_INVALID', `bad VM name in a task: ${vm}`);
  return { ...(t as VerifyTask), baselines: t.baselines ?? {} };
}

function evidencePaths(v: VmResult): string[] {
  const paths = [v.screenshot, v.console ?? null, ...v.tests.map((t) => t.artifact ?? null)];
  return [...new Set(paths.filter((p): p is string => typeof p === 'string' && p.length > 0))];
}

/** On the worker: the result with its evidence files read in. */
export function packResult(worker: string, result: RunResult): TaskResult {
  const evidence: Record<string, string> = {};
  for (const v of result.vms) {
    for (const p of evidencePaths(v)) {
      try {
        if (statSync(p).size <= MAX_EVIDENCE_BYTES) evidence[basename(p)] = readFileSync(p).toString('base64');
      } catch {
        // A missing file is reported as such by the path that no longer resolves on the server.
      }
    }
  }
  return { worker, result, evidence };
}

/** On the server: evidence written into the run's directory, and the results' paths pointing there. */
export function unpackResult(
  out: TaskResult,
  runDirectory: string,
  baselines: (vm: string) => string | undefined = () => undefined,
): VmResult[] {
  mkdirSync(runDirectory, { recursive: true });
  const written = new Map<string, string>();
  for (const [name, b64] of Object.entries(out.evidence)) {
    if (!SAFE_NAME.test(name)) continue;
    const to = join(runDirectory, name);
    writeFileSync(to, Buffer.from(b64, 'base64'));
    written.set(name, to);
  }
  const local = (p: string | null | undefined): string | null => (p ? (written.get(basename(p)) ?? null) : null);
  return out.result.vms.map((v) => ({
    ...v,
    worker: out.worker,
    screenshot: local(v.screenshot),
    console: local(v.console),
    tests: v.tests.map((t) => {
      const u = { ...t };
      if (t.artifact) u.artifact = local(t.artifact) ?? t.artifact;
      // The worker compared with its copy of the baseline; the report shows the server's own file.
      if (t.baseline) {
        const b = baselines(v.name);
        if (b) u.baseline = b;
        else delete u.baseline;
      }
      return u;
    }),
  }));
}

/**
 * A recovery a worker runs on its own host (`recover --run-on workers`,
 * `POST /sessions {"runOn": "workers"}`): the same library path as
 * `restorelab recover` there, under the worker's own driver, accelerator,
 * state directory and key file. The session keeps running under its
 * supervisor on the worker after the task ends.
 */
export interface RecoverTask {
  kind: 'recover';
  /** The repository every worker reads the points from (a shared path or an s3:// URL). */
  repo: string;
  vm: string;
  point?: string;
  /** The lab definition file, resolved against `baseDir` on the worker as a verification task's lab is. */
  lab?: string;
  baseDir: string;
  /** How the disks reach QEMU: FUSE or NBD (NFS needs the host's fixed ports, so it is never sent to a worker). */
  publish: 'fuse' | 'nbd';
  /** The VM's memory, for placement (docs/workers.md). */
  memoryMiB: number;
}

/** Stops a session a worker runs; sent to that worker's own queue (queue.ts, workerQueue). */
export interface StopTask {
  kind: 'stop';
  session: string;
}

/** The live console of a session a worker runs, as PNG (its own queue, like a stop). */
export interface ScreenshotTask {
  kind: 'screenshot';
  session: string;
}

/**
 * Migrates a session a worker runs onto storage of the worker's host. `dir`
 * is a path there: the worker checks it against its own api.restoreRoots,
 * since only it can resolve it.
 */
export interface MigrateTask {
  kind: 'migrate';
  session: string;
  dir: string;
  format: 'raw' | 'qcow2';
}

/** What a worker's own queue carries: requests about one of its sessions. */
export type SessionTask = StopTask | ScreenshotTask | MigrateTask;

/** What a worker answers for a recover, stop or migrate task: the session as the server reports it. */
export interface SessionReply {
  worker: string;
  session: WorkerSession;
}

/** What a worker answers for a screenshot task. */
export interface ScreenshotReply {
  worker: string;
  /** base64 PNG, at most MAX_EVIDENCE_BYTES decoded. */
  png: string;
}

/**
 * A session request the worker refused for a reason the client should see
 * as such (a path outside its roots, a session that is not running): an
 * answer, not a failed task, so the server can give the error's own code.
 */
export interface RefusalReply {
  worker: string;
  refused: { code: string; message: string; hint?: string };
}

/** A session on a worker, as reported: no paths of the worker's host (publication mounts, key files, sockets). */
export interface WorkerSession {
  id: string;
  worker: string;
  vm: string;
  point: string;
  state: string;
  createdAt: string;
  heartbeatSeconds: number | null;
  /** How the heartbeat was seen (agent, ip, boot-time). */
  heartbeat: string | null;
  /** NIC key → the address the worker's host reaches it on (a lab's masquerade address). */
  addresses: Record<string, string>;
  lab: string | null;
  error: { code: string; message: string } | null;
}

/** Accepts a task of any kind this worker runs, refusing anything an old or hostile server could steer. */
export function checkAnyTask(data: unknown): VerifyTask | RecoverTask {
  const kind = (data as { kind?: unknown } | null)?.kind;
  return kind === 'recover' ? checkRecoverTask(data) : checkTask(data);
}

export function checkRecoverTask(data: unknown): RecoverTask {
  const t = data as Partial<RecoverTask> | null;
  const bad = (why: string): RestorelabError =>
    new RestorelabError('TASK_INVALID', `a recovery task is not one this worker runs: ${why}`, {
      hint: 'run the same restorelab version on the server and on every worker',
    });
  if (!t || t.kind !== 'recover') throw bad('not a recovery task');
  if (typeof t.repo !== 'string' || typeof t.baseDir !== 'string') throw bad('no repository or base directory');
  // VM and point are names the repository resolves; a plain name can never walk out of it.
  if (typeof t.vm !== 'string' || !SAFE_NAME.test(t.vm)) throw bad(`bad VM name ${JSON.stringify(t.vm)}`);
  if (t.point !== undefined && (typeof t.point !== 'string' || !SAFE_NAME.test(t.point)))
    throw bad(`bad point id ${JSON.stringify(t.point)}`);
  if (t.lab !== undefined && (typeof t.lab !== 'string' || t.lab.length === 0 || t.lab.includes('\0'))) throw bad('bad lab file');
  if (t.publish !== 'fuse' && t.publish !== 'nbd') throw bad(`disks can reach QEMU over fuse or nbd, not ${String(t.publish)}`);
  if (typeof t.memoryMiB !== 'number' || !Number.isInteger(t.memoryMiB) || t.memoryMiB < 1) throw bad('no VM memory');
  return {
    kind: 'recover',
    repo: t.repo,
    vm: t.vm,
    ...(t.point !== undefined ? { point: t.point } : {}),
    ...(t.lab !== undefined ? { lab: t.lab } : {}),
    baseDir: t.baseDir,
    publish: t.publish,
    memoryMiB: t.memoryMiB,
  };
}

/** The longest migration target path a task may carry (Linux PATH_MAX). */
const MAX_DIR_BYTES = 4096;

/**
 * A request about one of the worker's sessions: a plain session id
 * (src/session/store.ts checks it again), never a path; a migration's
 * target an absolute path the worker then confines to its restore roots.
 */
export function checkSessionTask(data: unknown): SessionTask {
  const t = data as Partial<MigrateTask> | Partial<StopTask> | Partial<ScreenshotTask> | null;
  const bad = (why: string): RestorelabError =>
    new RestorelabError('TASK_INVALID', `a session task is not one this worker runs: ${why}`, {
      hint: 'run the same restorelab version on the server and on every worker',
    });
  if (!t || (t.kind !== 'stop' && t.kind !== 'screenshot' && t.kind !== 'migrate')) throw bad('not a stop, screenshot or migrate task');
  if (typeof t.session !== 'string' || !SAFE_NAME.test(t.session)) throw bad('it names no session this worker could run');
  if (t.kind !== 'migrate') return { kind: t.kind, session: t.session };
  const m = t as Partial<MigrateTask>;
  if (typeof m.dir !== 'string' || !isAbsolute(m.dir) || m.dir.includes('\0') || Buffer.byteLength(m.dir) > MAX_DIR_BYTES)
    throw bad('the migration target is not an absolute path');
  if (m.format !== 'raw' && m.format !== 'qcow2') throw bad(`disks migrate as raw or qcow2, not ${String(m.format)}`);
  return { kind: 'migrate', session: t.session, dir: m.dir, format: m.format };
}

/** The session as a worker reports it (see WorkerSession). */
export function workerSession(
  worker: string,
  s: {
    id: string;
    vm: string;
    point: string;
    state: string;
    createdAt: string;
    heartbeatSeconds?: number;
    heartbeat?: { path: string };
    addresses: Record<string, string>;
    lab?: string;
    error?: { code: string; message: string };
  },
): WorkerSession {
  return {
    id: s.id,
    worker,
    vm: s.vm,
    point: s.point,
    state: s.state,
    createdAt: s.createdAt,
    heartbeatSeconds: s.heartbeatSeconds ?? null,
    heartbeat: s.heartbeat?.path ?? null,
    addresses: s.addresses,
    lab: s.lab ?? null,
    error: s.error ? { code: s.error.code, message: s.error.message } : null,
  };
}

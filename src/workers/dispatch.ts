/**
 * Running a SureBackup job through lab workers: the job is cut into tasks,
 * each task goes to the queue, the results come back into one RunResult.
 *
 * How a job is cut: each VM under test is its own task, so N workers verify
 * N VMs at once; but a job with an application group is one task, because
 * the group's VMs and the VMs that need them share one lab (one host).
 */
import { planJob, runVerdict, type Job, type LabBackend } from '../surebackup/runner.js';
import type { RunResult, VmResult } from '../verify/contract.js';
import { LabQueue } from './queue.js';
import { queueTuning, workersUrl } from './url.js';
import type { LabDispatch } from '../scheduler/run.js';
import { STALE_AFTER_MS, WorkerRegistry } from './registry.js';
import { readFileSync, statSync } from 'node:fs';
import { MAX_EVIDENCE_BYTES, unpackResult, type TaskResult, type VerifyTask } from './task.js';
import { notFound } from '../errors.js';

export interface DispatchOptions {
  queue: LabQueue;
  /** Lists the VMs of `verify.vms: "all"` or a tag, as the local runner would. */
  backend: Pick<LabBackend, 'listVms' | 'listPoints'>;
  repo: string;
  baseDir: string;
  run: string;
  /** Where the evidence of every task is written (the run's directory). */
  runDirectory: string;
  /** The VM's previous passing screenshot (the history's), sent with its task for the screenshot test. */
  baseline?: (vm: string) => { run: string; path: string } | undefined;
  signal?: AbortSignal;
  log?: (line: string) => void;
}

/** The tasks of a job: one per VM under test, or one for all when there is an application group. */
export async function splitJob(job: Job, backend: Pick<LabBackend, 'listVms'>): Promise<Job[]> {
  const vms = job.verify.vms === 'all' || job.verify.vms === undefined ? await backend.listVms(job.verify.tag) : job.verify.vms;
  if (vms.length === 0) {
    throw notFound(
      'NO_VMS_TO_VERIFY',
      `job ${job.name} selects no VM to verify`,
      'back up the VMs the job should verify, or change verify.vms / verify.tag',
    );
  }
  if (job.applicationGroup.length > 0) return [{ ...job, verify: { ...job.verify, vms } }];
  return vms.map((vm) => ({ ...job, verify: { ...job.verify, vms: [vm] } }));
}

function vmNames(part: Job): string[] {
  return [...part.applicationGroup.map((g) => g.name), ...(Array.isArray(part.verify.vms) ? part.verify.vms : [])];
}

function baselinesOf(part: Job, baseline: DispatchOptions['baseline']): VerifyTask['baselines'] {
  const out: VerifyTask['baselines'] = {};
  for (const vm of vmNames(part)) {
    const b = baseline?.(vm);
    if (!b) continue;
    try {
      if (statSync(b.path).size <= MAX_EVIDENCE_BYTES) out[vm] = { run: b.run, png: readFileSync(b.path).toString('base64') };
    } catch {
      // No baseline file: the screenshot test runs without a comparison, as it does on a first run.
    }
  }
  return out;
}

export async function dispatchJob(job: Job, o: DispatchOptions): Promise<RunResult> {
  // Bad input (a VM without tests, no restore point) is refused here, before anything is queued.
  await planJob(job, o.backend);
  const parts = await splitJob(job, o.backend);
  const ids: string[] = [];
  for (const part of parts) {
    const task: VerifyTask = {
      kind: 'verify',
      job: part,
      repo: o.repo,
      baseDir: o.baseDir,
      run: o.run,
      baselines: baselinesOf(part, o.baseline),
    };
    ids.push(await o.queue.submit(task));
  }
  o.log?.(`run ${o.run}: ${ids.length} task(s) queued for the lab workers`);
  const watch = new AbortController();
  const watching = watchOrphans(o.queue, ids, watch.signal, o.log).catch((err: Error) => o.log?.(`orphan watch stopped: ${err.message}`));
  const outcomes = await Promise.allSettled(ids.map((id) => o.queue.outcome<TaskResult>(id, o.signal))).finally(() => watch.abort());
  await watching;
  if (o.signal?.aborted) throw o.signal.reason;
  const vms: VmResult[] = [];
  let labKept = false;
  for (const [i, out] of outcomes.entries()) {
    const part = parts[i]!;
    if (out.status === 'fulfilled') {
      vms.push(...unpackResult(out.value, o.runDirectory, (vm) => o.baseline?.(vm)?.path));
      labKept ||= out.value.result.labKept;
      continue;
    }
    // A task that failed for good (every worker died on it, or none could run it) fails its VMs: never a silent pass.
    const reason = out.reason instanceof Error ? out.reason.message : String(out.reason);
    const names = vmNames(part);
    const at = Date.now();
    for (const name of names) {
      vms.push({
        name,
        point: '',
        group: part.applicationGroup.some((g) => g.name === name),
        result: 'failed',
        tests: [{ name: 'worker', kind: 'worker', result: 'failed', seconds: 0, detail: reason }],
        startedAt: at,
        endedAt: at,
        screenshot: null,
        console: null,
        bootToHeartbeatSeconds: null,
        toFirstAnswerSeconds: null,
        recoverySeconds: 0,
      });
    }
  }
  return { result: runVerdict(vms), vms, labKept };
}

/**
 * Gives back the tasks of workers that died. A task is *orphaned* when it is
 * active but no live worker lists it among its tasks (a worker lists a task
 * from the moment it takes it, and refreshes the list with every heartbeat);
 * after STALE_AFTER_MS of that it is failed, so pg-boss retries it on another
 * worker. The lease (queue.ts) stays as a backstop for a server that dies
 * too, but it cannot tell a dead worker from a slow one: this can.
 */
export async function watchOrphans(queue: LabQueue, ids: string[], signal: AbortSignal, log?: (line: string) => void): Promise<void> {
  const registry = new WorkerRegistry(queue.sql);
  await registry.ensureSchema();
  const unclaimedSince = new Map<string, number>();
  while (!signal.aborted) {
    const claimed = new Set((await registry.list()).filter((w) => w.alive).flatMap((w) => w.tasks));
    for (const id of ids) {
      const state = (await queue.status(id)).state;
      if (state !== 'active' || claimed.has(id)) {
        unclaimedSince.delete(id);
        continue;
      }
      const since = unclaimedSince.get(id) ?? Date.now();
      unclaimedSince.set(id, since);
      if (Date.now() - since >= STALE_AFTER_MS) {
        log?.(`task ${id}: its worker is gone; giving it back to the queue`);
        await queue.orphaned(id, 'the worker running it stopped answering');
        unclaimedSince.delete(id);
      }
    }
    await new Promise<void>((res) => {
      const done = (): void => {
        clearTimeout(t);
        signal.removeEventListener('abort', done);
        res();
      };
      const t = setTimeout(done, ORPHAN_CHECK_MS);
      signal.addEventListener('abort', done, { once: true });
    });
  }
}

/** How often a waiting server looks for tasks whose worker died. */
const ORPHAN_CHECK_MS = 2_000;

/**
 * The server's LabDispatch (src/scheduler/run.ts): runs of jobs with
 * `runOn: workers` go through the queue, opened on the first such run and
 * kept for the process; a queue that cannot be opened fails that run only.
 */
export function queueDispatch(catalog: string, log?: (line: string) => void): { dispatch: LabDispatch; close(): Promise<void> } {
  let queue: Promise<LabQueue> | undefined;
  const open = (): Promise<LabQueue> =>
    (queue ??= LabQueue.open({ url: workersUrl(catalog), ...queueTuning() }).catch((err: unknown) => {
      queue = undefined;
      throw err;
    }));
  return {
    dispatch: async (job, o) =>
      dispatchJob(job, {
        queue: await open(),
        backend: o.backend,
        repo: o.repo,
        baseDir: o.baseDir,
        run: o.run.id,
        runDirectory: o.run.dir,
        baseline: o.run.baseline,
        ...(o.run.signal ? { signal: o.run.signal } : {}),
        ...(log ? { log } : {}),
      }),
    close: async () => {
      const q = await queue?.catch(() => undefined);
      await q?.close();
    },
  };
}

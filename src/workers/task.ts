/**
 * What travels through the lab queue: a verification task and its result.
 *
 * Evidence (screenshots, console logs) is made on the worker's host, but the
 * report is written where the run was started; so a task's result carries
 * its evidence files inline, each bounded, and the server writes them into
 * the run's directory. Baseline screenshots travel the other way, in the task.
 */
import { readFileSync, statSync, writeFileSync, mkdirSync } from 'node:fs';
import { basename, join } from 'node:path';
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

/** Loads a job file: schema first, then the cron expression with croner, so a bad job fails before anything boots. */
import { Cron } from 'croner';
import { badInput } from '../errors.js';
import { loadValidated } from '../schema/validate.js';
import { dirname, join, resolve } from 'node:path';
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { writeFileAtomic } from '../host/atomic-file.js';
import type { Job } from './runner.js';
import type { TestSpec } from '../verify/contract.js';
import { resolveScript } from '../verify/script.js';

export interface JobFile extends Omit<Job, 'concurrency' | 'point' | 'applicationGroup'> {
  applicationGroup?: Job['applicationGroup'];
  point?: string;
  concurrency?: number;
  schedule?: string;
  afterBackup?: boolean;
  /** `workers`: the run's VMs go to the lab workers whoever starts it (docs/workers.md). */
  runOn?: 'host' | 'workers';
  notifications?: { webhook?: string; smtp?: { host: string; port?: number; secure?: boolean; from: string; to: string[] } };
}

export function loadJob(path: string): Job & JobFile {
  const j = loadValidated<JobFile>('job.schema.json', path, 'SureBackup job');
  if (j.schedule !== undefined) {
    try {
      new Cron(j.schedule, { paused: true }).stop();
    } catch (err) {
      throw badInput(
        'BAD_SCHEDULE',
        `job ${j.name}: schedule "${j.schedule}" is not a valid cron expression (${(err as Error).message})`,
        'use five or six cron fields, e.g. "0 2 * * *" for 02:00 every day',
      );
    }
  }
  // Script paths are relative to the job file, and a missing script is bad input now, not after a boot.
  const scripts = (tests: TestSpec[] | undefined, owner: string): TestSpec[] | undefined =>
    tests?.map((t) => (t.kind === 'script' ? { ...t, path: resolveScript(t.path, dirname(path), `job ${j.name}, ${owner}`) } : t));
  const applicationGroup = (j.applicationGroup ?? []).map((g) => ({ ...g, tests: scripts(g.tests, `VM ${g.name}`) }));
  for (const g of applicationGroup) if (g.tests === undefined) delete g.tests;
  const overrides =
    j.verify.overrides === undefined
      ? undefined
      : Object.fromEntries(
          Object.entries(j.verify.overrides).map(([vm, o]) => [vm, { ...o, ...(o.tests ? { tests: scripts(o.tests, `VM ${vm}`) } : {}) }]),
        );
  const verify = {
    ...j.verify,
    ...(j.verify.tests ? { tests: scripts(j.verify.tests, 'verify') } : {}),
    ...(overrides ? { overrides } : {}),
  };
  // The scan gate's rule file, relative to the job file like scripts; a missing one is bad input before anything boots.
  const scan = j.scan === undefined ? undefined : { ...j.scan, rules: resolve(dirname(path), j.scan.rules) };
  if (scan && !existsSync(scan.rules))
    throw badInput(
      'JOB_SCAN_RULES_MISSING',
      `job ${j.name}: the scan rule file ${scan.rules} does not exist`,
      'give "scan": {"rules": "<file.yar>"} relative to the job file',
    );
  return { ...j, applicationGroup, verify, point: j.point ?? 'latest', concurrency: j.concurrency ?? 3, ...(scan ? { scan } : {}) };
}

/**
 * The job `text` would be as `<dir>/<name>.json`, checked as loadJob checks a
 * file (the cron expression, script files relative to the job's directory,
 * which the schema cannot): it reads a probe file beside the real one, whose
 * name does not end in .json, so no lister sees it.
 */
export function checkJobText(dir: string, name: string, text: string): Job & JobFile {
  const probe = join(dir, `.${name}.${randomBytes(4).toString('hex')}.probe`);
  mkdirSync(dir, { recursive: true });
  try {
    writeFileSync(probe, text);
    return loadJob(probe);
  } finally {
    rmSync(probe, { force: true });
  }
}

/** Writes the job file `<dir>/<name>.json` crash-safely: a reader sees the old job or the new one, never half of it. */
export async function writeJobFile(dir: string, name: string, text: string): Promise<void> {
  await writeFileAtomic(dir, `${name}.json`, text);
}

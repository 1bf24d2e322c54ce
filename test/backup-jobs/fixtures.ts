/**
 * Backup job fixtures: small VM definitions and raw images written by the
 * test itself (distinct random data per VM, so points differ), and a job
 * file over them.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { exec } from '../../src/host/exec.js';
import { projectPath } from '../../src/paths.js';
import { initRepository } from '../../src/repo/repository.js';

/** Writes `<dir>/<name>.json` (one disk "root", format raw) and `<dir>/<name>.raw` of `mib` MiB; returns both paths. */
export function smallVm(dir: string, name: string, mib = 2): { vm: string; image: string } {
  const vm = join(dir, `${name}.json`);
  const image = join(dir, `${name}.raw`);
  writeFileSync(vm, JSON.stringify({ name, memoryMiB: 64, vcpus: 1, disks: [{ name: 'root', format: 'raw' }], nics: [] }));
  writeFileSync(image, randomBytes(mib * 1024 * 1024));
  return { vm, image };
}

/** Writes a job file `<dir>/<file>` and returns its path. */
export function jobFile(dir: string, file: string, job: Record<string, unknown>): string {
  const path = join(dir, file);
  writeFileSync(path, JSON.stringify(job, null, 2));
  return path;
}

/** What the CLI tests share: a repository, a state directory, jobs directories and the VM alpha, and the CLI run over them. */
export interface CliHome {
  state: string;
  repoDir: string;
  /** Backup jobs (RESTORELAB_BACKUP_JOBS_DIR) and SureBackup jobs (RESTORELAB_JOBS_DIR). */
  jobs: string;
  sureBackupJobs: string;
  env: Record<string, string>;
  cli(args: string[]): ReturnType<typeof exec>;
  /** Alpha as a job in `jobs` names it. */
  alphaVm: { vm: string; source: { disks: Record<string, string> } };
}

export async function cliHome(dir: string): Promise<CliHome> {
  const state = join(dir, 'state');
  const repoDir = join(dir, 'repo');
  const jobs = join(dir, 'backup-jobs');
  const sureBackupJobs = join(dir, 'jobs');
  mkdirSync(jobs);
  mkdirSync(sureBackupJobs);
  smallVm(dir, 'alpha', 1);
  await initRepository(repoDir, { chunkSize: 256 * 1024 });
  const env = {
    RESTORELAB_STATE_DIR: state,
    RESTORELAB_REPO: repoDir,
    RESTORELAB_BACKUP_JOBS_DIR: jobs,
    RESTORELAB_JOBS_DIR: sureBackupJobs,
  };
  return {
    state,
    repoDir,
    jobs,
    sureBackupJobs,
    env,
    cli: (args) =>
      exec(process.execPath, [projectPath('bin', 'restorelab.js'), ...args], { timeoutMs: 60_000, env: { ...process.env, ...env } }),
    alphaVm: { vm: '../alpha.json', source: { disks: { root: '../alpha.raw' } } },
  };
}

/** `backup-job run --json` as the tests read it. */
export interface RunJson {
  run: string;
  job: string;
  status: string;
  detail: string | null;
  vms: { vm: string; status: string; point: string | null; pruned: string[]; error: string | null }[];
  surebackup: { job: string; run: string | null; status: string; detail?: string | null }[];
}

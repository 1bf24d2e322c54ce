/**
 * One run of a backup job at a time across processes: the server's
 * scheduler, its API and `restorelab backup-job run` all take
 * `<stateDir>/backup-jobs/<name>.lock` (created exclusively, holding the
 * runner's pid) before a run starts. A lock whose process is gone (killed,
 * host rebooted) is stale and taken over. Within one process the scheduler's
 * gate decides first; this file is what a second process sees.
 */
import { closeSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { ensurePrivateDir, PRIVATE_FILE_MODE } from '../../host/private-files.js';
import { processAlive } from '../../host/process.js';
import { isErrno } from '../../errors.js';

export type RunLock = { release(): void } | { heldBy: number };

export function runLockFile(stateDir: string, job: string): string {
  return join(stateDir, 'backup-jobs', `${job}.lock`);
}

function holder(path: string): number | undefined {
  try {
    return Number.parseInt(readFileSync(path, 'utf8'), 10) || undefined;
  } catch {
    return undefined;
  }
}

/** Takes the job's run lock, or says which live process holds it. */
export function claimRunLock(stateDir: string, job: string): RunLock {
  const path = runLockFile(stateDir, job);
  ensurePrivateDir(join(stateDir, 'backup-jobs'));
  // Twice at most: a stale lock is removed once, then the exclusive create decides between racing takers.
  for (let attempt = 0; attempt < 2; attempt++) {
    let fd: number;
    try {
      fd = openSync(path, 'wx', PRIVATE_FILE_MODE);
    } catch (err) {
      if (!isErrno(err, 'EEXIST')) throw err;
      const pid = holder(path);
      if (pid !== undefined && processAlive(pid)) return { heldBy: pid };
      rmSync(path, { force: true });
      continue;
    }
    try {
      writeSync(fd, `${process.pid}\n`);
    } finally {
      closeSync(fd);
    }
    return {
      release: () => {
        if (holder(path) === process.pid) rmSync(path, { force: true });
      },
    };
  }
  return { heldBy: holder(path) ?? 0 };
}

/**
 * Whether a process still runs: the one definition every state file, lock and
 * driver of restorelab uses (pid files of publications, sessions, locks, QEMU).
 */
import { readFileSync } from 'node:fs';
import { isErrno } from '../errors.js';

/**
 * True while `pid` exists and is not a zombie.
 *
 * - ESRCH from `kill(pid, 0)`: dead.
 * - EPERM: alive (it exists, it just belongs to another user, e.g. a QEMU run by libvirt).
 * - A zombie counts as dead: a background process whose parent exited waits for
 *   init to reap it, and a killed child lingers so until its parent reaps it;
 *   it holds no locks and serves nothing. The state comes from /proc/PID/stat.
 */
export function processAlive(pid: number | undefined): boolean {
  if (pid === undefined || !Number.isInteger(pid) || pid <= 0) return false;
  if (!signalable(pid)) return false;
  const state = processState(pid);
  if (state === 'Z') return false;
  // No stat: it exited a moment ago, or /proc hides it (hidepid); ask again.
  return state !== undefined || signalable(pid);
}

/** kill(pid, 0): ESRCH is gone, EPERM exists under another user. */
function signalable(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return isErrno(err, 'EPERM');
  }
}

/**
 * The one-letter state of `pid` from /proc/PID/stat (R, S, D, Z, …), undefined
 * when it is gone. The state follows the command name, which is in
 * parentheses and may itself hold ')'.
 */
export function processState(pid: number): string | undefined {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  const close = stat.lastIndexOf(')');
  return close < 0 ? undefined : stat.slice(close + 2, close + 3) || undefined;
}

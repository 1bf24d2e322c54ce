/** Whether a process still runs, as the state files of restorelab's own processes need to know. */
import { readFileSync } from 'node:fs';

/**
 * True while `pid` exists and is not a zombie. A zombie counts as dead: a
 * background process whose parent exited waits for init to reap it, and a
 * killed one can linger so until then.
 */
export function processAlive(pid: number | undefined): boolean {
  if (!pid) return false;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The state follows the command name, which is in parentheses and may itself hold ')'.
    const close = stat.lastIndexOf(')');
    return stat.slice(close + 2, close + 3) !== 'Z';
  } catch {
    return false;
  }
}

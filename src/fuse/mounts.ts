/**
 * Mount-point housekeeping for FUSE: is a directory a mount point, is it a
 * stale FUSE mount left by a crashed server (ENOTCONN), and clearing one.
 */
import fs from 'node:fs';
import path from 'node:path';
import { exec, which } from '../host/exec.js';

export interface MountEntry {
  mountPoint: string;
  fstype: string;
  source: string;
  /** The mounted filesystem's device, `major:minor` (0:N for FUSE). */
  device: string;
}

/** /proc/self/mountinfo decodes spaces and such as octal escapes. */
function unescape(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

export function mountEntry(dir: string): MountEntry | undefined {
  const target = path.resolve(dir);
  let found: MountEntry | undefined;
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const parts = line.split(' ');
    const sep = parts.indexOf('-');
    if (sep < 0 || !parts[4]) continue;
    if (unescape(parts[4]) === target) found = { mountPoint: target, fstype: parts[sep + 1] ?? '', source: unescape(parts[sep + 2] ?? ''), device: parts[2] ?? '' };
  }
  return found;
}

/**
 * True when `dir` is a FUSE mount whose server is gone (stat fails with
 * ENOTCONN). Asynchronous on purpose: a synchronous stat of a mount served by
 * this very process would block the loop that has to answer it.
 */
export async function isStaleFuseMount(dir: string): Promise<boolean> {
  try {
    // statfs always reaches the server; stat may be answered from cached attributes.
    await fs.promises.statfs(dir);
    return false;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ENOTCONN';
  }
}

/** Detaches a FUSE mount: fusermount -uz, falling back to umount -l. Resolves whether it is gone. */
export async function detachMount(dir: string): Promise<boolean> {
  const fusermount = which('fusermount') ?? which('fusermount3');
  if (fusermount) await exec(fusermount, ['-uz', dir], { timeoutMs: 10_000 });
  if (mountEntry(dir)) await exec(which('umount') ?? 'umount', ['-l', dir], { timeoutMs: 10_000 });
  return mountEntry(dir) === undefined;
}

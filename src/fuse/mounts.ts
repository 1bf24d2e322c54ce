/**
 * Mount-point housekeeping for FUSE: is a directory a mount point, is it a
 * stale FUSE mount left by a crashed server (ENOTCONN), and clearing one.
 * The mount table itself is src/host/mounts.ts.
 */
import fs from 'node:fs';
import { exec, which } from '../host/exec.js';
import { mountEntry } from '../host/mounts.js';

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

/**
 * libfuse2 opens /dev/fuse without close-on-exec, so every process a FUSE
 * publisher starts inherits the session's descriptor. A QEMU holding it
 * outlives a crashed publisher as an unkillable process and keeps the dead
 * mount busy. Node cannot set FD_CLOEXEC, but spawn() can dup /dev/null over
 * any descriptor number in the child: that is what this does.
 */
import fs from 'node:fs';
import type { StdioOptions, StdioPipe, StdioNull } from 'node:child_process';

type StdioEntry = StdioPipe | StdioNull | 'inherit' | 'ipc' | number | null | undefined;

let devNull: number | undefined;

/** Descriptor numbers of this process that are open on /dev/fuse. */
export function fuseDescriptors(): number[] {
  let names: string[];
  try {
    names = fs.readdirSync('/proc/self/fd');
  } catch {
    return [];
  }
  return names.map(Number).filter((fd) => {
    try {
      return fs.readlinkSync(`/proc/self/fd/${fd}`) === '/dev/fuse';
    } catch {
      return false;
    }
  });
}

/** `stdio` extended so that the child gets /dev/null where this process has /dev/fuse. */
export function stdioWithoutFuse(stdio: StdioEntry[]): StdioOptions {
  const fuse = fuseDescriptors().filter((fd) => fd >= stdio.length);
  if (fuse.length === 0) return stdio as StdioOptions;
  devNull ??= fs.openSync('/dev/null', 'r');
  const out: StdioEntry[] = [...stdio];
  for (let fd = stdio.length; fd <= Math.max(...fuse); fd++) out.push(fuse.includes(fd) ? devNull : 'ignore');
  return out as StdioOptions;
}

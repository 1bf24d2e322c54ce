/**
 * The host's loop devices and mount table, as file-level restore uses them:
 * attach a byte range of a file read-only, mount it, and check before undoing
 * anything that a recorded device or mount is still the one we made (after a
 * reboot a loop device number can belong to someone else).
 */
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { exec, which } from '../host/exec.js';
import { isMountPoint } from '../host/mounts.js';
import { RestorelabError, missingComponent } from '../errors.js';

const TOOL_TIMEOUT_MS = 60_000;

export function requireTool(name: string, pkg: string): string {
  const p = which(name);
  if (!p) throw missingComponent(name, `install ${pkg} (apt-get install ${pkg})`);
  return p;
}

export interface LoopInfo {
  device: string;
  backing: string;
  offset: number;
}

/** What the kernel says a loop device is attached to, or undefined when it is free. */
export function loopInfo(device: string): LoopInfo | undefined {
  const sys = `/sys/block/${basename(device)}/loop`;
  try {
    const backing = readFileSync(`${sys}/backing_file`, 'utf8').trim();
    const offset = Number(readFileSync(`${sys}/offset`, 'utf8').trim());
    return { device, backing, offset };
  } catch {
    return undefined;
  }
}

export async function attachLoop(file: string, offset: number, size: number): Promise<string> {
  const losetup = requireTool('losetup', 'mount');
  const r = await exec(losetup, ['--find', '--show', '--read-only', '--offset', String(offset), '--sizelimit', String(size), file], {
    timeoutMs: TOOL_TIMEOUT_MS,
  });
  const dev = r.stdout.trim();
  if (r.code !== 0 || !dev.startsWith('/dev/')) {
    throw new RestorelabError(
      'LOOP_ATTACH_FAILED',
      `cannot attach ${file} (offset ${offset}, ${size} bytes) as a loop device: ${r.stderr.trim() || `exit ${r.code}`}`,
      {
        hint: 'check that loop devices are available (`losetup -f`; modprobe loop) and that `restorelab doctor` is green',
      },
    );
  }
  return dev;
}

export async function detachLoop(device: string): Promise<void> {
  const r = await exec(requireTool('losetup', 'mount'), ['-d', device], { timeoutMs: TOOL_TIMEOUT_MS });
  if (r.code !== 0 && loopInfo(device)) {
    throw new RestorelabError('LOOP_DETACH_FAILED', `cannot detach ${device}: ${r.stderr.trim()}`, {
      hint: `something still uses ${device}; find it with \`fuser -vm ${device}\``,
    });
  }
}

/** Runs mount(8) with an explicit type so the kernel never guesses a driver. */
export async function mountDevice(device: string, dir: string, driver: string, options: string[]): Promise<void> {
  const r = await exec(requireTool('mount', 'mount'), ['-t', driver, '-o', options.join(','), device, dir], { timeoutMs: TOOL_TIMEOUT_MS });
  if (r.code !== 0) {
    throw new RestorelabError(
      'MOUNT_FAILED',
      `cannot mount ${device} (${driver}, ${options.join(',')}) on ${dir}: ${r.stderr.trim() || `exit ${r.code}`}`,
      {
        hint: "the filesystem may be damaged or need a journal replay we refuse to do; `dmesg | tail` has the kernel's reason",
      },
    );
  }
}

export async function unmount(dir: string, opts: { lazy?: boolean } = {}): Promise<void> {
  const r = await exec(requireTool('umount', 'mount'), [...(opts.lazy ? ['-l'] : []), dir], { timeoutMs: TOOL_TIMEOUT_MS });
  if (r.code !== 0 && isMountPoint(dir)) {
    throw new RestorelabError('UNMOUNT_FAILED', `cannot unmount ${dir}: ${r.stderr.trim()}`, {
      hint: `a process is using files below ${dir}; find it with \`fuser -vm ${dir}\`, stop it, and run \`restorelab umount\` again`,
    });
  }
}

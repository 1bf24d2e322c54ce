/**
 * Shared by the recovery integration tests: a real repository holding a
 * backup of the `web` test guest, the CLI run as a script would run it, and
 * the checks that a stopped session left nothing behind.
 */
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { exec, type ExecResult } from '../../src/host/exec.js';
import { projectPath } from '../../src/paths.js';
import { initRepository } from '../../src/repo/repository.js';
import { CHUNKS_DIR } from '../../src/repo/format.js';
import { backupVm } from '../../src/backup/engine.js';
import { loadVmDefinition } from '../../src/vm/definition.js';
import type { RestorePoint } from '../../src/repo/contract.js';
import { guestImage } from '../helpers/guests.js';

export const BOOT_TIMEOUT_MS = 150_000;
export const WEB_EXPECT = 'restorelab web guest OK';

/** A repository in `dir`/repo with one restore point of `web`. */
export async function webRepository(dir: string): Promise<{ repo: string; point: RestorePoint }> {
  const image = await guestImage('web');
  const repoDir = join(dir, 'repo');
  const repo = await initRepository(repoDir);
  const vm = loadVmDefinition(projectPath('lab-templates', 'vms', 'web.json'));
  const point = await backupVm({ repo, vm, disks: { root: image }, source: image });
  return { repo: repoDir, point };
}

/** Name, size, mtime and content hash of every chunk: any write to the repository changes it. */
export function chunkFingerprint(repo: string): string {
  const h = createHash('sha256');
  const walk = (d: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else {
        const st = statSync(p);
        h.update(`${p} ${st.size} ${st.mtimeMs}\n`);
        h.update(readFileSync(p));
      }
    }
  };
  walk(join(repo, CHUNKS_DIR));
  return h.digest('hex');
}

/** Runs the CLI as a script would: compiled, with the given state directory. */
export function cli(args: string[], stateDir: string, timeoutMs = BOOT_TIMEOUT_MS + 60_000): Promise<ExecResult> {
  return exec(process.execPath, [projectPath('bin', 'restorelab.js'), ...args], {
    timeoutMs, env: { ...process.env, RESTORELAB_STATE_DIR: stateDir, RESTORELAB_ACCEL: 'tcg' },
  });
}

export function lastJsonLine<T>(stdout: string): T {
  const line = stdout.trim().split('\n').at(-1) ?? '';
  return JSON.parse(line) as T;
}

export async function httpGet(url: string, deadlineMs = 60_000): Promise<{ status: number; body: string }> {
  const end = Date.now() + deadlineMs;
  for (;;) {
    try {
      const r = await fetch(url, { signal: AbortSignal.timeout(5000) });
      return { status: r.status, body: await r.text() };
    } catch (e) {
      if (Date.now() > end) throw e;
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}

export async function waitFor(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** What a session could leave behind, as the host shows it. */
export async function residue(opts: { domain: string; netns?: string; mount: string; supervisorPid?: number }): Promise<string[]> {
  const left: string[] = [];
  const ps = await exec('ps', ['-eo', 'pid,args']);
  if (ps.stdout.split('\n').some((l) => l.includes('qemu-system') && l.includes(opts.domain))) left.push(`a QEMU process for ${opts.domain}`);
  if (opts.supervisorPid !== undefined && existsSync(`/proc/${opts.supervisorPid}`)) left.push(`supervisor pid ${opts.supervisorPid}`);
  if (opts.netns && (await exec('ip', ['netns', 'list'])).stdout.includes(opts.netns)) left.push(`namespace ${opts.netns}`);
  if (readFileSync('/proc/mounts', 'utf8').includes(opts.mount)) left.push(`mount under ${opts.mount}`);
  return left;
}

/** Taps of a lab namespace (`tapN`), or in the host namespace for libvirt's brief hand-over. */
export async function hostTaps(): Promise<string[]> {
  const r = await exec('ip', ['-j', 'link', 'show', 'type', 'tun']);
  return (JSON.parse(r.stdout || '[]') as { ifname: string }[]).map((l) => l.ifname);
}

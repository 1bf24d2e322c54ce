/**
 * The script test: a user command run inside the lab namespace, so it reaches
 * the VM at its production address exactly as the VMs under test would.
 * It gets VM_NAME, VM_IP and VM_MASQ_IP in its environment and its own
 * timeout; exit code 0 passes. Its stdout is kept (the last STDOUT_KEEP bytes)
 * as the test's detail, because that is what a person reads when it fails.
 *
 * Jobs the server runs (scheduler, API) are written by API admins, who are
 * not root on the host, so their scripts run under a ScriptPolicy: only
 * executables inside api.scriptsDir (checked on the real path at every
 * run), as api.scriptUser (default nobody), for at most api.scriptMaxSeconds,
 * with a small environment. `restorelab surebackup run FILE` runs without a
 * policy: root running its own job file is trusted with what the file names.
 */
import { spawn } from 'node:child_process';
import { accessSync, constants, statSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';
import { badInput, RestorelabError } from '../errors.js';
import type { TestResult } from './contract.js';
import type { ApiLimits } from '../config/config.js';
import { confine } from '../host/confine.js';
import { lookupUser, type HostUser } from '../host/users.js';

export const SCRIPT_DEFAULT_TIMEOUT_SECONDS = 60;
const STDOUT_KEEP = 16 * 1024;

/** Resolves a script path (relative to `baseDir`) and checks it can run: bad input before anything boots. */
export function resolveScript(path: string, baseDir: string, owner: string): string {
  const abs = isAbsolute(path) ? path : resolve(baseDir, path);
  let ok: boolean;
  try {
    ok = statSync(abs).isFile();
    accessSync(abs, constants.X_OK);
  } catch {
    ok = false;
  }
  if (!ok) {
    throw badInput(
      'SCRIPT_NOT_FOUND',
      `${owner}: script ${abs} does not exist or is not executable`,
      "give the path of an executable file (relative paths are resolved against the job file's directory)",
    );
  }
  return abs;
}

/** How the scripts of server-run jobs are confined (see the head of this file). */
export interface ScriptPolicy {
  /** Scripts must resolve (realpath) inside this directory. */
  dir: string;
  /** They run as this user (looked up at each run, so a bad name fails the test, not the server). */
  user: string;
  /** Upper bound on a script's timeout. */
  maxSeconds: number;
}

/** The policy of the server's job runs, from the config (api.scriptsDir, api.scriptUser, api.scriptMaxSeconds). */
export function serverScriptPolicy(limits: ApiLimits): ScriptPolicy {
  return { dir: limits.scriptsDir, user: limits.scriptUser, maxSeconds: limits.scriptMaxSeconds };
}

/** The real path of a script when it is inside the scripts directory; else SCRIPT_NOT_ALLOWED. */
export function allowedScript(path: string, dir: string, owner: string): string {
  const real = confine(path, [dir]);
  if (real !== undefined) return real;
  throw new RestorelabError('SCRIPT_NOT_ALLOWED', `${owner}: script ${path} is outside the scripts directory ${dir}`, {
    hint: "jobs the server runs may only start executables inside api.scriptsDir: install the script there (root-owned, not writable by api.scriptUser) and give its path, or set api.scriptsDir in the server's config file",
  });
}

export interface ScriptTarget {
  netns: string;
  name: string;
  ip: string;
  masqIp: string;
}

/** How a script run ended. */
export interface ScriptEnd {
  code: number | null;
  signal: NodeJS.Signals | null;
  timedOut: boolean;
  timeoutSeconds: number;
  stdout: string;
  stderr: string;
}

/**
 * Exit 0 passes; a timeout, a signal or any other code fails. The detail is
 * its stdout, and on failure what ended it and the tail of its stderr.
 */
export function judgeScript(e: ScriptEnd): { ok: boolean; detail: string } {
  const out = e.stdout.trim();
  if (e.timedOut) return { ok: false, detail: `timed out after ${e.timeoutSeconds} s; stdout: ${out}` };
  if (e.code === 0) return { ok: true, detail: out };
  const tail = e.stderr.trim() === '' ? '' : `; stderr: ${e.stderr.trim().slice(-500)}`;
  return { ok: false, detail: `exit ${e.code ?? e.signal}; stdout: ${out}${tail}` };
}

export function scriptTest(
  spec: { path: string; args?: string[]; timeoutSeconds?: number },
  vm: ScriptTarget,
  signal?: AbortSignal,
  policy?: ScriptPolicy,
): Promise<TestResult> {
  const t0 = Date.now();
  let timeoutS = spec.timeoutSeconds ?? SCRIPT_DEFAULT_TIMEOUT_SECONDS;
  const vmEnv = { VM_NAME: vm.name, VM_IP: vm.ip, VM_MASQ_IP: vm.masqIp };
  let command = [spec.path, ...(spec.args ?? [])];
  let env: NodeJS.ProcessEnv = { ...process.env, ...vmEnv };
  let cwd: string | undefined;
  if (policy) {
    let real: string;
    let user: HostUser;
    try {
      real = allowedScript(spec.path, policy.dir, 'script test');
      user = lookupUser(policy.user, 'api.scriptUser');
    } catch (err) {
      return Promise.resolve({
        name: 'script',
        kind: 'script',
        result: 'failed',
        seconds: 0,
        detail: `refused: ${(err as Error).message}`,
      });
    }
    timeoutS = Math.min(timeoutS, policy.maxSeconds);
    // `ip netns exec` needs root (setns), so the user is dropped after it, by
    // setpriv: spawn's uid/gid options would drop it before and the netns
    // could not be entered. No supplementary groups, no way back up (no_new_privs).
    command = [
      'setpriv',
      `--reuid=${user.uid}`,
      `--regid=${user.gid}`,
      '--clear-groups',
      '--no-new-privs',
      '--',
      real,
      ...(spec.args ?? []),
    ];
    // Not the server's environment: it may name key files and tokens.
    env = { PATH: '/usr/local/bin:/usr/bin:/bin', HOME: '/', LANG: 'C.UTF-8', ...vmEnv };
    cwd = policy.dir;
  }
  // Stryker disable all: the script runs inside a lab namespace (judged by judgeScript above);
  // test/verify/lab-tests.test.ts and script-policy.test.ts run it for real.
  return new Promise((resolveResult, reject) => {
    const child = spawn('ip', ['netns', 'exec', vm.netns, ...command], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env,
      ...(cwd ? { cwd } : {}),
      detached: true, // its own process group, so a timeout kills the script's children too
    });
    let out = '';
    let err = '';
    let timedOut = false;
    const keep = (s: string, d: Buffer): string => (s + d.toString()).slice(-STDOUT_KEEP);
    child.stdout.on('data', (d: Buffer) => (out = keep(out, d)));
    child.stderr.on('data', (d: Buffer) => (err = keep(err, d)));
    const kill = (): void => {
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        /* already gone */
      }
    };
    const timer = setTimeout(() => {
      timedOut = true;
      kill();
    }, timeoutS * 1000);
    const onAbort = (): void => kill();
    signal?.addEventListener('abort', onAbort, { once: true });
    child.on('error', (e) => {
      clearTimeout(timer);
      resolveResult(done(false, `cannot start: ${e.message}`));
    });
    child.on('close', (code, sig) => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      if (signal?.aborted) {
        reject(signal.reason);
        return;
      }
      const j = judgeScript({ code, signal: sig, timedOut, timeoutSeconds: timeoutS, stdout: out, stderr: err });
      resolveResult(done(j.ok, j.detail));
    });
    function done(ok: boolean, detail: string, stdout = out): TestResult & { stdout: string } {
      return { name: 'script', kind: 'script', result: ok ? 'passed' : 'failed', seconds: (Date.now() - t0) / 1000, detail, stdout };
    }
  });
  // Stryker restore all
}

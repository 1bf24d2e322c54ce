/**
 * The script test: a user command run inside the lab namespace, so it reaches
 * the VM at its production address exactly as the VMs under test would.
 * It gets VM_NAME, VM_IP and VM_MASQ_IP in its environment and its own
 * timeout; exit code 0 passes. Its stdout is kept (the last STDOUT_KEEP bytes)
 * as the test's detail, because that is what a person reads when it fails.
 */
import { spawn } from 'node:child_process';
import { accessSync, constants, statSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';
import { badInput } from '../errors.js';
import type { TestResult } from '../surebackup/runner.js';

export const SCRIPT_DEFAULT_TIMEOUT_SECONDS = 60;
const STDOUT_KEEP = 16 * 1024;

/** Resolves a script path (relative to `baseDir`) and checks it can run: bad input before anything boots. */
export function resolveScript(path: string, baseDir: string, owner: string): string {
  const abs = isAbsolute(path) ? path : resolve(baseDir, path);
  let ok: boolean;
  try { ok = statSync(abs).isFile(); accessSync(abs, constants.X_OK); } catch { ok = false; }
  if (!ok) {
    throw badInput('SCRIPT_NOT_FOUND', `${owner}: script ${abs} does not exist or is not executable`,
      'give the path of an executable file (relative paths are resolved against the job file\'s directory)');
  }
  return abs;
}

export interface ScriptTarget { netns: string; name: string; ip: string; masqIp: string }

export function scriptTest(spec: { path: string; args?: string[]; timeoutSeconds?: number }, vm: ScriptTarget, signal?: AbortSignal): Promise<TestResult> {
  const t0 = Date.now();
  const timeoutS = spec.timeoutSeconds ?? SCRIPT_DEFAULT_TIMEOUT_SECONDS;
  return new Promise((resolveResult, reject) => {
    const child = spawn('ip', ['netns', 'exec', vm.netns, spec.path, ...(spec.args ?? [])], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, VM_NAME: vm.name, VM_IP: vm.ip, VM_MASQ_IP: vm.masqIp },
      detached: true, // its own process group, so a timeout kills the script's children too
    });
    let out = '';
    let err = '';
    let timedOut = false;
    const keep = (s: string, d: Buffer): string => (s + d.toString()).slice(-STDOUT_KEEP);
    child.stdout.on('data', (d: Buffer) => (out = keep(out, d)));
    child.stderr.on('data', (d: Buffer) => (err = keep(err, d)));
    const kill = (): void => { try { process.kill(-child.pid!, 'SIGKILL'); } catch { /* already gone */ } };
    const timer = setTimeout(() => { timedOut = true; kill(); }, timeoutS * 1000);
    const onAbort = (): void => kill();
    signal?.addEventListener('abort', onAbort, { once: true });
    child.on('error', (e) => { clearTimeout(timer); resolveResult(done(false, `cannot start: ${e.message}`)); });
    child.on('close', (code, sig) => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      if (signal?.aborted) { reject(signal.reason); return; }
      if (timedOut) { resolveResult(done(false, `timed out after ${timeoutS} s; stdout: ${out.trim()}`)); return; }
      const tail = err.trim() === '' ? '' : `; stderr: ${err.trim().slice(-500)}`;
      resolveResult(done(code === 0, code === 0 ? out.trim() : `exit ${code ?? sig}; stdout: ${out.trim()}${tail}`, out));
    });
    function done(ok: boolean, detail: string, stdout = out): TestResult & { stdout: string } {
      return { name: 'script', kind: 'script', result: ok ? 'passed' : 'failed', seconds: (Date.now() - t0) / 1000, detail, stdout };
    }
  });
}

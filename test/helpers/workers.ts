/**
 * Lab workers as the tests start them: the real CLI (`restorelab worker`)
 * on a queue, TCG guests under the qemu driver, fast polling; its output
 * collected for assertions. Shared by test/workers/*.test.ts.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { projectPath } from '../../src/paths.js';

export interface Worker {
  proc: ChildProcess;
  log: () => string;
  stateDir: string;
}

export function startWorker(name: string, url: string, stateDir: string, extra: string[] = [], env: Record<string, string> = {}): Worker {
  mkdirSync(stateDir, { recursive: true });
  const proc = spawn(process.execPath, [projectPath('bin', 'restorelab.js'), 'worker', '--name', name, ...extra], {
    env: {
      ...process.env,
      RESTORELAB_QUEUE: url,
      RESTORELAB_STATE_DIR: stateDir,
      RESTORELAB_ACCEL: 'tcg',
      RESTORELAB_DRIVER: 'qemu',
      RESTORELAB_QUEUE_POLL_SECONDS: '1',
      RESTORELAB_QUEUE_MAINTENANCE_SECONDS: '2',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  return { proc, log: () => out, stateDir };
}

export async function until(what: string, f: () => boolean | Promise<boolean>, ms = 120_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await f())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

export function stop(w: Worker): Promise<void> {
  if (w.proc.exitCode !== null || w.proc.signalCode !== null) return Promise.resolve();
  return new Promise((res) => {
    w.proc.once('exit', () => res());
    w.proc.kill('SIGTERM');
  });
}

/** Runs the real CLI (bin/restorelab.js) as a child process, with a private home and state directory. */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { projectPath } from '../../src/paths.js';

/** The command line and environment, for tests that start the CLI themselves (to kill it). */
export function cliCommand(home: string, extraEnv: Record<string, string> = {}): { bin: string; env: NodeJS.ProcessEnv } {
  return {
    bin: projectPath('bin', 'restorelab.js'),
    env: { ...process.env, RESTORELAB_HOME: home, RESTORELAB_STATE_DIR: join(home, 'state'), ...extraEnv },
  };
}

export interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
  json: Record<string, unknown>;
}

export function cliIn(home: string, extraEnv: Record<string, string> = {}): (args: string[]) => Promise<CliRun> {
  const { bin, env } = cliCommand(home, extraEnv);
  return (args) =>
    new Promise((resolve, reject) => {
      const child = spawn(process.execPath, [bin, ...args], { env });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      child.on('error', reject);
      child.on('close', (code) => {
        let json: Record<string, unknown> = {};
        try {
          json = JSON.parse(stdout) as Record<string, unknown>;
        } catch {
          // not every call asks for --json
        }
        resolve({ code, stdout, stderr, json });
      });
    });
}

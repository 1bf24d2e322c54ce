/**
 * A private, read-only qemu-nbd serving one image on a unix socket in its own
 * temp directory, and the guarantees that it goes away:
 * - close() stops it (SIGTERM to its process group, SIGKILL if it lingers);
 * - if our process exits normally, an 'exit' hook kills every one still alive;
 * - if our process dies hard (SIGKILL, crash), the kernel kills qemu-nbd:
 *   it runs under `setpriv --pdeathsig KILL`, so it receives SIGKILL the moment
 *   its parent (us) is gone. No exit hook can cover that case.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { which } from '../host/exec.js';
import { badInput, missingComponent } from '../errors.js';
import { NbdClient } from '../nbd/client.js';

const live = new Set<ChildProcess>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const child of live) killGroup(child, 'SIGKILL');
  });
}

function killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    // already gone
  }
}

export interface QemuNbdOptions {
  path: string;
  format: string;
  /** Extra metadata contexts to select besides base:allocation (e.g. qemu:dirty-bitmap:b0). */
  metaContexts?: string[];
  /** Dirty bitmaps to export (qemu-nbd --bitmap); the live-backup issue uses this. */
  bitmaps?: string[];
  timeoutMs?: number;
}

export class QemuNbd {
  private stopped = false;

  private constructor(
    readonly child: ChildProcess,
    readonly dir: string,
    readonly socketPath: string,
    readonly client: NbdClient,
  ) {}

  /** Starts qemu-nbd, waits until it accepts us, and returns it with a connected client. */
  static async start(opts: QemuNbdOptions): Promise<QemuNbd> {
    const qemuNbd = which('qemu-nbd');
    if (!qemuNbd) throw missingComponent('qemu-nbd', 'install it: apt-get install qemu-utils');
    const setpriv = which('setpriv');
    if (!setpriv) throw missingComponent('setpriv', 'install it: apt-get install util-linux');
    const timeoutMs = opts.timeoutMs ?? 30_000;
    const dir = mkdtempSync(join(tmpdir(), 'restorelab-nbd-'));
    const socketPath = join(dir, 'nbd.sock');
    const args = [
      '--pdeathsig',
      'KILL',
      '--',
      qemuNbd,
      '--read-only',
      '--persistent',
      '--shared=4',
      `--format=${opts.format}`,
      `--socket=${socketPath}`,
      ...(opts.bitmaps ?? []).map((b) => `--bitmap=${b}`),
      opts.path,
    ];
    installExitHook();
    // detached: its own process group, so a kill reaches anything it forks too.
    const child = spawn(setpriv, args, { detached: true, stdio: ['ignore', 'ignore', 'pipe'] });
    live.add(child);
    let stderr = '';
    child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    const cleanup = (): void => {
      killGroup(child, 'SIGKILL');
      live.delete(child);
      rmSync(dir, { recursive: true, force: true });
    };
    const deadline = Date.now() + timeoutMs;
    try {
      for (;;) {
        if (child.exitCode !== null || child.signalCode !== null) {
          throw badInput(
            'IMAGE_UNREADABLE_BY_QEMU',
            `qemu-nbd cannot serve ${opts.path} as ${opts.format}: ${stderr.trim() || `exit ${child.exitCode ?? child.signalCode}`}`,
            `check the image with: qemu-img info ${opts.path}`,
          );
        }
        try {
          const client = await NbdClient.connect({
            socketPath,
            timeoutMs,
            metaContexts: ['base:allocation', ...(opts.metaContexts ?? [])],
          });
          return new QemuNbd(child, dir, socketPath, client);
        } catch (err) {
          const code = (err as { cause?: NodeJS.ErrnoException }).cause?.code;
          if (code !== 'ENOENT' && code !== 'ECONNREFUSED') throw err;
        }
        if (Date.now() > deadline) throw new Error(`qemu-nbd did not open ${socketPath} within ${timeoutMs} ms: ${stderr.trim()}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    } catch (err) {
      cleanup();
      throw err;
    }
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  /** Disconnects the client and stops qemu-nbd; resolves once the process is gone. Idempotent. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    try {
      await this.client.close();
    } finally {
      const child = this.child;
      if (child.exitCode === null && child.signalCode === null) {
        const gone = new Promise<void>((r) => child.once('exit', () => r()));
        killGroup(child, 'SIGTERM');
        const t = setTimeout(() => killGroup(child, 'SIGKILL'), 3000);
        await gone;
        clearTimeout(t);
      }
      live.delete(child);
      rmSync(this.dir, { recursive: true, force: true });
    }
  }
}

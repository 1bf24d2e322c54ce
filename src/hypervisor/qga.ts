/**
 * A QEMU guest-agent client over the host end of the virtio-serial channel
 * org.qemu.guest_agent.0 (a unix socket QEMU or libvirt exposes).
 *
 * Unlike QMP there is no greeting, and the channel outlives our connection:
 * the agent may still hold half a command from an earlier client, or an old
 * reply may be queued. So every session starts with guest-sync-delimited:
 * we send a 0xFF byte (the agent's parser discards everything up to it),
 * then a sync with a random id; the agent answers with 0xFF followed by the
 * id, and every reply before the one carrying our id is stale and dropped.
 * The agent handles one command at a time, so we keep one in flight.
 */
import { connect, type Socket } from 'node:net';
import { randomInt } from 'node:crypto';
import { JsonLineFramer } from './jsonlines.js';

export class QgaError extends Error {
  constructor(
    readonly command: string,
    readonly errorClass: string,
    desc: string,
  ) {
    super(`guest agent ${command}: ${errorClass}: ${desc}`);
    this.name = 'QgaError';
  }
}

export interface ExecResult {
  exitcode: number;
  stdout: string;
  stderr: string;
  signal?: number;
}

export const QGA_DEFAULT_TIMEOUT_MS = 10_000;

interface Waiter {
  accept: (msg: Record<string, unknown>) => boolean;
}

export class QgaClient {
  private waiter: Waiter | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private closed = false;

  private constructor(
    private readonly sock: Socket,
    readonly path: string,
  ) {}

  /** Opens the channel and synchronises; fails if the agent does not answer in time. */
  static async connect(path: string, opts: { timeoutMs?: number } = {}): Promise<QgaClient> {
    const sock = connect(path);
    await new Promise<void>((resolve, reject) => {
      sock.once('connect', () => resolve());
      sock.once('error', reject);
    });
    const client = new QgaClient(sock, path);
    const framer = new JsonLineFramer((m) => client.waiter?.accept(m));
    sock.on('data', (d: Buffer) => framer.push(d));
    sock.on('error', () => {
      /* surfaced through close */
    });
    sock.on('close', () => {
      client.closed = true;
    });
    try {
      await client.sync(opts.timeoutMs ?? QGA_DEFAULT_TIMEOUT_MS);
    } catch (e) {
      sock.destroy();
      throw e;
    }
    return client;
  }

  /** Flushes stale replies: only the answer carrying our random id counts. */
  sync(timeoutMs = QGA_DEFAULT_TIMEOUT_MS): Promise<void> {
    const id = randomInt(1, 2 ** 31);
    return this.serial(async () => {
      this.sock.write(Buffer.from([0xff]));
      await this.roundTrip('guest-sync-delimited', { id }, timeoutMs, (m) => m.return === id);
    });
  }

  execute<T = unknown>(command: string, args?: Record<string, unknown>, timeoutMs = QGA_DEFAULT_TIMEOUT_MS): Promise<T> {
    return this.serial(() => this.roundTrip(command, args, timeoutMs, () => true) as Promise<T>);
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  private roundTrip(
    command: string,
    args: Record<string, unknown> | undefined,
    timeoutMs: number,
    matches: (m: Record<string, unknown>) => boolean,
  ): Promise<unknown> {
    if (this.closed) return Promise.reject(new Error(`guest agent channel ${this.path} is closed (${command})`));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = undefined;
        reject(new Error(`guest agent ${command}: no reply within ${timeoutMs} ms (is qemu-ga running in the guest?)`));
      }, timeoutMs);
      this.waiter = {
        accept: (m) => {
          if ('error' in m) {
            // An error reply is ours only when we are not waiting for a sync id.
            if (command === 'guest-sync-delimited') return false;
            const err = m.error as { class?: string; desc?: string };
            clearTimeout(timer);
            this.waiter = undefined;
            reject(new QgaError(command, err.class ?? 'GenericError', err.desc ?? 'unknown error'));
            return true;
          }
          if (!('return' in m) || !matches(m)) return false;
          clearTimeout(timer);
          this.waiter = undefined;
          resolve(m.return);
          return true;
        },
      };
      const msg = args === undefined ? { execute: command } : { execute: command, arguments: args };
      this.sock.write(JSON.stringify(msg) + '\n');
    });
  }

  async ping(timeoutMs = QGA_DEFAULT_TIMEOUT_MS): Promise<void> {
    await this.execute('guest-ping', undefined, timeoutMs);
  }

  /** Runs a program in the guest and waits for it; output is decoded from base64. */
  async exec(path: string, args: string[] = [], opts: { timeoutMs?: number; input?: string } = {}): Promise<ExecResult> {
    const timeoutMs = opts.timeoutMs ?? 30_000;
    const started = await this.execute<{ pid: number }>('guest-exec', {
      path,
      arg: args,
      'capture-output': true,
      ...(opts.input !== undefined ? { 'input-data': Buffer.from(opts.input).toString('base64') } : {}),
    });
    const deadline = Date.now() + timeoutMs;
    let delay = 50;
    for (;;) {
      const st = await this.execute<{ exited: boolean; exitcode?: number; signal?: number; 'out-data'?: string; 'err-data'?: string }>(
        'guest-exec-status',
        { pid: started.pid },
      );
      if (st.exited) {
        return {
          exitcode: st.exitcode ?? -1,
          stdout: Buffer.from(st['out-data'] ?? '', 'base64').toString('utf8'),
          stderr: Buffer.from(st['err-data'] ?? '', 'base64').toString('utf8'),
          ...(st.signal !== undefined ? { signal: st.signal } : {}),
        };
      }
      if (Date.now() > deadline) throw new Error(`guest-exec ${path}: still running after ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 500);
    }
  }

  /** Returns the number of filesystems frozen. */
  fsfreeze(): Promise<number> {
    return this.execute<number>('guest-fsfreeze-freeze', undefined, 60_000);
  }

  fsthaw(): Promise<number> {
    return this.execute<number>('guest-fsfreeze-thaw', undefined, 60_000);
  }

  close(): void {
    this.closed = true;
    this.sock.destroy();
  }
}

/** Connects and pings until the guest agent answers: the VM's heartbeat. */
export async function waitForAgent(path: string, timeoutMs: number): Promise<QgaClient> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const c = await QgaClient.connect(path, { timeoutMs: Math.min(3000, Math.max(500, deadline - Date.now())) });
      await c.ping();
      return c;
    } catch (e) {
      last = e;
      await new Promise((r) => setTimeout(r, 500));
    }
  }
  throw new Error(`guest agent at ${path} gave no heartbeat within ${timeoutMs} ms: ${String(last)}`);
}

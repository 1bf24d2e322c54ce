/**
 * A QMP client: QEMU's machine protocol over a unix socket.
 *
 * Session: the server sends a greeting {"QMP": {...}}; we answer with
 * qmp_capabilities; after that every command carries an "id" that QEMU
 * echoes in its {"return"} or {"error"} reply, and asynchronous {"event"}s
 * may arrive between them. One connection, many outstanding commands.
 */
import { connect, type Socket } from 'node:net';
import { EventEmitter } from 'node:events';
import { JsonLineFramer } from './jsonlines.js';

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

export class QmpError extends Error {
  constructor(
    readonly command: string,
    readonly errorClass: string,
    desc: string,
  ) {
    super(`QMP ${command}: ${errorClass}: ${desc}`);
    this.name = 'QmpError';
  }
}

interface Pending {
  command: string;
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

export const QMP_DEFAULT_TIMEOUT_MS = 10_000;

export class QmpClient extends EventEmitter {
  private nextId = 1;
  private readonly pending = new Map<string, Pending>();
  private closed = false;
  greeting: Record<string, unknown> | undefined;

  private constructor(private readonly sock: Socket) {
    super();
  }

  /** Connects, reads the greeting and negotiates capabilities. */
  static async connect(path: string, opts: { timeoutMs?: number } = {}): Promise<QmpClient> {
    const timeoutMs = opts.timeoutMs ?? QMP_DEFAULT_TIMEOUT_MS;
    const sock = connect(path);
    const client = new QmpClient(sock);
    const greeting = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`QMP ${path}: no greeting within ${timeoutMs} ms`)), timeoutMs);
      client.once('greeting', () => {
        clearTimeout(timer);
        resolve();
      });
      sock.once('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
      sock.once('close', () => {
        clearTimeout(timer);
        reject(new Error(`QMP ${path}: closed before greeting`));
      });
    });
    const framer = new JsonLineFramer((m) => client.onMessage(m));
    sock.on('data', (d: Buffer) => framer.push(d));
    sock.on('error', () => {
      /* surfaced through close */
    });
    sock.on('close', () => client.onClose());
    try {
      await greeting;
      await client.execute('qmp_capabilities', undefined, timeoutMs);
    } catch (e) {
      sock.destroy();
      throw e;
    }
    return client;
  }

  private onMessage(msg: Record<string, unknown>): void {
    if ('QMP' in msg) {
      this.greeting = msg.QMP as Record<string, unknown>;
      this.emit('greeting', this.greeting);
      return;
    }
    if (typeof msg.event === 'string') {
      this.emit('event', msg as unknown as QmpEvent);
      return;
    }
    const id = typeof msg.id === 'string' ? msg.id : undefined;
    const p = id ? this.pending.get(id) : undefined;
    if (!p || !id) return;
    this.pending.delete(id);
    clearTimeout(p.timer);
    if ('error' in msg) {
      const err = msg.error as { class?: string; desc?: string };
      p.reject(new QmpError(p.command, err.class ?? 'GenericError', err.desc ?? 'unknown error'));
    } else {
      p.resolve(msg.return);
    }
  }

  private onClose(): void {
    this.closed = true;
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new Error(`QMP connection closed while waiting for ${p.command}`));
      this.pending.delete(id);
    }
    this.emit('close');
  }

  get isClosed(): boolean {
    return this.closed;
  }

  execute<T = unknown>(command: string, args?: Record<string, unknown>, timeoutMs = QMP_DEFAULT_TIMEOUT_MS): Promise<T> {
    if (this.closed) return Promise.reject(new Error(`QMP connection is closed (${command})`));
    const id = `rl-${this.nextId++}`;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`QMP ${command}: no reply within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer });
      const msg = args === undefined ? { execute: command, id } : { execute: command, arguments: args, id };
      this.sock.write(JSON.stringify(msg) + '\n');
    });
  }

  /** Resolves with the first event of that name for which `match` holds. */
  waitEvent(name: string, match: (e: QmpEvent) => boolean = () => true, timeoutMs = QMP_DEFAULT_TIMEOUT_MS): Promise<QmpEvent> {
    return new Promise((resolve, reject) => {
      const onEvent = (e: QmpEvent): void => {
        if (e.event !== name || !match(e)) return;
        cleanup();
        resolve(e);
      };
      const onClose = (): void => {
        cleanup();
        reject(new Error(`QMP closed while waiting for event ${name}`));
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`QMP: no ${name} event within ${timeoutMs} ms`));
      }, timeoutMs);
      const cleanup = (): void => {
        clearTimeout(timer);
        this.off('event', onEvent);
        this.off('close', onClose);
      };
      this.on('event', onEvent);
      this.on('close', onClose);
    });
  }

  close(): Promise<void> {
    if (this.closed) return Promise.resolve();
    return new Promise((resolve) => {
      this.sock.once('close', () => resolve());
      this.sock.end();
      setTimeout(() => this.sock.destroy(), 1000).unref();
    });
  }
}

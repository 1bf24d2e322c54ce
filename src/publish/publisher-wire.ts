/**
 * How a session's supervisor talks to the shared publisher
 * (shared-publisher.ts): one JSON object per line on
 * `<stateDir>/publisher/control.sock` (in the owner-only state directory:
 * the directory's mode is the access control), each request with a `seq`
 * that its reply carries back.
 *
 * A connection is also a lease: the publications opened on it are closed
 * (overlay kept, for `stop` to discard) when it ends without closing them,
 * because the supervisor that asked for them is gone. The other way round,
 * the supervisor sees the publisher gone when the connection ends.
 */
import { createHash } from 'node:crypto';
import { connect, createServer, type Server } from 'node:net';
import { resolve as resolvePath } from 'node:path';
import { join } from 'node:path';
import { RestorelabError, type WireError } from '../errors.js';
import { createInterface } from 'node:readline';
import type { PublicationInfo, PublicationOwner, PublishOptions } from './contract.js';

/** The shared publisher's directory under the state directory: its control socket and log. */
export function publisherDir(stateDir: string): string {
  return join(stateDir, 'publisher');
}

export function publisherSocket(stateDir: string): string {
  return join(publisherDir(stateDir), 'control.sock');
}

/** The lock's name: abstract (a leading NUL), so it dies with its holder and never names a file. */
export function publisherLockName(stateDir: string): string {
  const hash = createHash('sha256').update(resolvePath(stateDir)).digest('hex').slice(0, 24);
  return `\0restorelab-publisher-${hash}`;
}

/**
 * Takes the state directory's publisher lock, or undefined when another
 * process holds it. Here, apart from the publisher's own modules, so that
 * the publishers that lose a start race exit before loading them.
 */
export function holdPublisherLock(stateDir: string): Promise<Server | undefined> {
  // Nobody connects to the lock: it only says that this process serves the state directory.
  const lock = createServer((s) => s.destroy());
  return new Promise((resolve, reject) => {
    lock.once('error', (e: NodeJS.ErrnoException) => (e.code === 'EADDRINUSE' ? resolve(undefined) : reject(e)));
    lock.listen(publisherLockName(stateDir), () => resolve(lock));
  });
}

/** What one repository's reading has done, for a storm's profile and the tests. */
export interface SharedReadingStats {
  repo: string;
  publications: number;
  cacheHits: number;
  cacheMisses: number;
  cachedChunks: number;
}

export interface PublisherStats {
  pid: number;
  publications: string[];
  repositories: SharedReadingStats[];
}

export type PublisherRequest =
  | { op: 'hello' }
  | { op: 'publish'; opts: PublishOptions; keyFile?: string }
  | { op: 'close'; id: string; discard: boolean; as?: PublicationOwner }
  | { op: 'stats' };

export type PublisherReply =
  { seq: number; ok: true; publication?: PublicationInfo; stats?: PublisherStats } | { seq: number; ok: false; error: WireError };

export function toWireError(e: unknown): WireError {
  if (e instanceof RestorelabError) return { code: e.code, message: e.message, ...(e.hint ? { hint: e.hint } : {}), exitCode: e.exitCode };
  return { code: 'INTERNAL', message: e instanceof Error ? e.message : String(e) };
}

/**
 * One connection to the shared publisher: requests in order of sending,
 * `ended` resolving once the connection is gone (with why, when it was not
 * closed by this side).
 */
export class PublisherConnection {
  private seq = 0;
  private readonly waiting = new Map<number, { resolve: (r: PublisherReply) => void; reject: (e: Error) => void }>();
  private closing = false;
  /** Why the connection ended, once it has. */
  private gone: string | undefined;
  /** Resolves when the connection ends; with a reason unless this side closed it. */
  readonly ended: Promise<string | undefined>;

  private constructor(private readonly sock: import('node:net').Socket) {
    let done!: (why: string | undefined) => void;
    this.ended = new Promise((r) => (done = r));
    onLines(sock, (m) => {
      const reply = m as PublisherReply;
      const w = this.waiting.get(reply.seq);
      this.waiting.delete(reply.seq);
      w?.resolve(reply);
    });
    sock.on('error', () => undefined);
    sock.on('close', () => {
      const why = this.closing ? undefined : 'the shared publisher closed the connection (it stopped or crashed)';
      this.gone = why ?? 'the connection to the shared publisher was closed';
      for (const w of this.waiting.values())
        w.reject(new RestorelabError('PUBLISHER_GONE', why ?? 'the connection to the shared publisher was closed'));
      this.waiting.clear();
      done(why);
    });
  }

  /** Connects; rejects with the socket's error (ENOENT, ECONNREFUSED: nobody serves there). */
  static open(socket: string): Promise<PublisherConnection> {
    return new Promise((resolve, reject) => {
      const sock = connect(socket);
      sock.once('connect', () => {
        sock.removeListener('error', reject);
        resolve(new PublisherConnection(sock));
      });
      sock.once('error', reject);
    });
  }

  /** Sends one request; rejects with the publisher's error, or PUBLISHER_GONE / PUBLISHER_TIMEOUT. */
  request(req: PublisherRequest, timeoutMs: number): Promise<PublisherReply & { ok: true }> {
    const seq = ++this.seq;
    return new Promise((resolve, reject) => {
      if (this.gone !== undefined) {
        reject(new RestorelabError('PUBLISHER_GONE', this.gone));
        return;
      }
      const timer = setTimeout(() => {
        this.waiting.delete(seq);
        reject(new RestorelabError('PUBLISHER_TIMEOUT', `the shared publisher did not answer "${req.op}" within ${timeoutMs / 1000} s`));
      }, timeoutMs);
      this.waiting.set(seq, {
        resolve: (r) => {
          clearTimeout(timer);
          if (r.ok) resolve(r);
          else reject(RestorelabError.revive(r.error));
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      this.sock.write(JSON.stringify({ ...req, seq }) + '\n');
    });
  }

  close(): void {
    this.closing = true;
    this.sock.end();
  }
}

/** Calls `onMessage` with each JSON object line of `sock`; a line that is not one is dropped (the peer is ours, a bad line a bug). */
export function onLines(sock: import('node:net').Socket, onMessage: (m: Record<string, unknown>) => void): void {
  createInterface({ input: sock, crlfDelay: Infinity }).on('line', (line) => {
    let m: unknown;
    try {
      m = JSON.parse(line);
    } catch {
      return;
    }
    if (m && typeof m === 'object' && !Array.isArray(m)) onMessage(m as Record<string, unknown>);
  });
}

/** One request on a connection of its own (a stop from another process). */
export async function requestPublisher(socket: string, req: PublisherRequest, timeoutMs: number): Promise<PublisherReply & { ok: true }> {
  const c = await PublisherConnection.open(socket).catch((e: unknown) => {
    throw new RestorelabError('PUBLISHER_GONE', `the shared publisher at ${socket} does not answer (${(e as Error).message})`);
  });
  try {
    return await c.request(req, timeoutMs);
  } finally {
    c.close();
  }
}

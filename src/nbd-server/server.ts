/**
 * NbdServer: the files of a Datastore served as NBD exports (proto.md, fixed
 * newstyle only), on a unix socket and/or TCP. Like the NFS and FUSE
 * frontends it knows nothing about repositories or overlays: every byte goes
 * through the Datastore seam, so a corrupt chunk is an EIO here too and
 * writes land wherever the datastore puts them (a publication's overlay).
 * What it supports is in docs/nbd.md.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { RestorelabError } from '../errors.js';
import type { Datastore } from '../datastore/types.js';
import { ReplyBufferPool } from '../host/buffer-pool.js';
import { allowListMatcher } from '../host/allow-list.js';
import { NbdConnection, type NbdExport } from './connection.js';

export type { NbdExport } from './connection.js';

export interface NbdServerOptions {
  datastore: Datastore;
  /** Current exports, looked up at each handshake (publications come and go). */
  exports: () => NbdExport[];
  /** Bound on concurrent connections (default 64); more are refused at accept. */
  maxConnections?: number;
  /**
   * Client CIDRs (or addresses) allowed over TCP, where NBD has no access
   * control of its own; default loopback only (127.0.0.0/8, ::1). Unix socket
   * clients are governed by the socket's file mode instead.
   */
  allow?: string[];
  /** A client that has not finished negotiating by then is dropped (default 10 s). */
  handshakeTimeoutMs?: number;
}

interface Listener {
  server: net.Server;
  /** The unix socket's path and inode, to remove it at close only if it is still ours. */
  socketPath?: string;
  ino?: number;
}

/** Whether something accepts connections on the unix socket `p`. */
function socketLive(p: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(p);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

export class NbdServer {
  private readonly listeners: Listener[] = [];
  private readonly connections = new Set<NbdConnection>();
  private readonly maxConnections: number;
  private closing = false;
  private readonly tcpAllowed: (addr: string) => boolean;
  /**
   * READ reply buffers: 2 MiB covers what qemu and nbdcopy ask for (128 KiB
   * to 2 MiB); 16 kept is one connection's in-flight limit, 32 MiB at most.
   */
  private readonly replyBuffers = new ReplyBufferPool(2 * 1024 * 1024, 16);

  constructor(private readonly o: NbdServerOptions) {
    this.maxConnections = o.maxConnections ?? 64;
    this.tcpAllowed = allowListMatcher(o.allow ?? ['127.0.0.0/8', '::1']);
  }

  /** Connections being served now. */
  get connectionCount(): number {
    return this.connections.size;
  }

  private accept(socket: net.Socket, transport: 'unix' | 'tcp'): void {
    const stranger = transport === 'tcp' && !this.tcpAllowed(socket.remoteAddress ?? '');
    if (this.closing || stranger || this.connections.size >= this.maxConnections) {
      socket.destroy();
      return;
    }
    socket.setNoDelay?.(true);
    const conn = new NbdConnection(socket, {
      datastore: this.o.datastore,
      exports: this.o.exports,
      transport,
      handshakeTimeoutMs: this.o.handshakeTimeoutMs ?? 10_000,
      replyBuffers: this.replyBuffers,
    });
    this.connections.add(conn);
    void conn.closed.then(() => this.connections.delete(conn));
  }

  private listen(server: net.Server, arg: net.ListenOptions): Promise<void> {
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(arg, () => {
        server.off('error', reject);
        resolve();
      });
    });
  }

  /** Listens on a unix socket (mode 0600 by default, created atomically; an existing stale socket is replaced). */
  async listenUnix(socketPath: string, o: { mode?: number } = {}): Promise<void> {
    const st = await fs.promises.lstat(socketPath).catch(() => undefined);
    if (st && !st.isSocket())
      throw new RestorelabError('NBD_SOCKET_PATH', `${socketPath} exists and is not a socket`, {
        hint: 'choose another socket path; the NBD server replaces only a stale socket',
      });
    if (st && (await socketLive(socketPath)))
      throw new RestorelabError('NBD_SOCKET_IN_USE', `another server listens on ${socketPath}`, {
        hint: 'stop that server or choose another socket path',
      });
    // Bound under a temporary name, given its mode, then renamed into place:
    // the path never names a socket with a looser mode, and a stale socket is
    // replaced in one step.
    const tmp = path.join(path.dirname(socketPath), `.nbd-${randomBytes(6).toString('hex')}`);
    const server = net.createServer((s) => this.accept(s, 'unix'));
    await this.listen(server, { path: tmp });
    try {
      await fs.promises.chmod(tmp, o.mode ?? 0o600);
      await fs.promises.rename(tmp, socketPath);
    } catch (err) {
      server.close();
      await fs.promises.rm(tmp, { force: true });
      throw err;
    }
    const ino = (await fs.promises.lstat(socketPath)).ino;
    this.listeners.push({ server, socketPath, ino });
  }

  /** Listens on TCP; resolves the bound port (port 0 = any). */
  async listenTcp(host: string, port: number): Promise<{ port: number }> {
    const server = net.createServer((s) => this.accept(s, 'tcp'));
    await this.listen(server, { host, port });
    this.listeners.push({ server });
    return { port: (server.address() as net.AddressInfo).port };
  }

  /** Stops listening and closes every connection; in-flight writes are committed first. */
  async close(): Promise<void> {
    this.closing = true;
    const listeners = this.listeners.splice(0);
    const stopped = listeners.map((l) => new Promise<void>((resolve) => l.server.close(() => resolve())));
    await Promise.all([...this.connections].map((c) => c.shutdown()));
    await Promise.all(stopped);
    for (const l of listeners) {
      if (!l.socketPath) continue;
      const st = await fs.promises.lstat(l.socketPath).catch(() => undefined);
      if (st && st.ino === l.ino) await fs.promises.rm(l.socketPath, { force: true });
    }
  }
}

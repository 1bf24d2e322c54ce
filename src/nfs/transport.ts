/**
 * The TCP side of ONC RPC: one listener, many connections, each with a record
 * framer. Calls on one connection run concurrently and their replies leave
 * in completion order (clients match them by xid). A connection that sends
 * an oversized or unparseable record is closed; others are untouched.
 */
import net from 'node:net';
import { decodeCall, MalformedCallError, type RpcDispatcher } from './rpc.js';
import { RecordBufferPool, RecordFramer, RecordTooLargeError, recordMark } from './record.js';

export interface TransportOptions {
  host: string;
  port: number;
  /** Largest record accepted: a WRITE of wtmax plus headers. */
  maxRecord: number;
  /** Calls in flight per connection before reading from it pauses. */
  maxInFlight: number;
  /** Reply bytes queued for a slow reader before reading from it pauses. */
  maxUnsentBytes: number;
  /** The pool replies may take buffers from: each is given back once written. */
  replyBuffers?: RecordBufferPool;
}

export interface TransportCounters {
  connections: number;
  closedForAbuse: number;
}

export class RpcListener {
  private server: net.Server | undefined;
  private readonly sockets = new Set<net.Socket>();
  readonly counters: TransportCounters = { connections: 0, closedForAbuse: 0 };
  /** Shared by the connections; a few free buffers are kept, so idle memory stays small. */
  private readonly records: RecordBufferPool;

  constructor(private readonly dispatcher: RpcDispatcher, private readonly opts: TransportOptions) {
    this.records = new RecordBufferPool(opts.maxRecord, 8);
  }

  async listen(): Promise<number> {
    const server = net.createServer((s) => this.accept(s));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host: this.opts.host, port: this.opts.port }, () => {
        server.off('error', reject);
        resolve();
      });
    });
    return (server.address() as net.AddressInfo).port;
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    const server = this.server;
    this.server = undefined;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  private accept(socket: net.Socket): void {
    this.sockets.add(socket);
    this.counters.connections++;
    socket.setNoDelay(true);
    const framer = new RecordFramer(this.opts.maxRecord, this.records);
    const remoteAddress = (socket.remoteAddress ?? '').replace(/^::ffff:/, '');
    const remotePort = socket.remotePort ?? 0;
    let inFlight = 0;
    let closed = false;
    const abuse = (): void => {
      this.counters.closedForAbuse++;
      closed = true;
      socket.destroy();
    };
    const run = (record: Buffer): void => {
      let decoded;
      try {
        decoded = decodeCall(record);
      } catch (e) {
        this.records.release(record);
        if (e instanceof MalformedCallError) return abuse();
        throw e;
      }
      if (decoded.kind === 'denied') {
        this.records.release(record);
        this.send(socket, [decoded.reply]);
        return;
      }
      inFlight++;
      this.dispatcher.dispatch(decoded.call, remoteAddress, remotePort).then(
        (pieces) => {
          if (closed) return;
          this.send(socket, pieces);
        },
        () => abuse(),
      ).finally(() => {
        // The call is over and its reply was written (copied, or pieces of its own): the record is free.
        this.records.release(record);
        inFlight--;
        maybeResume();
      });
    };
    // Calls start, and reading resumes, only while few calls are running and
    // the client has been taking its replies: a client that never reads cannot
    // make us buffer without bound. `waiting` holds records framed but not yet
    // started: at most one socket chunk's worth, since reading pauses.
    const waiting: Buffer[] = [];
    const canRun = (): boolean => inFlight < this.opts.maxInFlight && socket.writableLength < this.opts.maxUnsentBytes;
    const maybeResume = (): void => {
      while (!closed && waiting.length && canRun()) run(waiting.shift()!);
      if (!closed && !waiting.length && canRun()) socket.resume();
    };
    socket.on('drain', maybeResume);
    socket.on('data', (chunk: Buffer) => {
      if (closed) return;
      let records: Buffer[];
      try {
        records = framer.push(chunk);
      } catch (e) {
        if (e instanceof RecordTooLargeError) return abuse();
        throw e;
      }
      for (const rec of records) {
        if (closed) break;
        if (waiting.length || !canRun()) waiting.push(rec);
        else run(rec);
      }
      if (waiting.length || !canRun()) socket.pause();
    });
    socket.on('error', () => { /* peer resets are normal; 'close' cleans up */ });
    socket.on('close', () => {
      closed = true;
      waiting.length = 0;
      this.sockets.delete(socket);
    });
  }

  private send(socket: net.Socket, pieces: Buffer[]): void {
    const replies = this.opts.replyBuffers;
    const giveBack = (p: Buffer): void => replies?.release(p);
    if (socket.destroyed) {
      pieces.forEach(giveBack);
      return;
    }
    const len = pieces.reduce((a, b) => a + b.length, 0);
    // Small replies go out as one buffer: one syscall instead of a writev per piece.
    if (len < 64 * 1024) {
      socket.write(Buffer.concat([recordMark(len), ...pieces], len + 4));
      pieces.forEach(giveBack);
      return;
    }
    socket.cork();
    socket.write(recordMark(len));
    // A piece is referenced until the socket has written it (or failed to): only then may it be reused.
    for (const p of pieces) socket.write(p, () => giveBack(p));
    socket.uncork();
  }
}

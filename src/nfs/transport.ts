/**
 * The TCP side of ONC RPC: listeners on the configured addresses, many
 * connections, each with a record framer. Calls on one connection run
 * concurrently and their replies leave in completion order (clients match
 * them by xid).
 *
 * Every connection lives inside the hostile-client budget of limits.ts:
 * - refused at accept, before a byte is read, when its address is not
 *   allowed or the server (or that address) has as many connections as it may;
 * - closed when it breaks the framing rules (too large, too many fragments,
 *   an empty non-last fragment, garbage), leaves a record half-sent past the
 *   record timeout, says nothing past the idle timeout, or does not take its
 *   replies past the slow-reader timeout;
 * - paused (backpressure) while its queued replies exceed its own bound or
 *   the server-wide budget for running calls and queued replies is spent.
 * Others are untouched by one connection's fate.
 */
import net from 'node:net';
import { decodeCall, MalformedCallError, type RpcDispatcher } from './rpc.js';
import { FramingError, RecordBufferPool, RecordFramer, recordMark } from './record.js';
import { MAX_REPLY_BYTES, type WireLimits } from './limits.js';

export interface TransportOptions {
  /** Addresses to listen on; all share one port. */
  hosts: readonly string[];
  port: number;
  limits: WireLimits;
  /** Shared by the listeners of one server, so the caps and budgets are per server. */
  budget: WireBudget;
  /** Checked at accept: a connection from anywhere else is closed before anything is read. */
  isAllowed(address: string): boolean;
  /** The pool replies may take buffers from: each is given back once written. */
  replyBuffers?: RecordBufferPool;
}

export interface TransportCounters {
  /** Connections accepted. */
  connections: number;
  /** Closed for breaking the wire rules (framing, garbage, half-sent records over the budget). */
  closedForAbuse: number;
  /** Refused at accept: the address is not allowed. */
  refusedNotAllowed: number;
  /** Refused at accept: the server or the address has as many connections as it may. */
  refusedOverCapacity: number;
  /** Closed for silence, or for a record left half-sent. */
  closedIdle: number;
  /** Closed for not taking queued replies. */
  closedSlowReader: number;
}

/** Normalised peer address: IPv4-mapped IPv6 as plain IPv4, so allowlists and caps see one spelling. */
export function peerAddress(socket: net.Socket): string {
  return (socket.remoteAddress ?? '').replace(/^::ffff:/, '');
}

/**
 * Connection counts and byte budgets shared by the listeners of one server.
 * `pendingBytes` counts the share of every running call (its record plus the
 * largest reply) and every reply queued but not yet taken by its client; a
 * call starts only when its share fits, so the total never passes the limit.
 */
export class WireBudget {
  connections = 0;
  pendingBytes = 0;
  partialBytes = 0;
  private readonly perAddress = new Map<string, number>();
  /** Connections paused because the server-wide budget is spent; woken when bytes are given back. */
  private readonly waiters = new Set<() => void>();

  constructor(readonly limits: WireLimits) {}

  admit(address: string): boolean {
    const n = this.perAddress.get(address) ?? 0;
    if (this.connections >= this.limits.maxConnections || n >= this.limits.maxConnectionsPerAddress) return false;
    this.connections++;
    this.perAddress.set(address, n + 1);
    return true;
  }

  leave(address: string): void {
    this.connections--;
    const n = (this.perAddress.get(address) ?? 1) - 1;
    if (n <= 0) this.perAddress.delete(address);
    else this.perAddress.set(address, n);
  }

  tryReserve(bytes: number): boolean {
    if (this.pendingBytes + bytes > this.limits.maxPendingBytesTotal) return false;
    this.pendingBytes += bytes;
    return true;
  }

  giveBack(bytes: number): void {
    if (bytes <= 0) return;
    this.pendingBytes -= bytes;
    if (!this.waiters.size) return;
    const woken = [...this.waiters];
    this.waiters.clear();
    for (const w of woken) w();
  }

  wait(resume: () => void): void {
    this.waiters.add(resume);
  }
  forget(resume: () => void): void {
    this.waiters.delete(resume);
  }
}

type CloseReason = 'abuse' | 'idle' | 'slow';

/** One client connection's state; all byte counts are also in the shared budget. */
interface Connection {
  socket: net.Socket;
  address: string;
  port: number;
  framer: RecordFramer;
  /** Records framed but not yet started (reading is paused while there are any). */
  waiting: Buffer[];
  waitingBytes: number;
  inFlight: number;
  /** Reply bytes handed to the socket and not yet written to the kernel. */
  queuedBytes: number;
  /** Bytes of half-received and waiting records, as counted in budget.partialBytes. */
  partialCounted: number;
  closed: boolean;
  /** We stopped reading (backpressure); the record timeout does not run meanwhile. */
  paused: boolean;
  lastReceiveMs: number;
  /** When the record now being received began (0: none is). */
  recordStartMs: number;
  /** Last time a queued reply made progress (or the queue became non-empty). */
  lastWriteMs: number;
  resume: () => void;
}

export class RpcListener {
  private readonly servers: net.Server[] = [];
  private readonly conns = new Set<Connection>();
  private sweeper: NodeJS.Timeout | undefined;
  readonly counters: TransportCounters = {
    connections: 0,
    closedForAbuse: 0,
    refusedNotAllowed: 0,
    refusedOverCapacity: 0,
    closedIdle: 0,
    closedSlowReader: 0,
  };
  /** Shared by the connections; a few free buffers are kept, so idle memory stays small. */
  private readonly records: RecordBufferPool;
  private readonly limits: WireLimits;

  constructor(
    private readonly dispatcher: RpcDispatcher,
    private readonly opts: TransportOptions,
  ) {
    this.limits = opts.limits;
    this.records = new RecordBufferPool(opts.limits.maxRecordBytes, 8);
  }

  async listen(): Promise<number> {
    let port = this.opts.port;
    for (const host of this.opts.hosts) {
      // Paused on connect: nothing is read before the address and the caps are checked.
      const server = net.createServer({ pauseOnConnect: true }, (s) => this.accept(s));
      this.servers.push(server);
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen({ host, port }, () => {
          server.off('error', reject);
          resolve();
        });
      });
      // Further addresses share the first one's port (which may have been picked by the system).
      port = (server.address() as net.AddressInfo).port;
    }
    const l = this.limits;
    const every = Math.min(5000, Math.max(50, Math.floor(Math.min(l.idleTimeoutMs, l.recordTimeoutMs, l.slowReaderTimeoutMs) / 4)));
    this.sweeper = setInterval(() => this.sweep(), every);
    this.sweeper.unref();
    return port;
  }

  async close(): Promise<void> {
    if (this.sweeper) clearInterval(this.sweeper);
    this.sweeper = undefined;
    for (const c of this.conns) c.socket.destroy();
    const servers = this.servers.splice(0);
    await Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
  }

  /** Open connections of this listener. */
  get open(): number {
    return this.conns.size;
  }

  private accept(socket: net.Socket): void {
    const address = peerAddress(socket);
    const budget = this.opts.budget;
    if (!this.opts.isAllowed(address)) {
      this.counters.refusedNotAllowed++;
      socket.destroy();
      return;
    }
    if (!budget.admit(address)) {
      this.counters.refusedOverCapacity++;
      socket.destroy();
      return;
    }
    this.counters.connections++;
    socket.setNoDelay(true);
    const now = Date.now();
    const c: Connection = {
      socket,
      address,
      port: socket.remotePort ?? 0,
      framer: new RecordFramer(this.limits.maxRecordBytes, this.records, this.limits.maxFragmentsPerRecord),
      waiting: [],
      waitingBytes: 0,
      inFlight: 0,
      queuedBytes: 0,
      partialCounted: 0,
      closed: false,
      paused: false,
      lastReceiveMs: now,
      recordStartMs: 0,
      lastWriteMs: now,
      resume: () => this.maybeResume(c),
    };
    this.conns.add(c);
    socket.on('data', (chunk: Buffer) => this.receive(c, chunk));
    socket.on('error', () => {
      /* peer resets are normal; 'close' cleans up */
    });
    socket.on('close', () => this.closed(c, address));
    socket.resume();
  }

  private receive(c: Connection, chunk: Buffer): void {
    if (c.closed) return;
    const now = Date.now();
    c.lastReceiveMs = now;
    let records: Buffer[];
    try {
      records = c.framer.push(chunk);
    } catch (e) {
      if (e instanceof FramingError) return this.drop(c, 'abuse');
      throw e;
    }
    if (!c.framer.inRecord) c.recordStartMs = 0;
    else if (c.recordStartMs === 0 || records.length) c.recordStartMs = now;
    for (const rec of records) {
      if (c.closed) return;
      if (c.waiting.length || !this.start(c, rec)) {
        c.waiting.push(rec);
        c.waitingBytes += rec.length;
      }
    }
    if (c.closed) return;
    if (!this.countPartial(c)) return this.drop(c, 'abuse');
    if (c.waiting.length || !this.roomFor(c)) this.pause(c);
  }

  /** Keeps budget.partialBytes in step with this connection; false when it pushed the total over the limit. */
  private countPartial(c: Connection): boolean {
    const now = c.closed ? 0 : c.framer.buffered + c.waitingBytes;
    const grew = now > c.partialCounted;
    this.opts.budget.partialBytes += now - c.partialCounted;
    c.partialCounted = now;
    return !(grew && this.opts.budget.partialBytes > this.limits.maxPartialRecordBytesTotal);
  }

  /** The connection's own bounds: calls in flight and queued replies. */
  private roomFor(c: Connection): boolean {
    return c.inFlight < this.limits.maxCallsInFlightPerConnection && c.queuedBytes < this.limits.maxPendingReplyBytesPerConnection;
  }

  /** Starts a call if the connection's bounds and the server-wide budget allow; false leaves it to wait. */
  private start(c: Connection, record: Buffer): boolean {
    if (!this.roomFor(c)) return false;
    const share = record.length + MAX_REPLY_BYTES;
    if (!this.opts.budget.tryReserve(share)) {
      this.opts.budget.wait(c.resume);
      return false;
    }
    this.run(c, record, share);
    return true;
  }

  private run(c: Connection, record: Buffer, share: number): void {
    const budget = this.opts.budget;
    let decoded;
    try {
      decoded = decodeCall(record);
    } catch (e) {
      this.records.release(record);
      budget.giveBack(share);
      if (e instanceof MalformedCallError) return this.drop(c, 'abuse');
      throw e;
    }
    if (decoded.kind === 'denied') {
      this.records.release(record);
      this.send(c, [decoded.reply]);
      budget.giveBack(share);
      return;
    }
    c.inFlight++;
    this.dispatcher
      .dispatch(decoded.call, c.address, c.port)
      .then(
        (pieces) => this.send(c, pieces),
        () => this.drop(c, 'abuse'),
      )
      .finally(() => {
        // The call is over and its reply was written (copied, or pieces of its own): the record is free.
        this.records.release(record);
        c.inFlight--;
        budget.giveBack(share);
        this.maybeResume(c);
      });
  }

  private pause(c: Connection): void {
    if (c.paused) return;
    c.paused = true;
    c.socket.pause();
  }

  /** Starts waiting calls and reads again once the connection and the budget have room. */
  private maybeResume(c: Connection): void {
    if (c.closed) return;
    while (c.waiting.length) {
      const rec = c.waiting[0]!;
      if (!this.start(c, rec)) break;
      c.waiting.shift();
      c.waitingBytes -= rec.length;
    }
    if (c.closed) return;
    this.countPartial(c);
    if (!c.waiting.length && this.roomFor(c) && c.paused) {
      c.paused = false;
      // A half-sent record's clock restarts: it could not arrive while we were not reading.
      if (c.framer.inRecord) c.recordStartMs = Date.now();
      c.socket.resume();
    }
  }

  private send(c: Connection, pieces: Buffer[]): void {
    const replies = this.opts.replyBuffers;
    const giveBack = (p: Buffer): void => replies?.release(p);
    const { socket } = c;
    if (c.closed || socket.destroyed) {
      pieces.forEach(giveBack);
      return;
    }
    const len = pieces.reduce((a, b) => a + b.length, 0);
    const total = len + 4;
    if (c.queuedBytes === 0) c.lastWriteMs = Date.now();
    c.queuedBytes += total;
    this.opts.budget.pendingBytes += total;
    // Counted down as the socket writes; after a close, closed() has already given it all back.
    const written =
      (n: number) =>
      (err?: Error | null): void => {
        if (c.closed || err) return;
        c.queuedBytes -= n;
        c.lastWriteMs = Date.now();
        this.opts.budget.giveBack(n);
        this.maybeResume(c);
      };
    // Small replies go out as one buffer: one syscall instead of a writev per piece.
    if (len < 64 * 1024) {
      socket.write(Buffer.concat([recordMark(len), ...pieces], total), written(total));
      pieces.forEach(giveBack);
      return;
    }
    socket.cork();
    socket.write(recordMark(len), written(4));
    // A piece is referenced until the socket has written it (or failed to): only then may it be reused.
    for (const p of pieces) {
      const done = written(p.length);
      socket.write(p, (err) => {
        giveBack(p);
        done(err);
      });
    }
    socket.uncork();
  }

  private drop(c: Connection, reason: CloseReason): void {
    if (c.closed) return;
    if (reason === 'abuse') this.counters.closedForAbuse++;
    else if (reason === 'idle') this.counters.closedIdle++;
    else this.counters.closedSlowReader++;
    this.release(c);
    c.socket.destroy();
  }

  /** Gives back everything the connection holds in the shared budget; runs once, on close or on 'close'. */
  private release(c: Connection): void {
    if (c.closed) return;
    c.closed = true;
    const budget = this.opts.budget;
    budget.forget(c.resume);
    for (const rec of c.waiting) this.records.release(rec);
    c.waiting.length = 0;
    c.waitingBytes = 0;
    this.countPartial(c);
    const queued = c.queuedBytes;
    c.queuedBytes = 0;
    budget.giveBack(queued);
  }

  private closed(c: Connection, address: string): void {
    this.release(c);
    if (this.conns.delete(c)) this.opts.budget.leave(address);
  }

  /** Closes connections past the idle, record or slow-reader timeout. */
  private sweep(): void {
    const now = Date.now();
    const l = this.limits;
    for (const c of this.conns) {
      if (c.closed) continue;
      if (c.queuedBytes > 0 && now - c.lastWriteMs > l.slowReaderTimeoutMs) this.drop(c, 'slow');
      else if (!c.paused && c.recordStartMs > 0 && now - c.recordStartMs > l.recordTimeoutMs) this.drop(c, 'idle');
      else if (c.inFlight === 0 && c.queuedBytes === 0 && !c.waiting.length && now - c.lastReceiveMs > l.idleTimeoutMs)
        this.drop(c, 'idle');
    }
  }
}

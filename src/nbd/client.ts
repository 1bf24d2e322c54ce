/**
 * Our NBD client: reads disk images exported by qemu-nbd or
 * qemu-storage-daemon, over a unix socket or TCP.
 *
 * Words used in src/nbd/:
 * - export: the disk the server offers under a name ("" is the default one).
 * - request / cookie: every command carries a 64-bit cookie (the spec's
 *   "handle"); replies can arrive in any order and are matched by it, so many
 *   requests can be in flight on one connection (pipelining).
 * - structured reply / chunk: a reply cut into typed chunks (data, hole,
 *   block status, error); the last one carries NBD_REPLY_FLAG_DONE.
 * - metadata context: a named kind of per-extent flags the server can report
 *   through NBD_CMD_BLOCK_STATUS, selected during negotiation and then known
 *   by a numeric id ("base:allocation": holes and zeroes;
 *   "qemu:dirty-bitmap:<name>": blocks written since the bitmap started).
 * - extent: a byte range of the export with the flags of one context.
 *
 * Only reads are implemented: restorelab never writes through NBD.
 */
import { connect as netConnect, type Socket } from 'node:net';
import {
  BASE_ALLOCATION,
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_DISC,
  NBD_CMD_READ,
  NBD_DEFAULT_MAX_BLOCK,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_ERROR_BIT,
  NBD_REPLY_TYPE_NONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_OFFSET_HOLE,
} from './constants.js';
import { NbdConnectionError, NbdProtocolError, NbdServerError, NbdTimeoutError } from './errors.js';
import { ByteQueue, ReplyFramer, type ReplyEvent } from './framer.js';
import { negotiate, type BlockSizeConstraints, type HandshakeIo } from './handshake.js';
import { encodeRequest, parseBlockStatus, parseErrorChunk, parseHole } from './wire.js';
import { settleAll } from '../settle.js';

export interface NbdConnectOptions {
  /** Unix socket path (qemu-nbd --socket). Either this or host/port. */
  socketPath?: string;
  host?: string;
  port?: number;
  /** Export name; "" selects the server's default export. */
  exportName?: string;
  /** Metadata contexts to select; default ["base:allocation"]. Pass [] for none. */
  metaContexts?: readonly string[];
  /** Limit for connecting, negotiating and for each request. Default 60 s. */
  timeoutMs?: number;
  /** Upper bound for one NBD_CMD_READ; larger reads are split. Default: the server's maximum, at most 32 MiB. */
  maxRequestBytes?: number;
  /** Requests on the wire at once; more wait their turn. Default 16 (qemu serves 16 per client). */
  maxInFlight?: number;
  /** Negotiate structured replies (default true). Without them there is no block status and no sparse reads. */
  structuredReplies?: boolean;
}

/** One extent of a metadata context, in absolute export offsets. */
export interface StatusExtent {
  offset: number;
  length: number;
  flags: number;
}

interface PendingBase {
  cookie: bigint;
  what: string;
  offset: number;
  length: number;
  error: NbdServerError | undefined;
  timer: NodeJS.Timeout;
  resolve(): void;
  reject(e: Error): void;
}
interface PendingRead extends PendingBase {
  kind: 'read';
  target: Buffer;
  targetOffset: number;
  covered: number;
}
interface PendingStatus extends PendingBase {
  kind: 'status';
  byContext: Map<number, StatusExtent[]>;
}
type Pending = PendingRead | PendingStatus;

const DEFAULT_TIMEOUT_MS = 60_000;
/** The socket's one read buffer: a unix socket hands over up to its queue (about 200 KiB) per read. */
const READ_BUFFER_BYTES = 256 * 1024;
/** Block status lengths are 32-bit; keep requests well inside, on a 1 MiB boundary. */
const MAX_STATUS_REQUEST = 2 ** 31;

export class NbdClient {
  readonly size: number;
  readonly transmissionFlags: number;
  readonly structuredReplies: boolean;
  readonly blockSize: BlockSizeConstraints | undefined;
  /** Selected metadata contexts: name → id. */
  readonly contexts: ReadonlyMap<string, number>;
  readonly maxRequestBytes: number;

  private readonly pending = new Map<bigint, Pending>();
  private readonly framer: ReplyFramer;
  private nextCookie = 1n;
  private inFlight = 0;
  private readonly waiting: (() => void)[] = [];
  private failure: Error | undefined;
  private closing = false;

  private constructor(
    private readonly socket: Socket,
    private readonly timeoutMs: number,
    private readonly maxInFlight: number,
    negotiated: Awaited<ReturnType<typeof negotiate>>,
    maxRequestBytes: number | undefined,
    leftover: Buffer,
  ) {
    this.size = negotiated.size;
    this.transmissionFlags = negotiated.transmissionFlags;
    this.structuredReplies = negotiated.structuredReplies;
    this.blockSize = negotiated.blockSize;
    this.contexts = negotiated.contexts;
    const serverMax = negotiated.blockSize?.maximum ?? NBD_DEFAULT_MAX_BLOCK;
    this.maxRequestBytes = Math.min(maxRequestBytes ?? NBD_DEFAULT_MAX_BLOCK, serverMax, NBD_DEFAULT_MAX_BLOCK);
    this.framer = new ReplyFramer(
      (e) => this.onEvent(e),
      (cookie, error) => this.simplePayload(cookie, error),
    );
    socket.on('error', (err) => this.fail(new NbdConnectionError(`NBD connection failed: ${err.message}`, err)));
    socket.on('close', () => {
      if (this.closing && this.pending.size === 0) return;
      const first = this.pending.values().next().value;
      const during = first ? ` with ${this.pending.size} request(s) outstanding, first: ${first.what}` : '';
      this.fail(new NbdConnectionError(`NBD server closed the connection${during}`));
    });
    if (leftover.length > 0) this.onData(leftover);
  }

  /** Connects, negotiates and returns a client in the transmission phase. */
  static async connect(opts: NbdConnectOptions): Promise<NbdClient> {
    const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const where = opts.socketPath ?? `${opts.host ?? 'localhost'}:${opts.port ?? 10809}`;
    // The socket reads into one buffer for its whole life instead of a fresh one per read: a backup
    // reads gigabytes through here, and each read's garbage cost the main thread and the collector
    // more than the copy out of it. Whoever gets the bytes must consume or copy them at once.
    let consume: (b: Buffer) => void = () => undefined;
    const onread = {
      buffer: Buffer.allocUnsafeSlow(READ_BUFFER_BYTES),
      callback: (n: number, buf: Uint8Array) => (consume(Buffer.from(buf.buffer, buf.byteOffset, n)), true),
    };
    const socket =
      opts.socketPath !== undefined
        ? netConnect({ path: opts.socketPath, onread })
        : netConnect({ host: opts.host ?? 'localhost', port: opts.port ?? 10809, onread });
    socket.setNoDelay?.(true);
    const incoming = new ByteQueue();
    let wake: (() => void) | undefined;
    let broken: Error | undefined;
    const onData = (b: Buffer): void => {
      incoming.push(Buffer.from(b)); // negotiation keeps what it received: a copy
      wake?.();
    };
    consume = onData;
    const onError = (err: Error): void => {
      broken = new NbdConnectionError(`cannot talk to NBD server at ${where}: ${err.message}`, err);
      wake?.();
    };
    const onClose = (): void => {
      broken ??= new NbdConnectionError(`NBD server at ${where} closed the connection during negotiation`);
      wake?.();
    };
    socket.on('error', onError);
    socket.on('close', onClose);
    const io: HandshakeIo = {
      async read(n) {
        while (incoming.available < n) {
          if (broken) throw broken;
          await new Promise<void>((r) => (wake = r));
          wake = undefined;
        }
        return incoming.take(n);
      },
      write(b) {
        socket.write(b);
      },
    };
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new NbdTimeoutError(`negotiation with ${where}`, timeoutMs)), timeoutMs);
    });
    try {
      const negotiated = await Promise.race([
        negotiate(io, {
          exportName: opts.exportName ?? '',
          metaContexts: opts.metaContexts ?? (opts.structuredReplies === false ? [] : [BASE_ALLOCATION]),
          structuredReplies: opts.structuredReplies,
        }),
        timeout,
      ]);
      consume = () => undefined;
      socket.off('error', onError);
      socket.off('close', onClose);
      if (broken) throw broken;
      const client = new NbdClient(socket, timeoutMs, opts.maxInFlight ?? 16, negotiated, opts.maxRequestBytes, incoming.drain());
      consume = (b) => client.onData(b);
      return client;
    } catch (err) {
      socket.destroy();
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Reads `length` bytes at `offset` into a new buffer; large reads are split and pipelined. */
  async read(offset: number, length: number): Promise<Buffer> {
    const target = Buffer.allocUnsafe(length);
    await this.readInto(target, offset);
    return target;
  }

  /** Fills `target` with the export's bytes starting at `offset`. */
  async readInto(target: Buffer, offset: number): Promise<void> {
    const length = target.length;
    this.checkRange(offset, length, 'read');
    const parts: Promise<void>[] = [];
    for (let done = 0; done < length; done += this.maxRequestBytes) {
      const n = Math.min(this.maxRequestBytes, length - done);
      parts.push(
        this.request<PendingRead>(
          {
            kind: 'read',
            what: `read of ${n} bytes at offset ${offset + done}`,
            offset: offset + done,
            length: n,
            target,
            targetOffset: done,
            covered: 0,
          },
          NBD_CMD_READ,
        ),
      );
    }
    await settleAll(parts);
  }

  /**
   * Block status for one metadata context, from `offset` for up to `length`
   * bytes. The server may describe less than asked (never nothing); callers
   * that need the whole range use `extents()`.
   */
  async blockStatus(offset: number, length: number, context: string = BASE_ALLOCATION): Promise<StatusExtent[]> {
    const all = await this.blockStatusAll(offset, length);
    const got = all.get(context);
    if (!got) throw new NbdProtocolError(`block status reply has no extents for context "${context}"`);
    return got;
  }

  /** Block status for every selected context at once (one request): context name → extents. */
  async blockStatusAll(offset: number, length: number): Promise<Map<string, StatusExtent[]>> {
    if (this.contexts.size === 0) throw new NbdProtocolError('block status needs a metadata context; none was selected at connect');
    this.checkRange(offset, length, 'block status');
    const n = Math.min(length, MAX_STATUS_REQUEST);
    const p: PendingStatus = {
      kind: 'status',
      what: `block status of ${n} bytes at offset ${offset}`,
      offset,
      length: n,
      byContext: new Map(),
    } as PendingStatus;
    await this.request(p, NBD_CMD_BLOCK_STATUS);
    const out = new Map<string, StatusExtent[]>();
    for (const [name, id] of this.contexts) {
      const ex = p.byContext.get(id);
      if (!ex) throw new NbdProtocolError(`block status reply lacks context "${name}" (id ${id})`);
      out.set(name, ex);
    }
    return out;
  }

  /** Extents of one context covering [offset, offset+length) without gaps, asking as often as needed. */
  async *extents(context: string = BASE_ALLOCATION, offset = 0, length = this.size - offset): AsyncGenerator<StatusExtent> {
    if (!this.contexts.has(context)) throw new NbdProtocolError(`metadata context "${context}" was not selected at connect`);
    const end = offset + length;
    let at = offset;
    while (at < end) {
      const got = await this.blockStatus(at, end - at, context);
      for (const e of got) {
        yield e;
        at = e.offset + e.length;
      }
    }
  }

  /** Sends NBD_CMD_DISC after outstanding replies arrive, then closes the socket. Idempotent. */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    // Let outstanding requests finish: DISC asks the server to, but we also want their replies.
    await Promise.allSettled(
      [...this.pending.values()].map(
        (p) =>
          new Promise<void>((r) => {
            const { resolve, reject } = p;
            p.resolve = () => (resolve(), r());
            p.reject = (e) => (reject(e), r());
          }),
      ),
    );
    if (!this.failure && !this.socket.destroyed) {
      this.socket.end(encodeRequest(0, NBD_CMD_DISC, this.nextCookie++, 0, 0));
      await new Promise<void>((r) => {
        const t = setTimeout(() => (this.socket.destroy(), r()), this.timeoutMs);
        this.socket.once('close', () => (clearTimeout(t), r()));
      });
    }
    this.socket.destroy();
  }

  // ---- internals ----

  private checkRange(offset: number, length: number, what: string): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length <= 0 || offset + length > this.size) {
      throw new RangeError(`NBD ${what} of ${length} bytes at offset ${offset} is outside the export (size ${this.size})`);
    }
    const min = this.blockSize?.minimum ?? 1;
    if (min > 1 && (offset % min !== 0 || length % min !== 0)) {
      throw new RangeError(`NBD ${what} at offset ${offset}, length ${length} is not aligned to the server's minimum block size ${min}`);
    }
  }

  private async request<P extends Pending>(
    init: Omit<P, 'cookie' | 'timer' | 'resolve' | 'reject' | 'error'>,
    command: number,
  ): Promise<void> {
    if (this.failure) throw this.failure;
    if (this.closing) throw new NbdConnectionError('NBD client is closed');
    // A slot is either free (counted here) or handed over by release().
    if (this.inFlight < this.maxInFlight) this.inFlight++;
    else await new Promise<void>((r) => this.waiting.push(r));
    if (this.failure) throw this.failure;
    const cookie = this.nextCookie++;
    try {
      await new Promise<void>((resolve, reject) => {
        const p = init as P;
        p.cookie = cookie;
        p.error = undefined;
        p.resolve = resolve;
        p.reject = reject;
        p.timer = setTimeout(() => this.fail(new NbdTimeoutError(p.what, this.timeoutMs)), this.timeoutMs);
        this.pending.set(cookie, p);
        this.socket.write(encodeRequest(0, command, cookie, p.offset, p.length));
      });
    } finally {
      this.release();
    }
  }

  private release(): void {
    const next = this.waiting.shift();
    if (next) next();
    else this.inFlight--;
  }

  /** Bytes from the socket's reused read buffer (see connect): valid during this call only. */
  private onData(b: Buffer): void {
    if (this.failure) return;
    try {
      this.framer.pushTransient(b);
    } catch (err) {
      this.fail(err instanceof Error ? err : new Error(String(err)));
    }
  }

  private simplePayload(cookie: bigint, error: number): number {
    const p = this.pending.get(cookie);
    return p?.kind === 'read' && error === 0 ? p.length : 0;
  }

  private get(cookie: bigint): Pending {
    const p = this.pending.get(cookie);
    if (!p) throw new NbdProtocolError(`reply for unknown cookie ${cookie}`);
    return p;
  }

  private onEvent(e: ReplyEvent): void {
    const p = this.get(e.cookie);
    switch (e.kind) {
      case 'simple':
        if (e.error !== 0) return this.finish(p, new NbdServerError(e.error, p.what, undefined));
        if (p.kind === 'status') throw new NbdProtocolError('simple reply to a block status request');
        if (e.payload === 0) this.finish(p);
        return;
      case 'simple-data':
        if (p.kind !== 'read') throw new NbdProtocolError('data for a non-read request');
        e.data.copy(p.target, p.targetOffset + e.at);
        p.covered += e.data.length;
        return;
      case 'simple-end':
        return this.finish(p);
      case 'chunk-data': {
        if (p.kind !== 'read') throw new NbdProtocolError('data chunk for a non-read request');
        const rel = e.offset - p.offset;
        if (rel < 0 || rel + e.data.length > p.length) throw new NbdProtocolError(`data chunk at ${e.offset} lies outside the ${p.what}`);
        e.data.copy(p.target, p.targetOffset + rel);
        p.covered += e.data.length;
        return;
      }
      case 'chunk':
        this.onChunk(p, e.flags, e.type, e.payload);
        if (e.flags & NBD_REPLY_FLAG_DONE) this.finish(p);
        return;
    }
  }

  private onChunk(p: Pending, _flags: number, type: number, payload: Buffer): void {
    if (type & NBD_REPLY_TYPE_ERROR_BIT) {
      const err = parseErrorChunk(type, payload);
      // Keep the first error: it is usually the cause, later ones its echoes.
      p.error ??= new NbdServerError(err.errno, p.what, err.message || undefined, err.offset);
      return;
    }
    switch (type) {
      case NBD_REPLY_TYPE_NONE:
        if (payload.length !== 0) throw new NbdProtocolError('NBD_REPLY_TYPE_NONE with a payload');
        return;
      case NBD_REPLY_TYPE_OFFSET_DATA:
        return; // its bytes came as chunk-data events
      case NBD_REPLY_TYPE_OFFSET_HOLE: {
        if (p.kind !== 'read') throw new NbdProtocolError('hole chunk for a non-read request');
        const h = parseHole(payload);
        const rel = h.offset - p.offset;
        if (rel < 0 || rel + h.length > p.length) throw new NbdProtocolError(`hole chunk at ${h.offset} lies outside the ${p.what}`);
        p.target.fill(0, p.targetOffset + rel, p.targetOffset + rel + h.length);
        p.covered += h.length;
        return;
      }
      case NBD_REPLY_TYPE_BLOCK_STATUS: {
        if (p.kind !== 'status') throw new NbdProtocolError('block status chunk for a non-status request');
        const bs = parseBlockStatus(payload);
        const extents: StatusExtent[] = [];
        let at = p.offset;
        const end = p.offset + p.length;
        for (const d of bs.descriptors) {
          if (at >= end) break;
          // The server must not describe past the request; clip rather than trust it.
          const len = Math.min(d.length, end - at);
          extents.push({ offset: at, length: len, flags: d.flags });
          at += len;
        }
        p.byContext.set(bs.contextId, extents);
        return;
      }
      default:
        throw new NbdProtocolError(`unknown structured reply type ${type}`);
    }
  }

  private finish(p: Pending, error?: NbdServerError): void {
    this.pending.delete(p.cookie);
    clearTimeout(p.timer);
    const err = error ?? p.error;
    if (err) return p.reject(err);
    if (p.kind === 'read' && p.covered !== p.length) {
      // Silent zeros are the one thing we must never hand on: a short reply breaks the connection.
      const e = new NbdProtocolError(`${p.what} completed with ${p.covered} of ${p.length} bytes`);
      p.reject(e);
      this.fail(e);
      return;
    }
    p.resolve();
  }

  /** Fails every outstanding request and drops the connection; later calls fail with the same error. */
  private fail(err: Error): void {
    if (this.failure) return;
    this.failure = err;
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(err);
    }
    this.pending.clear();
    for (const w of this.waiting.splice(0)) w();
    this.socket.destroy();
  }
}

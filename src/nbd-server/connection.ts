/**
 * One client of the NBD server, from greeting to disconnect: fixed newstyle
 * negotiation (options answered one at a time), then the transmission phase,
 * where requests are served concurrently and replied to in whatever order
 * they finish (the cookie says which is which).
 *
 * Memory is bounded per connection: an option's data is at most
 * MAX_OPTION_DATA, a request's payload at most MAX_REQUEST_PAYLOAD, and at
 * most MAX_INFLIGHT requests (MAX_INFLIGHT_BYTES of payload and read data)
 * are between arrival and their reply reaching the kernel; past that the
 * socket is paused, so a client that pipelines (or never reads its replies)
 * is slowed down by TCP instead of growing our heap.
 */
import type { Socket } from 'node:net';
import {
  BASE_ALLOCATION,
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_CACHE,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_DF,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_NO_ZEROES,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_DF,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_NAME,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_ERROR,
  NBD_REPLY_TYPE_ERROR_OFFSET,
  NBD_REPLY_TYPE_NONE,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_POLICY,
  NBD_REP_ERR_TOO_BIG,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_META_CONTEXT,
  NBD_REP_SERVER,
  NBD_STATE_HOLE,
  NBD_STATE_ZERO,
} from '../nbd/constants.js';
import type { ReplyBufferPool } from '../host/buffer-pool.js';
import type { Datastore, FileId } from '../datastore/types.js';
import { errnoOf, NBD_EINVAL, NBD_EOVERFLOW, NBD_EPERM } from './errno.js';
import {
  BASE_ALLOCATION_ID,
  ClientFramer,
  MAX_REQUEST_PAYLOAD,
  MAX_STRING,
  encodeBlockStatusChunk,
  encodeChunkHeader,
  encodeDataChunkHeader,
  encodeErrorChunk,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoString,
  encodeMetaContext,
  encodeOptionReply,
  encodeServerEntry,
  encodeSimpleReply,
  type ClientFrame,
  type Phase,
} from './wire.js';

/** What the server exports: one datastore file under a name (server.ts re-exports it). */
export interface NbdExport {
  name: string;
  fileId: FileId;
  readOnly: boolean;
  description?: string;
}

/** Requests between arrival and reply; qemu keeps up to 16 in flight. */
export const MAX_INFLIGHT = 16;
/** Payload and read data of those requests, at most (one request is always let through). */
export const MAX_INFLIGHT_BYTES = 64 * 1024 * 1024;
/** Block status looks at this much of the disk per request at most; a shorter answer is allowed (proto.md). */
const MAX_STATUS_SPAN = 1024 * 1024 * 1024;
const MAX_STATUS_DESCRIPTORS = 64 * 1024;
/** Below this a failing read is not split further: the error chunk names this piece's offset. */
const ERROR_GRAIN = 4096;
const ZERO_PIECE = 1024 * 1024;
const KNOWN_CMD_FLAGS = NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_DF | NBD_CMD_FLAG_REQ_ONE;

export interface ConnectionContext {
  datastore: Datastore;
  exports: () => NbdExport[];
  /** STARTTLS is refused by policy on a unix socket (the file mode is the access control) and unsupported on TCP. */
  transport: 'unix' | 'tcp';
  handshakeTimeoutMs: number;
  /** Buffers for READ replies, shared by the server's connections; larger reads get a buffer of their own. */
  replyBuffers?: ReplyBufferPool;
}

interface Open {
  exp: NbdExport;
  size: number;
  readOnly: boolean;
}

type Request = Extract<ClientFrame, { kind: 'request' }>;

export class NbdConnection {
  private readonly framer = new ClientFramer();
  private phase: Phase = 'client-flags';
  private busy = false;
  private dropped = false;
  private paused = false;
  private noZeroes = false;
  private structured = false;
  /** base:allocation selected by NBD_OPT_SET_META_CONTEXT, for this export name. */
  private allocationFor: string | undefined;
  private open: Open | undefined;
  private inflight = 0;
  private inflightBytes = 0;
  /** NBD_CMD_DISC received, or the server is closing: no new requests are read. */
  private ending = false;
  private wrote = false;
  private readonly idleWaiters: Array<() => void> = [];
  private readonly timer: NodeJS.Timeout;
  readonly closed: Promise<void>;

  constructor(
    private readonly socket: Socket,
    private readonly ctx: ConnectionContext,
  ) {
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.on('error', () => this.drop());
    socket.on('close', () => {
      this.dropped = true;
      clearTimeout(this.timer);
      this.wakeIdle();
      // Writes a client made before vanishing become durable now rather than at the overlay's next background commit.
      if (this.wrote && this.open) ctx.datastore.commit(this.open.exp.fileId).catch(() => undefined);
    });
    socket.on('data', (b: Buffer) => {
      this.framer.push(b);
      this.pump();
    });
    this.timer = setTimeout(() => this.drop(), ctx.handshakeTimeoutMs);
    this.timer.unref();
    this.send([encodeGreeting(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES)]);
  }

  /** Stops reading requests, lets those in flight reply, commits what was written and closes. */
  async shutdown(): Promise<void> {
    this.ending = true;
    if (this.phase !== 'transmission') return this.drop();
    await this.whenIdle();
    if (this.wrote && this.open) await this.ctx.datastore.commit(this.open.exp.fileId).catch(() => undefined);
    this.wrote = false;
    this.drop();
  }

  private drop(): void {
    if (!this.socket.destroyed) this.socket.destroy();
    this.dropped = true;
  }

  private wakeIdle(): void {
    if (this.inflight > 0 && !this.dropped) return;
    for (const w of this.idleWaiters.splice(0)) w();
  }

  private whenIdle(): Promise<void> {
    if (this.inflight === 0 || this.dropped) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Writes buffers in order; resolves once the last is handed to the kernel (or the socket is gone). */
  private send(bufs: Buffer[]): Promise<void> {
    if (this.socket.destroyed || bufs.length === 0) return Promise.resolve();
    return new Promise((resolve) => {
      // Corked, a reply's header and data leave in one writev, not a 16-byte write and then the data.
      if (bufs.length > 1) this.socket.cork();
      for (let i = 0; i < bufs.length - 1; i++) this.socket.write(bufs[i]!);
      this.socket.write(bufs[bufs.length - 1]!, () => resolve());
      if (bufs.length > 1) this.socket.uncork();
    });
  }

  private pause(): void {
    if (!this.paused) this.socket.pause();
    this.paused = true;
  }

  private resume(): void {
    if (this.paused && !this.dropped) this.socket.resume();
    this.paused = false;
  }

  private full(): boolean {
    return this.inflight >= MAX_INFLIGHT || (this.inflight > 0 && this.inflightBytes >= MAX_INFLIGHT_BYTES);
  }

  private pump(): void {
    while (!this.busy && !this.dropped) {
      if (this.phase === 'transmission' && (this.ending || this.full())) {
        this.pause();
        return;
      }
      const f = this.framer.next(this.phase);
      if (!f) break;
      switch (f.kind) {
        case 'client-flags':
          // Without FIXED_NEWSTYLE a client cannot be told an option failed; unknown flags MUST close (proto.md).
          if ((f.flags & NBD_FLAG_C_FIXED_NEWSTYLE) === 0 || (f.flags & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) !== 0)
            return this.drop();
          this.noZeroes = (f.flags & NBD_FLAG_C_NO_ZEROES) !== 0;
          this.phase = 'options';
          break;
        case 'option':
          this.busy = true;
          this.pause();
          this.option(f.option, f.data).then(
            () => {
              this.busy = false;
              this.resume();
              this.pump();
            },
            () => this.drop(),
          );
          return;
        case 'option-too-big':
          void this.send([encodeOptionReply(f.option, NBD_REP_ERR_TOO_BIG, Buffer.from('option data too large'))]).then(() => this.drop());
          this.busy = true;
          return;
        case 'bad-magic':
        case 'request-too-big':
          return this.drop();
        case 'request':
          this.request(f);
          break;
      }
    }
    if (!this.busy) this.resume();
  }

  // ---- Negotiation ----

  private lookup(name: string): NbdExport | undefined {
    return this.ctx.exports().find((e) => e.name === name);
  }

  private async describe(exp: NbdExport): Promise<Open> {
    const attr = await this.ctx.datastore.getattr(exp.fileId);
    return { exp, size: attr.size, readOnly: exp.readOnly || this.ctx.datastore.readOnly(exp.fileId) };
  }

  private transmissionFlags(o: Open): number {
    // CAN_MULTI_CONN for writable exports too: every connection to an export
    // writes through the one datastore file, and Datastore.commit makes every
    // acknowledged write to it durable, whichever connection made it.
    let flags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_DF | NBD_FLAG_CAN_MULTI_CONN;
    if (o.readOnly) flags |= NBD_FLAG_READ_ONLY;
    else flags |= NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES;
    return flags;
  }

  private reply(option: number, type: number, data?: Buffer): Promise<void> {
    return this.send([encodeOptionReply(option, type, data)]);
  }

  private error(option: number, type: number, message: string): Promise<void> {
    return this.reply(option, type, Buffer.from(message, 'utf8'));
  }

  private async option(option: number, data: Buffer): Promise<void> {
    switch (option) {
      case NBD_OPT_EXPORT_NAME: {
        // No error reply exists for this option: an unknown export closes the connection.
        const exp = this.lookup(data.toString('utf8'));
        if (!exp) return this.drop();
        const o = await this.describe(exp);
        await this.send([encodeExportNameReply(o.size, this.transmissionFlags(o), this.noZeroes)]);
        return this.enterTransmission(o);
      }
      case NBD_OPT_ABORT:
        await this.reply(option, NBD_REP_ACK);
        return this.drop();
      case NBD_OPT_LIST: {
        if (data.length !== 0) return this.error(option, NBD_REP_ERR_INVALID, 'NBD_OPT_LIST takes no data');
        const replies = this.ctx.exports().map((e) => encodeOptionReply(option, NBD_REP_SERVER, encodeServerEntry(e.name, e.description)));
        return this.send([...replies, encodeOptionReply(option, NBD_REP_ACK)]);
      }
      case NBD_OPT_STARTTLS:
        return this.ctx.transport === 'unix'
          ? this.error(option, NBD_REP_ERR_POLICY, 'no TLS on a unix socket: its file mode is the access control')
          : this.error(option, NBD_REP_ERR_UNSUP, 'TLS is not supported');
      case NBD_OPT_INFO:
      case NBD_OPT_GO:
        return this.infoOrGo(option, data);
      case NBD_OPT_STRUCTURED_REPLY:
        if (data.length !== 0) return this.error(option, NBD_REP_ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY takes no data');
        this.structured = true;
        return this.reply(option, NBD_REP_ACK);
      case NBD_OPT_LIST_META_CONTEXT:
      case NBD_OPT_SET_META_CONTEXT:
        return this.metaContext(option, data);
      default:
        return this.error(option, NBD_REP_ERR_UNSUP, `option ${option} is not supported`);
    }
  }

  /** NBD_OPT_INFO and NBD_OPT_GO: export name length, name, number of info requests, the requests. */
  private async infoOrGo(option: number, data: Buffer): Promise<void> {
    const bad = (): Promise<void> => this.error(option, NBD_REP_ERR_INVALID, 'malformed request');
    if (data.length < 6) return bad();
    const nameLength = data.readUInt32BE(0);
    if (nameLength > MAX_STRING || data.length < 4 + nameLength + 2) return bad();
    const name = data.toString('utf8', 4, 4 + nameLength);
    const count = data.readUInt16BE(4 + nameLength);
    if (data.length !== 4 + nameLength + 2 + 2 * count) return bad();
    const wanted = new Set<number>();
    for (let i = 0; i < count; i++) wanted.add(data.readUInt16BE(4 + nameLength + 2 + 2 * i));
    const exp = this.lookup(name);
    if (!exp) return this.error(option, NBD_REP_ERR_UNKNOWN, `no export named ${JSON.stringify(name.slice(0, 256))}`);
    let o: Open;
    try {
      o = await this.describe(exp);
    } catch {
      return this.error(option, NBD_REP_ERR_UNKNOWN, 'the export went away');
    }
    const out = [encodeOptionReply(option, NBD_REP_INFO, encodeInfoExport(o.size, this.transmissionFlags(o)))];
    if (wanted.has(NBD_INFO_NAME)) out.push(encodeOptionReply(option, NBD_REP_INFO, encodeInfoString(NBD_INFO_NAME, exp.name)));
    if (wanted.has(NBD_INFO_DESCRIPTION) && exp.description)
      out.push(encodeOptionReply(option, NBD_REP_INFO, encodeInfoString(NBD_INFO_DESCRIPTION, exp.description)));
    // Sent whether asked or not, as qemu-nbd does: any byte is addressable, 4 KiB is the overlay's block.
    out.push(encodeOptionReply(option, NBD_REP_INFO, encodeInfoBlockSize(1, 4096, MAX_REQUEST_PAYLOAD)));
    out.push(encodeOptionReply(option, NBD_REP_ACK));
    await this.send(out);
    if (option === NBD_OPT_GO) this.enterTransmission(o);
  }

  /** export name length, name, number of queries, then each query with its length. */
  private async metaContext(option: number, data: Buffer): Promise<void> {
    const bad = (): Promise<void> => this.error(option, NBD_REP_ERR_INVALID, 'malformed request');
    if (option === NBD_OPT_SET_META_CONTEXT && !this.structured)
      return this.error(option, NBD_REP_ERR_INVALID, 'negotiate structured replies first');
    if (data.length < 8) return bad();
    const nameLength = data.readUInt32BE(0);
    if (nameLength > MAX_STRING || data.length < 4 + nameLength + 4) return bad();
    const name = data.toString('utf8', 4, 4 + nameLength);
    const count = data.readUInt32BE(4 + nameLength);
    const queries: string[] = [];
    let at = 8 + nameLength;
    for (let i = 0; i < count; i++) {
      if (at + 4 > data.length) return bad();
      const len = data.readUInt32BE(at);
      if (len > MAX_STRING || at + 4 + len > data.length) return bad();
      queries.push(data.toString('utf8', at + 4, at + 4 + len));
      at += 4 + len;
    }
    if (at !== data.length) return bad();
    if (!this.lookup(name)) return this.error(option, NBD_REP_ERR_UNKNOWN, 'no such export');
    const matches =
      option === NBD_OPT_LIST_META_CONTEXT
        ? queries.length === 0 || queries.some((q) => q === BASE_ALLOCATION || q === 'base:')
        : queries.includes(BASE_ALLOCATION);
    if (option === NBD_OPT_SET_META_CONTEXT) this.allocationFor = matches ? name : undefined;
    const out = matches ? [encodeOptionReply(option, NBD_REP_META_CONTEXT, encodeMetaContext(BASE_ALLOCATION_ID, BASE_ALLOCATION))] : [];
    out.push(encodeOptionReply(option, NBD_REP_ACK));
    return this.send(out);
  }

  private enterTransmission(o: Open): void {
    this.open = o;
    this.phase = 'transmission';
    clearTimeout(this.timer);
    // Contexts were selected for one export name; another export gets none (proto.md, NBD_OPT_SET_META_CONTEXT).
    if (this.allocationFor !== o.exp.name) this.allocationFor = undefined;
    if (this.ending) void this.shutdown();
  }

  // ---- Transmission ----

  private request(r: Request): void {
    if (r.type === NBD_CMD_DISC) {
      // The client sends nothing after it; replies to earlier requests still go out.
      this.ending = true;
      void this.shutdown();
      return;
    }
    const cost = r.data ? r.data.length : r.type === NBD_CMD_READ ? Math.min(r.length, MAX_REQUEST_PAYLOAD) : 0;
    this.inflight++;
    this.inflightBytes += cost;
    this.serve(r)
      .catch((err: unknown) => this.simple(r, errnoOf(err), r.type === NBD_CMD_READ || r.type === NBD_CMD_BLOCK_STATUS))
      .catch(() => this.drop())
      .finally(() => {
        this.inflight--;
        this.inflightBytes -= cost;
        this.wakeIdle();
        this.pump();
      });
  }

  /** An error (or success, errno 0) with no data: a simple reply, or for reads and block status once structured, a final chunk. */
  private simple(r: Request, errno: number, structuredCommand: boolean, message = ''): Promise<void> {
    if (this.structured && structuredCommand) {
      if (errno === 0) return this.send([encodeChunkHeader(NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, r.cookie, 0)]);
      return this.send([encodeErrorChunk(NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, r.cookie, errno, message)]);
    }
    return this.send([encodeSimpleReply(errno, r.cookie)]);
  }

  private async serve(r: Request): Promise<void> {
    const o = this.open!;
    const ds = this.ctx.datastore;
    const id = o.exp.fileId;
    const structuredCommand = r.type === NBD_CMD_READ || r.type === NBD_CMD_BLOCK_STATUS;
    const fail = (errno: number, message: string): Promise<void> => this.simple(r, errno, structuredCommand, message);
    if (this.dropped) return;
    if ((r.flags & ~KNOWN_CMD_FLAGS) !== 0) return fail(NBD_EINVAL, 'unknown command flags');
    const known = [NBD_CMD_READ, NBD_CMD_WRITE, NBD_CMD_FLUSH, NBD_CMD_TRIM, NBD_CMD_CACHE, NBD_CMD_WRITE_ZEROES, NBD_CMD_BLOCK_STATUS];
    if (!known.includes(r.type)) return fail(NBD_EINVAL, `unknown command ${r.type}`);
    if (r.type === NBD_CMD_FLUSH) {
      await ds.commit(id);
      this.wrote = false;
      return fail(0, '');
    }
    // Larger than the maximum block size we advertised: EOVERFLOW when the client asked for one chunk (DF), as proto.md prefers; else EINVAL.
    if (r.type === NBD_CMD_READ && r.length > MAX_REQUEST_PAYLOAD)
      return fail((r.flags & NBD_CMD_FLAG_DF) !== 0 ? NBD_EOVERFLOW : NBD_EINVAL, 'read larger than the maximum block size');
    const offset = Number(r.offset);
    if (r.offset > BigInt(o.size) || offset + r.length > o.size) return fail(NBD_EINVAL, 'request past the end of the export');
    const writes = r.type === NBD_CMD_WRITE || r.type === NBD_CMD_WRITE_ZEROES || r.type === NBD_CMD_TRIM;
    if (writes && o.readOnly) return fail(NBD_EPERM, 'the export is read-only');
    const fua = (r.flags & NBD_CMD_FLAG_FUA) !== 0;
    switch (r.type) {
      case NBD_CMD_READ:
        return this.read(r, offset);
      case NBD_CMD_WRITE:
        this.wrote = true;
        await ds.write(id, offset, r.data!, fua);
        return fail(0, '');
      case NBD_CMD_WRITE_ZEROES: {
        this.wrote = true;
        const zeros = Buffer.alloc(Math.min(ZERO_PIECE, r.length));
        for (let at = 0; at < r.length; at += ZERO_PIECE) {
          if (this.dropped && !this.ending) return;
          await ds.write(id, offset + at, zeros.subarray(0, Math.min(ZERO_PIECE, r.length - at)), false);
        }
        if (fua) await ds.commit(id);
        return fail(0, '');
      }
      case NBD_CMD_TRIM:
        // Advisory (proto.md): the bytes need not read as zeros afterwards, so nothing is spent on the overlay.
        if (fua) await ds.commit(id);
        return fail(0, '');
      case NBD_CMD_CACHE:
        return fail(0, '');
      case NBD_CMD_BLOCK_STATUS:
        return this.blockStatus(r, offset);
    }
  }

  private async read(r: Request, offset: number): Promise<void> {
    const ds = this.ctx.datastore;
    const id = this.open!.exp.fileId;
    const readRange = async (at: number, length: number): Promise<Buffer> => {
      const buf = this.ctx.replyBuffers?.acquire(length) ?? Buffer.allocUnsafe(length);
      let got: number;
      if (ds.readInto) got = (await ds.readInto(id, at, buf)).length;
      else got = (await ds.read(id, at, length)).data.copy(buf);
      if (got < length) buf.fill(0, got);
      return buf;
    };
    if (r.length === 0) return this.simple(r, 0, true);
    let data: Buffer;
    try {
      data = await readRange(offset, r.length);
    } catch (err) {
      if (!this.structured) return this.send([encodeSimpleReply(errnoOf(err), r.cookie)]);
      return this.readAroundError(r, offset, readRange);
    }
    const header = this.structured
      ? encodeDataChunkHeader(NBD_REPLY_FLAG_DONE, r.cookie, offset, data.length)
      : encodeSimpleReply(0, r.cookie);
    // The kernel has the bytes once the write's callback ran: the buffer can serve the next read.
    return this.send([header, data]).finally(() => this.ctx.replyBuffers?.release(data));
  }

  /**
   * A read failed somewhere: halve it until the failing piece is small, send
   * the good bytes before it and an error chunk at its offset. The client
   * fails the whole read; never a byte of the bad piece is sent.
   */
  private async readAroundError(r: Request, offset: number, readRange: (at: number, length: number) => Promise<Buffer>): Promise<void> {
    const out: Buffer[] = [];
    const find = async (at: number, length: number): Promise<{ at: number; err: unknown } | undefined> => {
      try {
        const data = await readRange(at, length);
        out.push(encodeDataChunkHeader(0, r.cookie, at, data.length), data);
        return undefined;
      } catch (err) {
        if (length <= ERROR_GRAIN) return { at, err };
        const half = Math.ceil(length / 2 / ERROR_GRAIN) * ERROR_GRAIN;
        return (await find(at, half)) ?? (await find(at + half, length - half));
      }
    };
    const bad = await find(offset, r.length);
    // The whole read failed but no piece did (a passing fault): report it at the start.
    const where = bad ?? { at: offset, err: undefined };
    // A fixed message: the datastore's names host paths and digests, which are no business of a network client.
    const message = 'the stored data at this offset could not be read or failed its check';
    out.push(encodeErrorChunk(NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR_OFFSET, r.cookie, errnoOf(where.err), message, where.at));
    return this.send(out);
  }

  private async blockStatus(r: Request, offset: number): Promise<void> {
    if (!this.structured || this.allocationFor === undefined) return this.simple(r, NBD_EINVAL, true, 'no metadata context was negotiated');
    if (r.length === 0) return this.simple(r, NBD_EINVAL, true, 'block status of zero bytes');
    const ds = this.ctx.datastore;
    const span = Math.min(r.length, MAX_STATUS_SPAN);
    const extents = ds.extents ? await ds.extents(this.open!.exp.fileId, offset, span) : [{ length: span, hole: false, zero: false }];
    const limit = (r.flags & NBD_CMD_FLAG_REQ_ONE) !== 0 ? 1 : MAX_STATUS_DESCRIPTORS;
    const descriptors: Array<{ length: number; flags: number }> = [];
    for (const e of extents) {
      const flags = (e.hole ? NBD_STATE_HOLE : 0) | (e.zero ? NBD_STATE_ZERO : 0);
      const last = descriptors[descriptors.length - 1];
      if (last && last.flags === flags) last.length += e.length;
      else if (descriptors.length < limit) descriptors.push({ length: e.length, flags });
      else break;
    }
    if (descriptors.length === 0) return this.simple(r, NBD_EINVAL, true, 'nothing to describe');
    return this.send([encodeBlockStatusChunk(NBD_REPLY_FLAG_DONE, r.cookie, BASE_ALLOCATION_ID, descriptors)]);
  }

  /** True once the connection cannot serve anymore (tests, server bookkeeping). */
  get gone(): boolean {
    return this.dropped;
  }
}

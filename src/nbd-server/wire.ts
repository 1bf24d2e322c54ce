/**
 * The server's side of the NBD wire (NetworkBlockDevice/nbd doc/proto.md):
 * encoders for what a server sends and a framer that cuts what a client
 * sends into client flags, options and requests. Pure functions over
 * Buffers, so the layouts are tested against vectors built independently
 * (test/nbd-server/wire.test.ts).
 */
import {
  NBD_CMD_WRITE,
  NBD_DEFAULT_MAX_BLOCK,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_EXPORT,
  NBD_INFO_NAME,
  NBD_INIT_MAGIC,
  NBD_OPTS_MAGIC,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_ERROR_OFFSET,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REP_MAGIC,
  NBD_REQUEST_MAGIC,
  NBD_REQUEST_SIZE,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_HEADER_SIZE,
  NBD_STRUCTURED_REPLY_MAGIC,
} from '../nbd/constants.js';
import { ByteQueue } from '../nbd/framer.js';

/** Largest option payload we read (a GO names one export of ≤ 4 KiB and a few info types; meta contexts a few queries). */
export const MAX_OPTION_DATA = 64 * 1024;
/** Largest READ or WRITE payload, and the maximum block size we advertise (proto.md, Block size constraints). */
export const MAX_REQUEST_PAYLOAD = NBD_DEFAULT_MAX_BLOCK;
/** proto.md, Conventions: strings MUST be no longer than 4096 bytes. */
export const MAX_STRING = 4096;
/** The one metadata context we serve; its id on the wire. */
export const BASE_ALLOCATION_ID = 1;

// ---- Handshake phase, server to client ----

/** "NBDMAGIC", "IHAVEOPT", 16-bit handshake flags. */
export function encodeGreeting(handshakeFlags: number): Buffer {
  const b = Buffer.alloc(18);
  b.writeBigUInt64BE(NBD_INIT_MAGIC, 0);
  b.writeBigUInt64BE(NBD_OPTS_MAGIC, 8);
  b.writeUInt16BE(handshakeFlags, 16);
  return b;
}

/** An option reply: magic, the option it answers, reply type, length, data. */
export function encodeOptionReply(option: number, type: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(20 + data.length);
  b.writeBigUInt64BE(NBD_REP_MAGIC, 0);
  b.writeUInt32BE(option >>> 0, 8);
  b.writeUInt32BE(type >>> 0, 12);
  b.writeUInt32BE(data.length, 16);
  data.copy(b, 20);
  return b;
}

/** NBD_REP_SERVER data (NBD_OPT_LIST): name length, name, then the description as the rest. */
export function encodeServerEntry(name: string, description = ''): Buffer {
  const n = Buffer.from(name, 'utf8');
  const d = Buffer.from(description, 'utf8');
  const b = Buffer.alloc(4 + n.length + d.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  d.copy(b, 4 + n.length);
  return b;
}

export function encodeInfoExport(size: number, transmissionFlags: number): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt16BE(NBD_INFO_EXPORT, 0);
  b.writeBigUInt64BE(BigInt(size), 2);
  b.writeUInt16BE(transmissionFlags, 10);
  return b;
}

/** NBD_INFO_NAME or NBD_INFO_DESCRIPTION: the type, then the string. */
export function encodeInfoString(type: typeof NBD_INFO_NAME | typeof NBD_INFO_DESCRIPTION, s: string): Buffer {
  const t = Buffer.alloc(2);
  t.writeUInt16BE(type, 0);
  return Buffer.concat([t, Buffer.from(s, 'utf8').subarray(0, MAX_STRING)]);
}

export function encodeInfoBlockSize(minimum: number, preferred: number, maximum: number): Buffer {
  const b = Buffer.alloc(14);
  b.writeUInt16BE(NBD_INFO_BLOCK_SIZE, 0);
  b.writeUInt32BE(minimum, 2);
  b.writeUInt32BE(preferred, 6);
  b.writeUInt32BE(maximum, 10);
  return b;
}

/** NBD_REP_META_CONTEXT data: context id, then its name. */
export function encodeMetaContext(id: number, name: string): Buffer {
  const n = Buffer.from(name, 'utf8');
  const b = Buffer.alloc(4 + n.length);
  b.writeUInt32BE(id, 0);
  n.copy(b, 4);
  return b;
}

/** The reply to NBD_OPT_EXPORT_NAME: size, transmission flags, and 124 zeroes unless NO_ZEROES was agreed. */
export function encodeExportNameReply(size: number, transmissionFlags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(10 + (noZeroes ? 0 : 124));
  b.writeBigUInt64BE(BigInt(size), 0);
  b.writeUInt16BE(transmissionFlags, 8);
  return b;
}

// ---- Transmission phase, server to client ----

/** A simple reply header (a successful read's data follows it). */
export function encodeSimpleReply(error: number, cookie: bigint): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(error, 4);
  b.writeBigUInt64BE(cookie, 8);
  return b;
}

/** A structured reply chunk header for a payload of `length` bytes. */
export function encodeChunkHeader(flags: number, type: number, cookie: bigint, length: number): Buffer {
  const b = Buffer.alloc(NBD_STRUCTURED_REPLY_HEADER_SIZE);
  b.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  b.writeBigUInt64BE(cookie, 8);
  b.writeUInt32BE(length, 16);
  return b;
}

/** Header and offset of an NBD_REPLY_TYPE_OFFSET_DATA chunk; `dataLength` bytes of data follow. */
export function encodeDataChunkHeader(flags: number, cookie: bigint, offset: number, dataLength: number): Buffer {
  const h = encodeChunkHeader(flags, NBD_REPLY_TYPE_OFFSET_DATA, cookie, 8 + dataLength);
  const b = Buffer.alloc(h.length + 8);
  h.copy(b, 0);
  b.writeBigUInt64BE(BigInt(offset), h.length);
  return b;
}

/** An NBD_REPLY_TYPE_BLOCK_STATUS chunk: context id, then (length, flags) descriptors. */
export function encodeBlockStatusChunk(
  flags: number,
  cookie: bigint,
  contextId: number,
  descriptors: ReadonlyArray<{ length: number; flags: number }>,
): Buffer {
  const payload = Buffer.alloc(4 + 8 * descriptors.length);
  payload.writeUInt32BE(contextId, 0);
  descriptors.forEach((d, i) => {
    payload.writeUInt32BE(d.length, 4 + 8 * i);
    payload.writeUInt32BE(d.flags, 8 + 8 * i);
  });
  return Buffer.concat([encodeChunkHeader(flags, NBD_REPLY_TYPE_BLOCK_STATUS, cookie, payload.length), payload]);
}

/** An error chunk (NBD_REPLY_TYPE_ERROR, or _ERROR_OFFSET when `offset` is given). */
export function encodeErrorChunk(flags: number, type: number, cookie: bigint, errno: number, message: string, offset?: number): Buffer {
  const msg = Buffer.from(message, 'utf8').subarray(0, MAX_STRING);
  const payload = Buffer.alloc(6 + msg.length + (type === NBD_REPLY_TYPE_ERROR_OFFSET ? 8 : 0));
  payload.writeUInt32BE(errno, 0);
  payload.writeUInt16BE(msg.length, 4);
  msg.copy(payload, 6);
  if (type === NBD_REPLY_TYPE_ERROR_OFFSET) payload.writeBigUInt64BE(BigInt(offset ?? 0), 6 + msg.length);
  return Buffer.concat([encodeChunkHeader(flags, type, cookie, payload.length), payload]);
}

// ---- Client to server ----

export type ClientFrame =
  | { kind: 'client-flags'; flags: number }
  /** An option request; `data` is whole (≤ MAX_OPTION_DATA). */
  | { kind: 'option'; option: number; data: Buffer }
  /** An option whose data is longer than we read: the connection answers and drops. */
  | { kind: 'option-too-big'; option: number; length: number }
  /** The bytes do not start with the magic they must: the connection drops. */
  | { kind: 'bad-magic'; what: string }
  /** A request; a write's `data` is whole. */
  | { kind: 'request'; flags: number; type: number; cookie: bigint; offset: bigint; length: number; data?: Buffer }
  /** A write whose payload is larger than any we accept: we cannot skip it safely, so the connection drops. */
  | { kind: 'request-too-big'; cookie: bigint; length: number };

export type Phase = 'client-flags' | 'options' | 'transmission';

/**
 * Cuts the client's bytes into frames, whatever way the socket split them.
 * Pull-style: the connection pushes bytes and asks for the next frame of the
 * phase it is in, so bytes a client sends ahead of a phase change (requests
 * right behind its NBD_OPT_GO) are read as what they are.
 */
export class ClientFramer {
  private readonly q = new ByteQueue();

  push(b: Buffer): void {
    this.q.push(b);
  }

  /** Bytes received and not yet framed (the connection bounds it by pausing the socket). */
  get buffered(): number {
    return this.q.available;
  }

  next(phase: Phase): ClientFrame | undefined {
    const q = this.q;
    if (phase === 'client-flags') {
      if (q.available < 4) return undefined;
      return { kind: 'client-flags', flags: q.take(4).readUInt32BE(0) };
    }
    if (phase === 'options') {
      if (q.available < 16) return undefined;
      const h = q.peek(16);
      if (h.readBigUInt64BE(0) !== NBD_OPTS_MAGIC) return { kind: 'bad-magic', what: 'option' };
      const option = h.readUInt32BE(8);
      const length = h.readUInt32BE(12);
      if (length > MAX_OPTION_DATA) return { kind: 'option-too-big', option, length };
      if (q.available < 16 + length) return undefined;
      q.take(16);
      return { kind: 'option', option, data: length === 0 ? Buffer.alloc(0) : Buffer.from(q.take(length)) };
    }
    if (q.available < NBD_REQUEST_SIZE) return undefined;
    const h = q.peek(NBD_REQUEST_SIZE);
    if (h.readUInt32BE(0) !== NBD_REQUEST_MAGIC) return { kind: 'bad-magic', what: 'request' };
    const flags = h.readUInt16BE(4);
    const type = h.readUInt16BE(6);
    const cookie = h.readBigUInt64BE(8);
    const offset = h.readBigUInt64BE(16);
    const length = h.readUInt32BE(24);
    if (type !== NBD_CMD_WRITE) {
      q.take(NBD_REQUEST_SIZE);
      return { kind: 'request', flags, type, cookie, offset, length };
    }
    if (length > MAX_REQUEST_PAYLOAD) return { kind: 'request-too-big', cookie, length };
    if (q.available < NBD_REQUEST_SIZE + length) return undefined;
    q.take(NBD_REQUEST_SIZE);
    // A copy: the payload outlives the socket buffers it arrived in.
    return { kind: 'request', flags, type, cookie, offset, length, data: Buffer.from(q.take(length)) };
  }
}

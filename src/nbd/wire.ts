/**
 * Encoders for what the client sends and decoders for fixed-layout things the
 * server sends. Pure functions over Buffers: no sockets here, so the byte
 * layouts can be tested against vectors built independently.
 */
import {
  NBD_CLISERV_MAGIC,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_EXPORT,
  NBD_INIT_MAGIC,
  NBD_OPTS_MAGIC,
  NBD_OPT_GO,
  NBD_OPT_SET_META_CONTEXT,
  NBD_REPLY_TYPE_ERROR_OFFSET,
  NBD_REP_MAGIC,
  NBD_REQUEST_MAGIC,
  NBD_REQUEST_SIZE,
} from './constants.js';
import { NbdProtocolError } from './errors.js';

const MAX_STRING = 4096; // proto.md, Conventions: strings MUST be no longer than 4096 bytes

function nbdString(s: string, what: string): Buffer {
  const b = Buffer.from(s, 'utf8');
  if (b.length > MAX_STRING) throw new RangeError(`${what} is ${b.length} bytes; NBD strings are at most ${MAX_STRING}`);
  if (b.includes(0)) throw new RangeError(`${what} contains a NUL byte, which NBD strings must not`);
  return b;
}

// ---- Handshake phase, client to server ----

/** Client flags, sent once after the server greeting. */
export function encodeClientFlags(flags: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(flags >>> 0);
  return b;
}

/** An option request: "IHAVEOPT", option, data length, data. */
export function encodeOption(option: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(16 + data.length);
  b.writeBigUInt64BE(NBD_OPTS_MAGIC, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(data.length, 12);
  data.copy(b, 16);
  return b;
}

/** NBD_OPT_GO: export name and the information types we want back. */
export function encodeGo(exportName: string, infoRequests: readonly number[]): Buffer {
  const name = nbdString(exportName, 'export name');
  const data = Buffer.alloc(4 + name.length + 2 + 2 * infoRequests.length);
  let at = data.writeUInt32BE(name.length, 0);
  at += name.copy(data, at);
  at = data.writeUInt16BE(infoRequests.length, at);
  for (const info of infoRequests) at = data.writeUInt16BE(info, at);
  return encodeOption(NBD_OPT_GO, data);
}

/** NBD_OPT_SET_META_CONTEXT: export name, number of queries, then each query with its length. */
export function encodeSetMetaContext(exportName: string, queries: readonly string[]): Buffer {
  const name = nbdString(exportName, 'export name');
  const qs = queries.map((q) => nbdString(q, 'metadata context query'));
  const data = Buffer.alloc(4 + name.length + 4 + qs.reduce((n, q) => n + 4 + q.length, 0));
  let at = data.writeUInt32BE(name.length, 0);
  at += name.copy(data, at);
  at = data.writeUInt32BE(qs.length, at);
  for (const q of qs) {
    at = data.writeUInt32BE(q.length, at);
    at += q.copy(data, at);
  }
  return encodeOption(NBD_OPT_SET_META_CONTEXT, data);
}

// ---- Handshake phase, server to client ----

export const GREETING_SIZE = 18; // "NBDMAGIC", "IHAVEOPT", 16-bit handshake flags

/** The server greeting; returns the handshake flags. */
export function parseGreeting(b: Buffer): number {
  if (b.length < GREETING_SIZE) throw new NbdProtocolError(`greeting is ${b.length} bytes, expected ${GREETING_SIZE}`);
  if (b.readBigUInt64BE(0) !== NBD_INIT_MAGIC)
    throw new NbdProtocolError('server greeting does not start with NBDMAGIC; this is not an NBD server');
  const second = b.readBigUInt64BE(8);
  if (second === NBD_CLISERV_MAGIC)
    throw new NbdProtocolError('server speaks old-style negotiation, which cannot select exports or structured replies');
  if (second !== NBD_OPTS_MAGIC) throw new NbdProtocolError(`unknown negotiation magic 0x${second.toString(16)}`);
  return b.readUInt16BE(16);
}

export const OPTION_REPLY_HEADER_SIZE = 20;

export interface OptionReplyHeader {
  option: number;
  type: number;
  length: number;
}

export function parseOptionReplyHeader(b: Buffer): OptionReplyHeader {
  const magic = b.readBigUInt64BE(0);
  if (magic !== NBD_REP_MAGIC)
    throw new NbdProtocolError(`option reply magic 0x${magic.toString(16)}, expected 0x${NBD_REP_MAGIC.toString(16)}`);
  return { option: b.readUInt32BE(8), type: b.readUInt32BE(12), length: b.readUInt32BE(16) };
}

export type ExportInfo =
  | { type: 'export'; size: number; transmissionFlags: number }
  | { type: 'block-size'; minimum: number; preferred: number; maximum: number }
  | { type: 'other'; info: number };

/** The payload of NBD_REP_INFO. */
export function parseInfo(p: Buffer): ExportInfo {
  if (p.length < 2) throw new NbdProtocolError('NBD_REP_INFO shorter than its type field');
  const info = p.readUInt16BE(0);
  if (info === NBD_INFO_EXPORT) {
    if (p.length !== 12) throw new NbdProtocolError(`NBD_INFO_EXPORT is ${p.length} bytes, expected 12`);
    return { type: 'export', size: toSafeNumber(p.readBigUInt64BE(2), 'export size'), transmissionFlags: p.readUInt16BE(10) };
  }
  if (info === NBD_INFO_BLOCK_SIZE) {
    if (p.length !== 14) throw new NbdProtocolError(`NBD_INFO_BLOCK_SIZE is ${p.length} bytes, expected 14`);
    return { type: 'block-size', minimum: p.readUInt32BE(2), preferred: p.readUInt32BE(6), maximum: p.readUInt32BE(10) };
  }
  return { type: 'other', info };
}

/** The payload of NBD_REP_META_CONTEXT: context id and its name. */
export function parseMetaContext(p: Buffer): { id: number; name: string } {
  if (p.length < 4) throw new NbdProtocolError('NBD_REP_META_CONTEXT shorter than its id field');
  return { id: p.readUInt32BE(0), name: p.subarray(4).toString('utf8') };
}

// ---- Transmission phase ----

/** A request header: magic, command flags, type, cookie, offset, length. */
export function encodeRequest(flags: number, type: number, cookie: bigint, offset: number, length: number): Buffer {
  const b = Buffer.alloc(NBD_REQUEST_SIZE);
  b.writeUInt32BE(NBD_REQUEST_MAGIC, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  b.writeBigUInt64BE(cookie, 8);
  b.writeBigUInt64BE(BigInt(offset), 16);
  b.writeUInt32BE(length, 24);
  return b;
}

export interface BlockStatusDescriptor {
  length: number;
  flags: number;
}

/** The payload of NBD_REPLY_TYPE_BLOCK_STATUS: context id, then (length, flags) pairs. */
export function parseBlockStatus(p: Buffer): { contextId: number; descriptors: BlockStatusDescriptor[] } {
  if (p.length < 12 || (p.length - 4) % 8 !== 0)
    throw new NbdProtocolError(`block status payload of ${p.length} bytes is not 4 + a positive multiple of 8`);
  const descriptors: BlockStatusDescriptor[] = [];
  for (let at = 4; at < p.length; at += 8) {
    const length = p.readUInt32BE(at);
    if (length === 0) throw new NbdProtocolError('block status descriptor of length zero');
    descriptors.push({ length, flags: p.readUInt32BE(at + 4) });
  }
  return { contextId: p.readUInt32BE(0), descriptors };
}

/** The payload of NBD_REPLY_TYPE_OFFSET_HOLE. */
export function parseHole(p: Buffer): { offset: number; length: number } {
  if (p.length !== 12) throw new NbdProtocolError(`hole chunk payload is ${p.length} bytes, expected 12`);
  const length = p.readUInt32BE(8);
  if (length === 0) throw new NbdProtocolError('hole chunk of size zero');
  return { offset: toSafeNumber(p.readBigUInt64BE(0), 'hole offset'), length };
}

/** The payload of any error chunk (type with bit 15 set). */
export function parseErrorChunk(type: number, p: Buffer): { errno: number; message: string; offset?: number } {
  if (p.length < 6) throw new NbdProtocolError(`error chunk payload is ${p.length} bytes, expected at least 6`);
  const errno = p.readUInt32BE(0);
  const msgLen = p.readUInt16BE(4);
  if (6 + msgLen > p.length) throw new NbdProtocolError('error chunk message runs past the chunk');
  const message = p.subarray(6, 6 + msgLen).toString('utf8');
  if (type === NBD_REPLY_TYPE_ERROR_OFFSET) {
    if (p.length !== 6 + msgLen + 8) throw new NbdProtocolError('NBD_REPLY_TYPE_ERROR_OFFSET without its offset');
    return { errno, message, offset: toSafeNumber(p.readBigUInt64BE(6 + msgLen), 'error offset') };
  }
  return { errno, message };
}

export function toSafeNumber(v: bigint, what: string): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new NbdProtocolError(`${what} ${v} is beyond 2^53`);
  return Number(v);
}

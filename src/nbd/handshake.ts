/**
 * Fixed newstyle negotiation, client side: greeting, client flags,
 * NBD_OPT_STRUCTURED_REPLY, NBD_OPT_SET_META_CONTEXT, then NBD_OPT_GO.
 *
 * It talks through a two-method seam (read exactly n bytes, write bytes) so
 * tests can replay recorded server bytes and compare what the client wrote.
 */
import {
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_NO_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_MAX_SMALL_PAYLOAD,
  NBD_OPT_GO,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_UNSUP,
  NBD_REP_FLAG_ERROR,
  NBD_REP_INFO,
  NBD_REP_META_CONTEXT,
} from './constants.js';
import { NbdOptionError, NbdProtocolError } from './errors.js';
import {
  GREETING_SIZE,
  OPTION_REPLY_HEADER_SIZE,
  encodeClientFlags,
  encodeGo,
  encodeOption,
  encodeSetMetaContext,
  parseGreeting,
  parseInfo,
  parseMetaContext,
  parseOptionReplyHeader,
} from './wire.js';

export interface HandshakeIo {
  read(n: number): Promise<Buffer>;
  write(b: Buffer): void;
}

export interface HandshakeOptions {
  exportName: string;
  /** Metadata context queries, e.g. "base:allocation", "qemu:dirty-bitmap:bitmap0". Empty: none. */
  metaContexts: readonly string[];
  /** Ask for structured replies (default). Off only to exercise simple replies. */
  structuredReplies?: boolean;
}

export interface BlockSizeConstraints {
  minimum: number;
  preferred: number;
  maximum: number;
}

export interface NegotiatedExport {
  size: number;
  transmissionFlags: number;
  structuredReplies: boolean;
  /** Absent when the server did not send NBD_INFO_BLOCK_SIZE. */
  blockSize: BlockSizeConstraints | undefined;
  /** Selected metadata contexts: name → id the server will use in block status replies. */
  contexts: Map<string, number>;
}

interface OptionReply {
  type: number;
  payload: Buffer;
}

async function readOptionReply(io: HandshakeIo, option: number): Promise<OptionReply> {
  const h = parseOptionReplyHeader(await io.read(OPTION_REPLY_HEADER_SIZE));
  if (h.option !== option) throw new NbdProtocolError(`reply is for option ${h.option}, but option ${option} was asked`);
  if (h.length > NBD_MAX_SMALL_PAYLOAD) throw new NbdProtocolError(`option reply of ${h.length} bytes is larger than any we accept`);
  const payload = h.length > 0 ? await io.read(h.length) : Buffer.alloc(0);
  return { type: h.type, payload };
}

function isError(type: number): boolean {
  return type >= NBD_REP_FLAG_ERROR;
}

/** Runs the whole negotiation; on return the connection is in the transmission phase. */
export async function negotiate(io: HandshakeIo, opts: HandshakeOptions): Promise<NegotiatedExport> {
  const handshakeFlags = parseGreeting(await io.read(GREETING_SIZE));
  if (!(handshakeFlags & NBD_FLAG_FIXED_NEWSTYLE)) {
    throw new NbdProtocolError('server does not offer fixed newstyle negotiation, needed for NBD_OPT_GO');
  }
  // NO_ZEROES only matters after NBD_OPT_EXPORT_NAME, but a server that offers it expects a client that knows it.
  io.write(encodeClientFlags(NBD_FLAG_C_FIXED_NEWSTYLE | (handshakeFlags & NBD_FLAG_NO_ZEROES ? NBD_FLAG_C_NO_ZEROES : 0)));

  let structuredReplies = false;
  if (opts.structuredReplies !== false) {
    io.write(encodeOption(NBD_OPT_STRUCTURED_REPLY));
    const sr = await readOptionReply(io, NBD_OPT_STRUCTURED_REPLY);
    if (sr.type === NBD_REP_ACK) structuredReplies = true;
    else if (sr.type !== NBD_REP_ERR_UNSUP)
      throw new NbdProtocolError(`unexpected reply type 0x${sr.type.toString(16)} to NBD_OPT_STRUCTURED_REPLY`);
  }

  const contexts = new Map<string, number>();
  if (opts.metaContexts.length > 0) {
    if (!structuredReplies) {
      throw new NbdOptionError(
        'NBD_OPT_STRUCTURED_REPLY',
        NBD_REP_ERR_UNSUP,
        'block status (metadata contexts) needs structured replies',
        'use qemu-nbd or qemu-storage-daemon, which support them',
      );
    }
    io.write(encodeSetMetaContext(opts.exportName, opts.metaContexts));
    for (;;) {
      const r = await readOptionReply(io, NBD_OPT_SET_META_CONTEXT);
      if (r.type === NBD_REP_ACK) break;
      if (r.type === NBD_REP_META_CONTEXT) {
        const c = parseMetaContext(r.payload);
        contexts.set(c.name, c.id);
        continue;
      }
      if (isError(r.type)) {
        throw new NbdOptionError(
          `NBD_OPT_SET_META_CONTEXT (${opts.metaContexts.join(', ')})`,
          r.type,
          r.payload.toString('utf8'),
          'the server does not know these metadata contexts; for qemu:dirty-bitmap:<name> start qemu-nbd with --bitmap=<name>',
        );
      }
      throw new NbdProtocolError(`unexpected reply type ${r.type} to NBD_OPT_SET_META_CONTEXT`);
    }
    // A query ending in ':' is a namespace wildcard that may legitimately match nothing.
    for (const q of opts.metaContexts) {
      if (!q.endsWith(':') && !contexts.has(q)) {
        throw new NbdOptionError(
          `NBD_OPT_SET_META_CONTEXT (${q})`,
          NBD_REP_ERR_UNSUP,
          'context not offered for this export',
          q.startsWith('qemu:dirty-bitmap:')
            ? 'export the bitmap: qemu-nbd --bitmap=<name>, or block-export-add with "bitmaps"'
            : 'ask only for contexts the server supports',
        );
      }
    }
  }

  io.write(encodeGo(opts.exportName, [NBD_INFO_BLOCK_SIZE]));
  let size: number | undefined;
  let transmissionFlags = 0;
  let blockSize: BlockSizeConstraints | undefined;
  for (;;) {
    const r = await readOptionReply(io, NBD_OPT_GO);
    if (r.type === NBD_REP_ACK) break;
    if (r.type === NBD_REP_INFO) {
      const info = parseInfo(r.payload);
      if (info.type === 'export') {
        size = info.size;
        transmissionFlags = info.transmissionFlags;
      } else if (info.type === 'block-size') {
        blockSize = { minimum: info.minimum, preferred: info.preferred, maximum: info.maximum };
      }
      continue;
    }
    if (isError(r.type)) {
      throw new NbdOptionError(
        `NBD_OPT_GO for export "${opts.exportName}"`,
        r.type,
        r.payload.toString('utf8'),
        'check the export name (qemu-nbd --export-name) and that the server is not shutting down',
      );
    }
    throw new NbdProtocolError(`unexpected reply type ${r.type} to NBD_OPT_GO`);
  }
  if (size === undefined) throw new NbdProtocolError('server acknowledged NBD_OPT_GO without sending NBD_INFO_EXPORT');
  return { size, transmissionFlags, structuredReplies, blockSize, contexts };
}

/**
 * NBD wire constants, transcribed from the NBD protocol document
 * (NetworkBlockDevice/nbd doc/proto.md). Section names below are the
 * document's. All integers on the wire are big-endian (network byte order).
 * Do not modify: these values are the protocol.
 */

// ## Handshake / Newstyle negotiation
/** "NBDMAGIC", the first 8 bytes the server sends. */
export const NBD_INIT_MAGIC = 0x4e42444d41474943n;
/** "IHAVEOPT": newstyle negotiation; also prefixes every client option request. */
export const NBD_OPTS_MAGIC = 0x49484156454f5054n;
/** Old-style negotiation magic; we refuse it (no option haggling possible). */
export const NBD_CLISERV_MAGIC = 0x00420281861253n;
/** Magic at the start of each server option reply. */
export const NBD_REP_MAGIC = 0x3e889045565a9n;

// ### Handshake phase / Flag fields / Handshake flags (16 bits, server)
export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_NO_ZEROES = 1 << 1;

// ### Handshake phase / Flag fields / Client flags (32 bits)
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_C_NO_ZEROES = 1 << 1;

// ### Handshake phase / Flag fields / Transmission flags (16 bits)
export const NBD_FLAG_HAS_FLAGS = 1 << 0;
export const NBD_FLAG_READ_ONLY = 1 << 1;
export const NBD_FLAG_SEND_FLUSH = 1 << 2;
export const NBD_FLAG_SEND_FUA = 1 << 3;
export const NBD_FLAG_ROTATIONAL = 1 << 4;
export const NBD_FLAG_SEND_TRIM = 1 << 5;
export const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;
export const NBD_FLAG_SEND_DF = 1 << 7;
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8;

// ### Handshake phase / Option types
export const NBD_OPT_EXPORT_NAME = 1;
export const NBD_OPT_ABORT = 2;
export const NBD_OPT_LIST = 3;
export const NBD_OPT_STARTTLS = 5;
export const NBD_OPT_INFO = 6;
export const NBD_OPT_GO = 7;
export const NBD_OPT_STRUCTURED_REPLY = 8;
// Older drafts of the document numbered these 10 and 11 (with an
// NBD_OPT_BLOCK_SIZE at 9); the merged spec and qemu use 9 and 10.
export const NBD_OPT_LIST_META_CONTEXT = 9;
export const NBD_OPT_SET_META_CONTEXT = 10;
/** 64-bit headers; qemu >= 8.2. Not negotiated by this client. */
export const NBD_OPT_EXTENDED_HEADERS = 11;

// ### Handshake phase / Option reply types
export const NBD_REP_ACK = 1;
export const NBD_REP_SERVER = 2;
export const NBD_REP_INFO = 3;
export const NBD_REP_META_CONTEXT = 4;
/** Error replies have bit 31 set. */
export const NBD_REP_FLAG_ERROR = 2 ** 31;
export const NBD_REP_ERR_UNSUP = 2 ** 31 + 1;
export const NBD_REP_ERR_POLICY = 2 ** 31 + 2;
export const NBD_REP_ERR_INVALID = 2 ** 31 + 3;
export const NBD_REP_ERR_PLATFORM = 2 ** 31 + 4;
export const NBD_REP_ERR_TLS_REQD = 2 ** 31 + 5;
export const NBD_REP_ERR_UNKNOWN = 2 ** 31 + 6;
export const NBD_REP_ERR_SHUTDOWN = 2 ** 31 + 7;
export const NBD_REP_ERR_BLOCK_SIZE_REQD = 2 ** 31 + 8;
export const NBD_REP_ERR_TOO_BIG = 2 ** 31 + 9;
export const NBD_REP_ERR_EXT_HEADER_REQD = 2 ** 31 + 10;

export const OPTION_REPLY_ERROR_NAMES: Readonly<Record<number, string>> = {
  [NBD_REP_ERR_UNSUP]: 'NBD_REP_ERR_UNSUP',
  [NBD_REP_ERR_POLICY]: 'NBD_REP_ERR_POLICY',
  [NBD_REP_ERR_INVALID]: 'NBD_REP_ERR_INVALID',
  [NBD_REP_ERR_PLATFORM]: 'NBD_REP_ERR_PLATFORM',
  [NBD_REP_ERR_TLS_REQD]: 'NBD_REP_ERR_TLS_REQD',
  [NBD_REP_ERR_UNKNOWN]: 'NBD_REP_ERR_UNKNOWN',
  [NBD_REP_ERR_SHUTDOWN]: 'NBD_REP_ERR_SHUTDOWN',
  [NBD_REP_ERR_BLOCK_SIZE_REQD]: 'NBD_REP_ERR_BLOCK_SIZE_REQD',
  [NBD_REP_ERR_TOO_BIG]: 'NBD_REP_ERR_TOO_BIG',
  [NBD_REP_ERR_EXT_HEADER_REQD]: 'NBD_REP_ERR_EXT_HEADER_REQD',
};

// ### Option haggling / NBD_REP_INFO information types (NBD_OPT_INFO, NBD_OPT_GO)
/** 64 bits size, 16 bits transmission flags. Always sent. */
export const NBD_INFO_EXPORT = 0;
export const NBD_INFO_NAME = 1;
export const NBD_INFO_DESCRIPTION = 2;
/** 32 bits each: minimum, preferred, maximum block size. */
export const NBD_INFO_BLOCK_SIZE = 3;

// ### Metadata querying / Metadata contexts
export const BASE_ALLOCATION = 'base:allocation';
/** base:allocation: the extent is not allocated on the server. */
export const NBD_STATE_HOLE = 1 << 0;
/** base:allocation: the extent reads as zeroes. */
export const NBD_STATE_ZERO = 1 << 1;
/** qemu:dirty-bitmap:<name>: the extent is dirty (qemu docs/interop/nbd.txt). */
export const NBD_STATE_DIRTY = 1 << 0;

// ## Transmission phase / Request message
export const NBD_REQUEST_MAGIC = 0x25609513;
/** magic(4) flags(2) type(2) cookie(8) offset(8) length(4). */
export const NBD_REQUEST_SIZE = 28;

// ## Transmission phase / Simple reply message
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
/** magic(4) error(4) cookie(8). */
export const NBD_SIMPLE_REPLY_SIZE = 16;

// ## Transmission phase / Structured reply chunk message
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;
/** magic(4) flags(2) type(2) cookie(8) length(4). */
export const NBD_STRUCTURED_REPLY_HEADER_SIZE = 20;

// ### Transmission phase / Flag fields / Command flags
export const NBD_CMD_FLAG_FUA = 1 << 0;
export const NBD_CMD_FLAG_NO_HOLE = 1 << 1;
export const NBD_CMD_FLAG_DF = 1 << 2;
export const NBD_CMD_FLAG_REQ_ONE = 1 << 3;

// ### Transmission phase / Flag fields / Structured reply flags
export const NBD_REPLY_FLAG_DONE = 1 << 0;

// ### Transmission phase / Structured reply types
export const NBD_REPLY_TYPE_NONE = 0;
export const NBD_REPLY_TYPE_OFFSET_DATA = 1;
export const NBD_REPLY_TYPE_OFFSET_HOLE = 2;
export const NBD_REPLY_TYPE_BLOCK_STATUS = 5;
/** Error chunk types have bit 15 set. */
export const NBD_REPLY_TYPE_ERROR_BIT = 1 << 15;
export const NBD_REPLY_TYPE_ERROR = 2 ** 15 + 1;
export const NBD_REPLY_TYPE_ERROR_OFFSET = 2 ** 15 + 2;

// ### Transmission phase / Request types
export const NBD_CMD_READ = 0;
export const NBD_CMD_WRITE = 1;
export const NBD_CMD_DISC = 2;
export const NBD_CMD_FLUSH = 3;
export const NBD_CMD_TRIM = 4;
export const NBD_CMD_CACHE = 5;
export const NBD_CMD_WRITE_ZEROES = 6;
export const NBD_CMD_BLOCK_STATUS = 7;

// ### Transmission phase / Error values
export const NBD_ERROR_NAMES: Readonly<Record<number, string>> = {
  1: 'EPERM',
  5: 'EIO',
  12: 'ENOMEM',
  22: 'EINVAL',
  28: 'ENOSPC',
  75: 'EOVERFLOW',
  95: 'ENOTSUP',
  108: 'ESHUTDOWN',
};

/** Without NBD_INFO_BLOCK_SIZE, clients should not send requests larger than 32 MiB (proto.md, Block size constraints). */
export const NBD_DEFAULT_MAX_BLOCK = 32 * 1024 * 1024;
/** Largest payload we accept in a single non-data chunk or option reply, to bound memory against a hostile server. */
export const NBD_MAX_SMALL_PAYLOAD = 16 * 1024 * 1024;

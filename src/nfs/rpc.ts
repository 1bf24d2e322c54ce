/**
 * ONC RPC v2 messages (RFC 5531 sections 8-9): call header, accepted and
 * denied replies, AUTH_NONE and AUTH_SYS credentials, and the dispatcher
 * that owns every RPC-level error so procedures only encode their own bodies.
 */
import type { Caller } from '../datastore/types.js';
import { XdrError, XdrReader, XdrWriter } from './xdr.js';

// RFC 5531 section 9: msg_type, reply_stat, accept_stat, reject_stat, auth_stat.
export const CALL = 0;
export const REPLY = 1;
export const MSG_ACCEPTED = 0;
export const MSG_DENIED = 1;
export const enum AcceptStat {
  SUCCESS = 0,
  PROG_UNAVAIL = 1,
  PROG_MISMATCH = 2,
  PROC_UNAVAIL = 3,
  GARBAGE_ARGS = 4,
  SYSTEM_ERR = 5,
}
export const RPC_MISMATCH = 0;
export const AUTH_ERROR = 1;
export const enum AuthStat {
  AUTH_OK = 0,
  AUTH_BADCRED = 1,
  AUTH_REJECTEDCRED = 2,
  AUTH_BADVERF = 3,
  AUTH_REJECTEDVERF = 4,
  AUTH_TOOWEAK = 5,
}
// RFC 5531 section 8.2 / appendix A: authentication flavors.
export const AUTH_NONE = 0;
export const AUTH_SYS = 1;
/** RFC 5531 section 8.2: an opaque_auth body is at most 400 bytes. */
const MAX_AUTH_BYTES = 400;
/** RFC 5531 appendix A: authsys_parms.machinename<255>, gids<16>. */
const AUTH_SYS_MACHINENAME_MAX = 255;
const AUTH_SYS_GIDS_MAX = 16;
/** The anonymous id: AUTH_NONE callers, and uid/gid 0 under root squash. */
export const ANONYMOUS_ID = 65534;
/** The nobody identity used for AUTH_NONE callers. */
export const NOBODY: Caller = { uid: ANONYMOUS_ID, gid: ANONYMOUS_ID };

/**
 * Root squash: uid 0 and gid 0 become the anonymous id, each on its own (as
 * Linux's root_squash does), so a client's root cannot own files on the host.
 */
export function squashRoot(c: Caller): Caller {
  if (c.uid !== 0 && c.gid !== 0) return c;
  return { uid: c.uid === 0 ? ANONYMOUS_ID : c.uid, gid: c.gid === 0 ? ANONYMOUS_ID : c.gid };
}

/**
 * The authsys_parms of an AUTH_SYS credential body (RFC 5531 appendix A),
 * strictly: the machine name and gid list within their bounds, and nothing
 * after them. Throws XdrError for anything else.
 */
export function decodeAuthSys(body: Buffer): Caller {
  const c = new XdrReader(body);
  c.u32(); // stamp
  c.string(AUTH_SYS_MACHINENAME_MAX);
  const uid = c.u32();
  const gid = c.u32();
  c.array(AUTH_SYS_GIDS_MAX, (x) => x.u32());
  if (c.remaining !== 0) throw new XdrError(`AUTH_SYS credential has ${c.remaining} bytes after its gids`);
  return { uid, gid };
}

export interface CallHeader {
  xid: number;
  prog: number;
  vers: number;
  proc: number;
  caller: Caller;
  flavor: number;
  /** Where the call's arguments start. */
  args: XdrReader;
}

export interface RpcContext {
  caller: Caller;
  flavor: number;
  remoteAddress: string;
  remotePort: number;
}

/** A procedure writes its complete result body into `out`. */
export type RpcProcedure = (args: XdrReader, ctx: RpcContext, out: XdrWriter) => Promise<void> | void;

export interface RpcProgram {
  prog: number;
  vers: number;
  name: string;
  /** Indexed by procedure number; a hole answers PROC_UNAVAIL. */
  procs: readonly (RpcProcedure | undefined)[];
}

/** An RPC-level failure: the dispatcher answers it instead of a result body. */
export class RpcError extends Error {
  constructor(
    readonly stat: AcceptStat,
    message?: string,
  ) {
    super(message ?? `rpc accept_stat ${stat}`);
    this.name = 'RpcError';
  }
}

/** The call is unusable before the header can be read; nothing can be answered, so the connection closes. */
export class MalformedCallError extends Error {}

type Decoded = { kind: 'call'; call: CallHeader } | { kind: 'denied'; xid: number; reply: Buffer };

/** Decodes a call header; a denial (RPC_MISMATCH, AUTH_ERROR) comes back as ready reply bytes. */
export function decodeCall(record: Buffer): Decoded {
  const r = new XdrReader(record);
  let xid: number;
  try {
    xid = r.u32();
    if (r.u32() !== CALL) throw new MalformedCallError('not a CALL message');
  } catch (e) {
    if (e instanceof XdrError) throw new MalformedCallError(e.message);
    throw e;
  }
  try {
    const rpcvers = r.u32();
    if (rpcvers !== 2) return { kind: 'denied', xid, reply: deniedReply(xid, (w) => w.u32(RPC_MISMATCH).u32(2).u32(2)) };
    const prog = r.u32();
    const vers = r.u32();
    const proc = r.u32();
    const flavor = r.u32();
    const body = r.opaque(MAX_AUTH_BYTES);
    r.u32();
    r.opaque(MAX_AUTH_BYTES);
    let caller = NOBODY;
    if (flavor === AUTH_SYS) {
      caller = decodeAuthSys(body);
    } else if (flavor !== AUTH_NONE) {
      // As Linux's sunrpc does for flavors it does not know (e.g. RPCSEC_GSS here).
      return { kind: 'denied', xid, reply: deniedReply(xid, (w) => w.u32(AUTH_ERROR).u32(AuthStat.AUTH_BADCRED)) };
    }
    return { kind: 'call', call: { xid, prog, vers, proc, caller, flavor, args: r } };
  } catch (e) {
    // A truncated header or a malformed credential: AUTH_BADCRED, as Linux's sunrpc answers it.
    if (e instanceof XdrError) return { kind: 'denied', xid, reply: deniedReply(xid, (w) => w.u32(AUTH_ERROR).u32(AuthStat.AUTH_BADCRED)) };
    throw e;
  }
}

function deniedReply(xid: number, body: (w: XdrWriter) => void): Buffer {
  const w = new XdrWriter(32).u32(xid).u32(REPLY).u32(MSG_DENIED);
  body(w);
  return w.bytes();
}

/** Accepted-reply header with an AUTH_NONE verifier (RFC 5531 section 9). */
export function acceptedHeader(w: XdrWriter, xid: number, stat: AcceptStat): XdrWriter {
  return w.u32(xid).u32(REPLY).u32(MSG_ACCEPTED).u32(AUTH_NONE).u32(0).u32(stat);
}

export interface DispatchLog {
  warn(msg: string, err: unknown): void;
}

export interface DispatchPolicy {
  /** Map AUTH_SYS uid 0 / gid 0 to the anonymous id before any procedure sees the caller (default true). */
  rootSquash?: boolean;
}

/**
 * Routes a decoded call to its program and procedure. Every reply is built
 * here, so a procedure can only add a result body: PROG_UNAVAIL,
 * PROG_MISMATCH, PROC_UNAVAIL, GARBAGE_ARGS and SYSTEM_ERR are answered in
 * one place.
 */
export class RpcDispatcher {
  private readonly byProg = new Map<number, RpcProgram[]>();
  private readonly rootSquash: boolean;

  constructor(
    programs: readonly RpcProgram[],
    private readonly log?: DispatchLog,
    policy: DispatchPolicy = {},
  ) {
    this.rootSquash = policy.rootSquash ?? true;
    for (const p of programs) {
      const list = this.byProg.get(p.prog) ?? [];
      list.push(p);
      this.byProg.set(p.prog, list);
    }
  }

  async dispatch(call: CallHeader, remoteAddress: string, remotePort: number): Promise<Buffer[]> {
    const w = new XdrWriter(512);
    const versions = this.byProg.get(call.prog);
    if (!versions) return acceptedHeader(w, call.xid, AcceptStat.PROG_UNAVAIL).pieces();
    const program = versions.find((p) => p.vers === call.vers);
    if (!program) {
      const vs = versions.map((p) => p.vers);
      return acceptedHeader(w, call.xid, AcceptStat.PROG_MISMATCH)
        .u32(Math.min(...vs))
        .u32(Math.max(...vs))
        .pieces();
    }
    const proc = program.procs[call.proc];
    if (!proc) return acceptedHeader(w, call.xid, AcceptStat.PROC_UNAVAIL).pieces();
    acceptedHeader(w, call.xid, AcceptStat.SUCCESS);
    try {
      const caller = this.rootSquash ? squashRoot(call.caller) : call.caller;
      await proc(call.args, { caller, flavor: call.flavor, remoteAddress, remotePort }, w);
      return w.pieces();
    } catch (e) {
      w.reset();
      if (e instanceof XdrError) return acceptedHeader(w, call.xid, AcceptStat.GARBAGE_ARGS).pieces();
      if (e instanceof RpcError) return acceptedHeader(w, call.xid, e.stat).pieces();
      this.log?.warn(`${program.name} procedure ${call.proc} failed`, e);
      return acceptedHeader(w, call.xid, AcceptStat.SYSTEM_ERR).pieces();
    }
  }
}

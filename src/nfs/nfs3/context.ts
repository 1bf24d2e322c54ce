/**
 * What every NFS procedure shares: the datastore, the handle codec, the
 * export's policy, verifiers, and the helpers that turn a handle and a
 * name into checked datastore arguments.
 */
import { DatastoreError, NAME_MAX, ROOT_ID, type Caller, type Datastore, type FileAttr, type FileId } from '../../datastore/types.js';
import type { HandleCodec } from '../handle.js';
import type { RpcContext } from '../rpc.js';
import type { XdrReader } from '../xdr.js';
import { Nfs3Status, NFS3_FHSIZE, NfsStatusError } from './types.js';
import type { RecordBufferPool } from '../record.js';
import { MAX_EXCLUSIVE_CREATE_VERIFIERS } from '../limits.js';

export interface NfsCounters {
  ops: number;
  bytesRead: number;
  bytesWritten: number;
  errors: number;
  byProc: Record<string, number>;
}

export interface NfsEnv {
  datastore: Datastore;
  handles: HandleCodec;
  readOnly: boolean;
  /** Changes on every server start, so clients re-send UNSTABLE writes after a restart. */
  writeVerifier: Buffer;
  /** Cookies are file ids, valid across restarts, so the verifier stays constant per server id. */
  cookieVerifier: Buffer;
  isAllowed(address: string): boolean;
  /** The export squashes root (rpc.ts squashRoot): nobody may then give a file to uid or gid 0 either. */
  rootSquash: boolean;
  counters: NfsCounters;
  /** Server-side memory of EXCLUSIVE create verifiers (RFC 1813 section 3.3.8). */
  exclusiveCreates: Map<string, Buffer>;
  /** Large READ replies are read into these; the transport takes each back once the socket has written it. */
  replyBuffers?: RecordBufferPool;
}

export interface NfsCall {
  env: NfsEnv;
  rpc: RpcContext;
  caller: Caller;
}

/**
 * Under root squash a SETATTR (or CREATE's attributes) may not give a file
 * to uid or gid 0: the datastore runs as root and would chown on the host,
 * handing any client the root-owned files that squash exists to prevent.
 * PERM, as a Linux server answers a chown by a squashed root.
 */
export function checkOwnerChange(call: NfsCall, attr: { uid?: number; gid?: number }): void {
  if (call.env.rootSquash && (attr.uid === 0 || attr.gid === 0)) throw new NfsStatusError(Nfs3Status.PERM);
}

/** Adds an EXCLUSIVE create verifier, dropping the oldest beyond the bound: a client cannot grow the table. */
export function rememberExclusiveCreate(env: NfsEnv, key: string, verf: Buffer): void {
  env.exclusiveCreates.delete(key);
  if (env.exclusiveCreates.size >= MAX_EXCLUSIVE_CREATE_VERIFIERS) {
    const oldest = env.exclusiveCreates.keys().next().value;
    if (oldest !== undefined) env.exclusiveCreates.delete(oldest);
  }
  env.exclusiveCreates.set(key, verf);
}

export function readHandle(r: XdrReader): Buffer {
  return r.opaque(NFS3_FHSIZE);
}

/** Resolves a handle to a live file id, or fails with BADHANDLE / STALE. */
export async function resolve(call: NfsCall, fh: Buffer): Promise<{ id: FileId; attr: FileAttr }> {
  const h = call.env.handles.decode(fh);
  if (!h.ok) throw new NfsStatusError(h.reason === 'bad' ? Nfs3Status.BADHANDLE : Nfs3Status.STALE);
  try {
    return { id: h.fileid, attr: await call.env.datastore.getattr(h.fileid) };
  } catch (e) {
    if (e instanceof DatastoreError && (e.code === 'ENOENT' || e.code === 'ESTALE')) throw new NfsStatusError(Nfs3Status.STALE);
    throw e;
  }
}

/** Attributes for a post_op_attr: absent rather than failing when the file is gone. */
export async function attrOrUndefined(call: NfsCall, id: FileId | undefined): Promise<FileAttr | undefined> {
  if (id === undefined) return undefined;
  try {
    return await call.env.datastore.getattr(id);
  } catch {
    return undefined;
  }
}

export function fileIdOf(call: NfsCall, fh: Buffer): FileId | undefined {
  const h = call.env.handles.decode(fh);
  return h.ok ? h.fileid : undefined;
}

/**
 * A component name. '/' is INVAL rather than ACCES: RFC 1813 leaves it open,
 * and INVAL ("invalid or unsupported argument") says the name itself is
 * wrong, not the caller's permission, so clients do not retry with other
 * credentials.
 */
export function checkName(name: string): void {
  if (Buffer.byteLength(name, 'utf8') > NAME_MAX) throw new NfsStatusError(Nfs3Status.NAMETOOLONG);
  if (name.length === 0 || name.includes('/') || name.includes('\0')) throw new NfsStatusError(Nfs3Status.INVAL);
}

/** Names that create or remove entries must also not be the dot entries. */
export function checkNewName(name: string): void {
  checkName(name);
  if (name === '.' || name === '..') throw new NfsStatusError(Nfs3Status.EXIST);
}

export function requireWritable(call: NfsCall, id: FileId): void {
  if (call.env.readOnly || call.env.datastore.readOnly(id)) throw new NfsStatusError(Nfs3Status.ROFS);
}

export function requireDir(attr: FileAttr): void {
  if (attr.type !== 'dir') throw new NfsStatusError(Nfs3Status.NOTDIR);
}

export { ROOT_ID };

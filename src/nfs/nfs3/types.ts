/**
 * NFS version 3 types, transcribed from RFC 1813 section 2 (program 100003).
 */
import { DatastoreError, type DatastoreErrorCode, type FileAttr, type FileType } from '../../datastore/types.js';
import type { XdrReader, XdrWriter } from '../xdr.js';

export const NFS_PROG = 100003;
export const NFS_VERS = 3;
export const NFS3_FHSIZE = 64;
export const NFS3_COOKIEVERFSIZE = 8;
export const NFS3_WRITEVERFSIZE = 8;
/** rtmax/wtmax/dtpref. */
export const NFS_IO_MAX = 1 << 20;

// RFC 1813 section 2.6: nfsstat3.
export const enum Nfs3Status {
  OK = 0,
  PERM = 1,
  NOENT = 2,
  IO = 5,
  NXIO = 6,
  ACCES = 13,
  EXIST = 17,
  XDEV = 18,
  NODEV = 19,
  NOTDIR = 20,
  ISDIR = 21,
  INVAL = 22,
  FBIG = 27,
  NOSPC = 28,
  ROFS = 30,
  MLINK = 31,
  NAMETOOLONG = 63,
  NOTEMPTY = 66,
  DQUOT = 69,
  STALE = 70,
  REMOTE = 71,
  BADHANDLE = 10001,
  NOT_SYNC = 10002,
  BAD_COOKIE = 10003,
  NOTSUPP = 10004,
  TOOSMALL = 10005,
  SERVERFAULT = 10006,
  BADTYPE = 10007,
  JUKEBOX = 10008,
}

/** The one table from datastore errors to NFS status. */
export const STATUS_FOR_CODE: Readonly<Record<DatastoreErrorCode, Nfs3Status>> = {
  ENOENT: Nfs3Status.NOENT,
  EEXIST: Nfs3Status.EXIST,
  ENOTDIR: Nfs3Status.NOTDIR,
  EISDIR: Nfs3Status.ISDIR,
  ENOTEMPTY: Nfs3Status.NOTEMPTY,
  EACCES: Nfs3Status.ACCES,
  EPERM: Nfs3Status.PERM,
  EROFS: Nfs3Status.ROFS,
  ENOSPC: Nfs3Status.NOSPC,
  EIO: Nfs3Status.IO,
  ENAMETOOLONG: Nfs3Status.NAMETOOLONG,
  EINVAL: Nfs3Status.INVAL,
  ESTALE: Nfs3Status.STALE,
  ENOTSUP: Nfs3Status.NOTSUPP,
  EXDEV: Nfs3Status.XDEV,
  EFBIG: Nfs3Status.FBIG,
};

/** A procedure's failure: the dispatcher writes the status and the procedure's resfail body. */
export class NfsStatusError extends Error {
  constructor(
    readonly status: Nfs3Status,
    message?: string,
  ) {
    super(message ?? `nfsstat3 ${status}`);
    this.name = 'NfsStatusError';
  }

  static from(e: unknown): NfsStatusError | undefined {
    if (e instanceof NfsStatusError) return e;
    if (e instanceof DatastoreError) return new NfsStatusError(STATUS_FOR_CODE[e.code] ?? Nfs3Status.SERVERFAULT, e.message);
    return undefined;
  }
}

// RFC 1813 section 2.5: ftype3.
export const enum Ftype3 {
  REG = 1,
  DIR = 2,
  BLK = 3,
  CHR = 4,
  LNK = 5,
  SOCK = 6,
  FIFO = 7,
}
const FTYPE: Record<FileType, Ftype3> = { file: Ftype3.REG, dir: Ftype3.DIR, symlink: Ftype3.LNK };

export const enum StableHow {
  UNSTABLE = 0,
  DATA_SYNC = 1,
  FILE_SYNC = 2,
}

/** All exports share one fsid: the datastore is one filesystem. */
const FSID = 0x524c4e46;

export function writeTime(w: XdrWriter, d: Date): void {
  const ms = d.getTime();
  const s = Math.floor(ms / 1000);
  w.u32(Math.max(0, Math.min(0xffffffff, s))).u32((ms - s * 1000) * 1_000_000);
}

export function readTime(r: XdrReader): Date {
  const s = r.u32();
  const ns = r.u32();
  return new Date(s * 1000 + Math.floor(ns / 1_000_000));
}

/** fattr3 (section 2.5). */
export function writeFattr(w: XdrWriter, a: FileAttr): void {
  w.u32(FTYPE[a.type])
    .u32(a.mode & 0o7777)
    .u32(a.nlink)
    .u32(a.uid >>> 0)
    .u32(a.gid >>> 0)
    .u64(a.size)
    .u64(a.used)
    .u32(0)
    .u32(0)
    .u64(FSID)
    .u64(a.fileid);
  writeTime(w, a.atime);
  writeTime(w, a.mtime);
  writeTime(w, a.ctime);
}

export function writePostOpAttr(w: XdrWriter, a: FileAttr | undefined): void {
  w.bool(a !== undefined);
  if (a) writeFattr(w, a);
}

/** wcc_data: pre-op size/mtime/ctime (optional) then post-op attributes. */
export function writeWcc(w: XdrWriter, pre: FileAttr | undefined, post: FileAttr | undefined): void {
  w.bool(pre !== undefined);
  if (pre) {
    w.u64(pre.size);
    writeTime(w, pre.mtime);
    writeTime(w, pre.ctime);
  }
  writePostOpAttr(w, post);
}

export const enum TimeHow {
  DONT_CHANGE = 0,
  SERVER_TIME = 1,
  CLIENT_TIME = 2,
}

/** sattr3 (section 2.5). */
export interface Sattr3 {
  mode?: number;
  uid?: number;
  gid?: number;
  size?: number;
  atime?: Date | 'server';
  mtime?: Date | 'server';
}

function readSetTime(r: XdrReader): Date | 'server' | undefined {
  const how = r.enum([TimeHow.DONT_CHANGE, TimeHow.SERVER_TIME, TimeHow.CLIENT_TIME]);
  if (how === TimeHow.SERVER_TIME) return 'server';
  if (how === TimeHow.CLIENT_TIME) return readTime(r);
  return undefined;
}

export function readSattr(r: XdrReader): Sattr3 {
  const s: Sattr3 = {};
  const mode = r.optional((x) => x.u32());
  const uid = r.optional((x) => x.u32());
  const gid = r.optional((x) => x.u32());
  const size = r.optional((x) => x.u64());
  const atime = readSetTime(r);
  const mtime = readSetTime(r);
  if (mode !== undefined) s.mode = mode & 0o7777;
  if (uid !== undefined) s.uid = uid;
  if (gid !== undefined) s.gid = gid;
  if (size !== undefined) s.size = size;
  if (atime !== undefined) s.atime = atime;
  if (mtime !== undefined) s.mtime = mtime;
  return s;
}

export function isEmptySattr(s: Sattr3): boolean {
  return Object.keys(s).length === 0;
}

// ACCESS3 bits (section 3.3.4).
export const ACCESS3_READ = 0x1;
export const ACCESS3_LOOKUP = 0x2;
export const ACCESS3_MODIFY = 0x4;
export const ACCESS3_EXTEND = 0x8;
export const ACCESS3_DELETE = 0x10;
export const ACCESS3_EXECUTE = 0x20;

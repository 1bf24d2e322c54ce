/**
 * The datastore seam: a small virtual filesystem of publications that every
 * frontend (FUSE, NFS, NBD) is built on. It speaks in stable numeric file
 * ids and errno-like codes, and knows nothing about RPC or FUSE.
 *
 * Layout: the root directory holds one directory per publication; each holds
 * `<disk>.raw`, `<disk>.vmdk` + `<disk>-flat.vmdk`, `<vm>.json`, `<vm>.vmx`, and
 * any scratch files a hypervisor creates (locks, swap, logs).
 */

/** Errno-like failure codes; frontends map them to NFS3ERR_* or -errno. */
export type DatastoreErrorCode =
  | 'ENOENT'
  | 'EEXIST'
  | 'ENOTDIR'
  | 'EISDIR'
  | 'ENOTEMPTY'
  | 'EACCES'
  | 'EPERM'
  | 'EROFS'
  | 'ENOSPC'
  | 'EIO'
  | 'ENAMETOOLONG'
  | 'EINVAL'
  | 'ESTALE'
  | 'ENOTSUP'
  | 'EXDEV'
  | 'EFBIG';

export class DatastoreError extends Error {
  constructor(
    readonly code: DatastoreErrorCode,
    message?: string,
  ) {
    super(message ?? code);
    this.name = 'DatastoreError';
  }
}

export type FileType = 'file' | 'dir' | 'symlink';

/**
 * A file id is a positive safe integer, stable across server restarts:
 * the publication's number in the high bits, a per-publication id below.
 * 1 is the root directory.
 */
export type FileId = number;
export const ROOT_ID: FileId = 1;

export interface FileAttr {
  fileid: FileId;
  type: FileType;
  /** Permission bits only (e.g. 0o644). */
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  size: number;
  /** Bytes actually allocated (overlay + scratch), for du-like tools. */
  used: number;
  atime: Date;
  mtime: Date;
  ctime: Date;
}

export interface SetAttr {
  mode?: number;
  uid?: number;
  gid?: number;
  size?: number;
  atime?: Date;
  mtime?: Date;
}

export interface DirEntry {
  name: string;
  fileid: FileId;
}

export interface FsStat {
  totalBytes: number;
  freeBytes: number;
  availBytes: number;
  totalFiles: number;
  freeFiles: number;
}

/** Who is asking: AUTH_SYS credentials from NFS, the caller's ids from FUSE. */
export interface Caller {
  uid: number;
  gid: number;
}

export interface Datastore {
  getattr(id: FileId): Promise<FileAttr>;
  setattr(id: FileId, attr: SetAttr, caller?: Caller): Promise<FileAttr>;
  lookup(dir: FileId, name: string): Promise<FileId>;
  /** Entries in a stable order (by file id), without `.` and `..`. */
  readdir(dir: FileId): Promise<DirEntry[]>;
  read(id: FileId, offset: number, length: number): Promise<{ data: Buffer; eof: boolean }>;
  /** read() into the caller's buffer, up to its length: a frontend that owns a buffer (FUSE) skips an allocation per request. */
  readInto?(id: FileId, offset: number, target: Buffer): Promise<{ length: number; eof: boolean }>;
  /** Writes land in the publication's overlay or scratch file; `sync` makes them durable before returning. */
  write(id: FileId, offset: number, data: Buffer, sync: boolean): Promise<FileAttr>;
  /** Makes every acknowledged write to `id` durable (NFS COMMIT, FUSE fsync). */
  commit(id: FileId): Promise<void>;
  create(dir: FileId, name: string, mode: number, caller?: Caller, exclusive?: boolean): Promise<FileId>;
  mkdir(dir: FileId, name: string, mode: number, caller?: Caller): Promise<FileId>;
  remove(dir: FileId, name: string): Promise<void>;
  rmdir(dir: FileId, name: string): Promise<void>;
  rename(fromDir: FileId, fromName: string, toDir: FileId, toName: string): Promise<void>;
  symlink?(dir: FileId, name: string, target: string, caller?: Caller): Promise<FileId>;
  readlink?(id: FileId): Promise<string>;
  /** The directory containing `dir` (the root is its own parent); NFS LOOKUP of `..`. Optional: without it `..` resolves only at the root. */
  parent?(dir: FileId): Promise<FileId>;
  fsstat(id: FileId): Promise<FsStat>;
  /**
   * The allocation map of [offset, offset+length) clamped to the file's size,
   * in order from `offset`: holes (nothing stored) and ranges known to read as
   * zeros, for NBD block status. Cheap: it reads no data. Optional: without
   * it a frontend reports everything as data.
   */
  extents?(id: FileId, offset: number, length: number): Promise<Extent[]>;
  /** True when writes to this file id must be refused with EROFS. */
  readOnly(id: FileId): boolean;
}

/** One run of a file's allocation map (Datastore.extents). */
export interface Extent {
  length: number;
  /** Nothing is stored for it (a hole in the restore point, not overwritten). */
  hole: boolean;
  /** It reads as zeros. */
  zero: boolean;
}

/** Limits frontends report (NFS FSINFO/PATHCONF, FUSE statfs). */
export const NAME_MAX = 255;

import type { FileAttr, FileId } from '../../../datastore/types.js';
import { attrOrUndefined, fileIdOf, readHandle, resolve, requireDir, requireWritable, checkNewName, type NfsCall } from '../context.js';
import type { XdrReader, XdrWriter } from '../../xdr.js';
import { Nfs3Status, writePostOpAttr, writeWcc, writeFattr } from '../types.js';

/** diropargs3 (RFC 1813 2.5). */
export const readDirop = (r: XdrReader): { dir: Buffer; name: string } => ({ dir: readHandle(r), name: r.string(1024) });

/** Resolves the directory of a modifying call and snapshots its pre-op attributes. */
export async function modifyingDir(call: NfsCall, dir: Buffer, name: string): Promise<{ id: FileId; pre: FileAttr }> {
  const { id, attr } = await resolve(call, dir);
  requireDir(attr);
  requireWritable(call, id);
  checkNewName(name);
  return { id, pre: attr };
}

/** The resok of CREATE/MKDIR/SYMLINK/MKNOD: post_op_fh3, post_op_attr, dir wcc. */
export async function writeCreated(call: NfsCall, w: XdrWriter, id: FileId, dir: FileId, pre: FileAttr): Promise<void> {
  const attr = await attrOrUndefined(call, id);
  w.u32(Nfs3Status.OK).bool(true).opaque(call.env.handles.encode(id));
  w.bool(attr !== undefined);
  if (attr) writeFattr(w, attr);
  writeWcc(w, pre, await attrOrUndefined(call, dir));
}

export async function failDirWcc(call: NfsCall, dir: Buffer, w: XdrWriter): Promise<void> {
  writeWcc(w, undefined, await attrOrUndefined(call, fileIdOf(call, dir)));
}

export async function failPostOp(call: NfsCall, fh: Buffer, w: XdrWriter): Promise<void> {
  writePostOpAttr(w, await attrOrUndefined(call, fileIdOf(call, fh)));
}

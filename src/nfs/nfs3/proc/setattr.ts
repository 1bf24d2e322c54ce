import type { SetAttr } from '../../../datastore/types.js';
import { attrOrUndefined, checkOwnerChange, fileIdOf, readHandle, requireWritable, resolve } from '../context.js';
import { defineProc } from '../procedure.js';
import { Nfs3Status, NfsStatusError, readSattr, readTime, writeWcc, type Sattr3 } from '../types.js';

export function toSetAttr(s: Sattr3): SetAttr {
  const now = new Date();
  const out: SetAttr = {};
  if (s.mode !== undefined) out.mode = s.mode;
  if (s.uid !== undefined) out.uid = s.uid;
  if (s.gid !== undefined) out.gid = s.gid;
  if (s.size !== undefined) out.size = s.size;
  if (s.atime !== undefined) out.atime = s.atime === 'server' ? now : s.atime;
  if (s.mtime !== undefined) out.mtime = s.mtime === 'server' ? now : s.mtime;
  return out;
}

/** NFSPROC3_SETATTR (RFC 1813 3.3.2). */
export const setattr = defineProc({
  name: 'SETATTR',
  decode: (r) => ({ fh: readHandle(r), attr: readSattr(r), guard: r.optional(readTime) }),
  async run(call, a, w) {
    const { id, attr: pre } = await resolve(call, a.fh);
    requireWritable(call, id);
    checkOwnerChange(call, a.attr);
    // The guard compares whole seconds and nanoseconds; we keep milliseconds, so compare at that precision.
    if (a.guard && a.guard.getTime() !== Math.floor(pre.ctime.getTime())) throw new NfsStatusError(Nfs3Status.NOT_SYNC);
    const post = await call.env.datastore.setattr(id, toSetAttr(a.attr), call.caller);
    w.u32(Nfs3Status.OK);
    writeWcc(w, pre, post);
  },
  async fail(call, a, w) {
    writeWcc(w, undefined, await attrOrUndefined(call, fileIdOf(call, a.fh)));
  },
});

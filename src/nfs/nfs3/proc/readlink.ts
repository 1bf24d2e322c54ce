import { attrOrUndefined, fileIdOf, readHandle, resolve } from '../context.js';
import { defineProc } from '../procedure.js';
import { Nfs3Status, NfsStatusError, writePostOpAttr } from '../types.js';

/** NFSPROC3_READLINK (RFC 1813 3.3.5). */
export const readlink = defineProc({
  name: 'READLINK',
  decode: (r) => ({ fh: readHandle(r) }),
  async run(call, a, w) {
    const { id, attr } = await resolve(call, a.fh);
    if (attr.type !== 'symlink') throw new NfsStatusError(Nfs3Status.INVAL);
    const ds = call.env.datastore;
    if (!ds.readlink) throw new NfsStatusError(Nfs3Status.NOTSUPP);
    const target = await ds.readlink(id);
    w.u32(Nfs3Status.OK);
    writePostOpAttr(w, attr);
    w.string(target);
  },
  async fail(call, a, w) {
    writePostOpAttr(w, await attrOrUndefined(call, fileIdOf(call, a.fh)));
  },
});

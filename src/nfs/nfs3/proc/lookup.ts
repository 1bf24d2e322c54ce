import { attrOrUndefined, checkName, fileIdOf, readHandle, requireDir, resolve, ROOT_ID } from '../context.js';
import { defineProc } from '../procedure.js';
import { Nfs3Status, NfsStatusError, writeFattr, writePostOpAttr } from '../types.js';

/** NFSPROC3_LOOKUP (RFC 1813 3.3.3). */
export const lookup = defineProc({
  name: 'LOOKUP',
  decode: (r) => ({ dir: readHandle(r), name: r.string(1024) }),
  async run(call, a, w) {
    const { id: dir, attr: dirAttr } = await resolve(call, a.dir);
    requireDir(dirAttr);
    let id: number;
    if (a.name === '.') id = dir;
    else if (a.name === '..') {
      const ds = call.env.datastore;
      if (dir === ROOT_ID) id = ROOT_ID;
      else if (ds.parent) id = await ds.parent(dir);
      else throw new NfsStatusError(Nfs3Status.NOENT);
    } else {
      checkName(a.name);
      id = await call.env.datastore.lookup(dir, a.name);
    }
    const attr = await call.env.datastore.getattr(id);
    w.u32(Nfs3Status.OK).opaque(call.env.handles.encode(id)).bool(true);
    writeFattr(w, attr);
    writePostOpAttr(w, dirAttr);
  },
  async fail(call, a, w) {
    writePostOpAttr(w, await attrOrUndefined(call, fileIdOf(call, a.dir)));
  },
});

import { attrOrUndefined, readHandle, resolve } from '../context.js';
import { defineProc } from '../procedure.js';
import { Nfs3Status, writeWcc } from '../types.js';
import { failDirWcc } from './dirop.js';

/**
 * NFSPROC3_COMMIT (RFC 1813 3.3.21). The whole file is committed whatever
 * the range: the datastore's commit is per file, and more durable is honest.
 */
export const commit = defineProc({
  name: 'COMMIT',
  decode: (r) => ({ fh: readHandle(r), offset: r.u64(), count: r.u32() }),
  async run(call, a, w) {
    const { id, attr: pre } = await resolve(call, a.fh);
    await call.env.datastore.commit(id);
    w.u32(Nfs3Status.OK);
    writeWcc(w, pre, await attrOrUndefined(call, id));
    w.fixed(call.env.writeVerifier);
  },
  fail: (call, a, w) => failDirWcc(call, a.fh, w),
});

import { readHandle, resolve } from '../context.js';
import { defineProc } from '../procedure.js';
import { Nfs3Status, writePostOpAttr } from '../types.js';
import { failPostOp } from './dirop.js';

/** NFSPROC3_FSSTAT (RFC 1813 3.3.18): the overlay's real space, from the datastore. */
export const fsstat = defineProc({
  name: 'FSSTAT',
  decode: (r) => ({ fh: readHandle(r) }),
  async run(call, a, w) {
    const { id, attr } = await resolve(call, a.fh);
    const s = await call.env.datastore.fsstat(id);
    w.u32(Nfs3Status.OK);
    writePostOpAttr(w, attr);
    w.u64(s.totalBytes).u64(s.freeBytes).u64(s.availBytes).u64(s.totalFiles).u64(s.freeFiles).u64(s.freeFiles).u32(0);
  },
  fail: (call, a, w) => failPostOp(call, a.fh, w),
});

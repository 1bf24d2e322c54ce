import { NAME_MAX } from '../../../datastore/types.js';
import { readHandle, resolve } from '../context.js';
import { defineProc } from '../procedure.js';
import { Nfs3Status, writePostOpAttr } from '../types.js';
import { failPostOp } from './dirop.js';

/** NFSPROC3_PATHCONF (RFC 1813 3.3.20). */
export const pathconf = defineProc({
  name: 'PATHCONF',
  decode: (r) => ({ fh: readHandle(r) }),
  async run(call, a, w) {
    const { attr } = await resolve(call, a.fh);
    w.u32(Nfs3Status.OK);
    writePostOpAttr(w, attr);
    // linkmax, name_max, no_trunc, chown_restricted, case_insensitive, case_preserving
    w.u32(1).u32(NAME_MAX).bool(true).bool(true).bool(false).bool(true);
  },
  fail: (call, a, w) => failPostOp(call, a.fh, w),
});

import { readHandle, resolve } from '../context.js';
import { defineProc } from '../procedure.js';
import { Nfs3Status, writeFattr } from '../types.js';

/** NFSPROC3_GETATTR (RFC 1813 3.3.1). */
export const getattr = defineProc({
  name: 'GETATTR',
  decode: (r) => ({ fh: readHandle(r) }),
  async run(call, a, w) {
    const { attr } = await resolve(call, a.fh);
    w.u32(Nfs3Status.OK);
    writeFattr(w, attr);
  },
});

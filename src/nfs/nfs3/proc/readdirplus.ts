import { attrOrUndefined, readHandle, requireDir, resolve } from '../context.js';
import { defineProc } from '../procedure.js';
import { Nfs3Status, NfsStatusError, writeFattr, writePostOpAttr } from '../types.js';
import { failPostOp } from './dirop.js';
import { entriesAfter, entrySize, READDIR_OVERHEAD } from './readdir.js';
import { HANDLE_BYTES } from '../../handle.js';

const PLUS_EXTRA = 4 + 84 + 4 + 4 + HANDLE_BYTES;

/** NFSPROC3_READDIRPLUS (RFC 1813 3.3.17): dircount bounds names and cookies, maxcount the whole reply. */
export const readdirplus = defineProc({
  name: 'READDIRPLUS',
  decode: (r) => ({ dir: readHandle(r), cookie: r.u64(), verf: r.fixed(8), dircount: r.u32(), maxcount: r.u32() }),
  async run(call, a, w) {
    const { id, attr } = await resolve(call, a.dir);
    requireDir(attr);
    const entries = await entriesAfter(call, a, id);
    let used = READDIR_OVERHEAD;
    let dirUsed = 0;
    let n = 0;
    for (const e of entries) {
      const s = entrySize(e);
      if (used + s + PLUS_EXTRA > a.maxcount || (n > 0 && dirUsed + s > a.dircount)) break;
      used += s + PLUS_EXTRA;
      dirUsed += s;
      n++;
    }
    if (n === 0 && entries.length > 0) throw new NfsStatusError(Nfs3Status.TOOSMALL);
    w.u32(Nfs3Status.OK);
    writePostOpAttr(w, attr);
    w.fixed(call.env.cookieVerifier);
    for (const e of entries.slice(0, n)) {
      w.bool(true).u64(e.fileid).string(e.name).u64(e.cookie);
      const ea = await attrOrUndefined(call, e.fileid);
      w.bool(ea !== undefined);
      if (ea) writeFattr(w, ea);
      w.bool(true).opaque(call.env.handles.encode(e.fileid));
    }
    w.bool(false).bool(n === entries.length);
  },
  fail: (call, a, w) => failPostOp(call, a.dir, w),
});

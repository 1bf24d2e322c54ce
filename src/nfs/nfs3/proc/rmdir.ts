import { attrOrUndefined } from '../context.js';
import { defineProc } from '../procedure.js';
import { Nfs3Status, writeWcc } from '../types.js';
import { failDirWcc, modifyingDir, readDirop } from './dirop.js';

/** NFSPROC3_RMDIR (RFC 1813 3.3.13). */
export const rmdir = defineProc({
  name: 'RMDIR',
  decode: readDirop,
  async run(call, a, w) {
    const { id: dir, pre } = await modifyingDir(call, a.dir, a.name);
    await call.env.datastore.rmdir(dir, a.name);
    w.u32(Nfs3Status.OK);
    writeWcc(w, pre, await attrOrUndefined(call, dir));
  },
  fail: (call, a, w) => failDirWcc(call, a.dir, w),
});

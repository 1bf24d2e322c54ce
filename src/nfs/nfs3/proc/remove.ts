import { attrOrUndefined } from '../context.js';
import { defineProc } from '../procedure.js';
import { Nfs3Status, writeWcc } from '../types.js';
import { failDirWcc, modifyingDir, readDirop } from './dirop.js';

/** NFSPROC3_REMOVE (RFC 1813 3.3.12). */
export const remove = defineProc({
  name: 'REMOVE',
  decode: readDirop,
  async run(call, a, w) {
    const { id: dir, pre } = await modifyingDir(call, a.dir, a.name);
    await call.env.datastore.remove(dir, a.name);
    call.env.exclusiveCreates.delete(`${dir}/${a.name}`);
    w.u32(Nfs3Status.OK);
    writeWcc(w, pre, await attrOrUndefined(call, dir));
  },
  fail: (call, a, w) => failDirWcc(call, a.dir, w),
});

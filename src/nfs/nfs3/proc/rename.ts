import { attrOrUndefined, fileIdOf } from '../context.js';
import { defineProc } from '../procedure.js';
import { Nfs3Status, writeWcc } from '../types.js';
import { modifyingDir, readDirop } from './dirop.js';

/** NFSPROC3_RENAME (RFC 1813 3.3.14). */
export const rename = defineProc({
  name: 'RENAME',
  decode: (r) => ({ from: readDirop(r), to: readDirop(r) }),
  async run(call, a, w) {
    const from = await modifyingDir(call, a.from.dir, a.from.name);
    const to = await modifyingDir(call, a.to.dir, a.to.name);
    await call.env.datastore.rename(from.id, a.from.name, to.id, a.to.name);
    w.u32(Nfs3Status.OK);
    writeWcc(w, from.pre, await attrOrUndefined(call, from.id));
    writeWcc(w, to.pre, await attrOrUndefined(call, to.id));
  },
  async fail(call, a, w) {
    writeWcc(w, undefined, await attrOrUndefined(call, fileIdOf(call, a.from.dir)));
    writeWcc(w, undefined, await attrOrUndefined(call, fileIdOf(call, a.to.dir)));
  },
});

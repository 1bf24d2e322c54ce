import { attrOrUndefined, fileIdOf, readHandle, resolve } from '../context.js';
import { defineProc } from '../procedure.js';
import { Nfs3Status, NfsStatusError, writePostOpAttr, writeWcc } from '../types.js';
import { modifyingDir, readDirop } from './dirop.js';

/** NFSPROC3_LINK (RFC 1813 3.3.15): the datastore has no hard links (FSINFO does not claim FSF3_LINK). */
export const link = defineProc({
  name: 'LINK',
  decode: (r) => ({ fh: readHandle(r), to: readDirop(r) }),
  async run(call, a) {
    await resolve(call, a.fh);
    await modifyingDir(call, a.to.dir, a.to.name);
    throw new NfsStatusError(Nfs3Status.NOTSUPP);
  },
  async fail(call, a, w) {
    writePostOpAttr(w, await attrOrUndefined(call, fileIdOf(call, a.fh)));
    writeWcc(w, undefined, await attrOrUndefined(call, fileIdOf(call, a.to.dir)));
  },
});

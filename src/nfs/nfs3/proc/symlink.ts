import { defineProc } from '../procedure.js';
import { Nfs3Status, NfsStatusError, readSattr } from '../types.js';
import { failDirWcc, modifyingDir, readDirop, writeCreated } from './dirop.js';

/** NFSPROC3_SYMLINK (RFC 1813 3.3.10): NOTSUPP when the datastore has no symlinks. */
export const symlink = defineProc({
  name: 'SYMLINK',
  decode: (r) => ({ ...readDirop(r), attr: readSattr(r), target: r.string(4096) }),
  async run(call, a, w) {
    const { id: dir, pre } = await modifyingDir(call, a.dir, a.name);
    const ds = call.env.datastore;
    if (!ds.symlink) throw new NfsStatusError(Nfs3Status.NOTSUPP);
    const id = await ds.symlink(dir, a.name, a.target, call.caller);
    await writeCreated(call, w, id, dir, pre);
  },
  fail: (call, a, w) => failDirWcc(call, a.dir, w),
});

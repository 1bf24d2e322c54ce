import { defineProc } from '../procedure.js';
import { Ftype3, Nfs3Status, NfsStatusError, readSattr } from '../types.js';
import { failDirWcc, modifyingDir, readDirop } from './dirop.js';

/** NFSPROC3_MKNOD (RFC 1813 3.3.11): the datastore holds no device nodes or fifos. */
export const mknod = defineProc({
  name: 'MKNOD',
  decode: (r) => {
    const op = readDirop(r);
    const type = r.enum([Ftype3.REG, Ftype3.DIR, Ftype3.BLK, Ftype3.CHR, Ftype3.LNK, Ftype3.SOCK, Ftype3.FIFO]);
    if (type === Ftype3.CHR || type === Ftype3.BLK) {
      readSattr(r);
      r.u32();
      r.u32();
    } else if (type === Ftype3.SOCK || type === Ftype3.FIFO) readSattr(r);
    return { ...op, type };
  },
  async run(call, a) {
    await modifyingDir(call, a.dir, a.name);
    // RFC 1813: BADTYPE for types the server does not support creating.
    throw new NfsStatusError(
      a.type === Ftype3.REG || a.type === Ftype3.DIR || a.type === Ftype3.LNK ? Nfs3Status.BADTYPE : Nfs3Status.NOTSUPP,
    );
  },
  fail: (call, a, w) => failDirWcc(call, a.dir, w),
});

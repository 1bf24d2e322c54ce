import { defineProc } from '../procedure.js';
import { readSattr } from '../types.js';
import { failDirWcc, modifyingDir, readDirop, writeCreated } from './dirop.js';

/** NFSPROC3_MKDIR (RFC 1813 3.3.9). */
export const mkdir = defineProc({
  name: 'MKDIR',
  decode: (r) => ({ ...readDirop(r), attr: readSattr(r) }),
  async run(call, a, w) {
    const { id: dir, pre } = await modifyingDir(call, a.dir, a.name);
    const id = await call.env.datastore.mkdir(dir, a.name, a.attr.mode ?? 0o755, call.caller);
    await writeCreated(call, w, id, dir, pre);
  },
  fail: (call, a, w) => failDirWcc(call, a.dir, w),
});

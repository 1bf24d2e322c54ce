import { DatastoreError } from '../../../datastore/types.js';
import { defineProc } from '../procedure.js';
import { Nfs3Status, NfsStatusError, isEmptySattr, readSattr, type Sattr3 } from '../types.js';
import { failDirWcc, modifyingDir, readDirop, writeCreated } from './dirop.js';
import { toSetAttr } from './setattr.js';
import { checkOwnerChange, rememberExclusiveCreate } from '../context.js';

const enum CreateMode {
  UNCHECKED = 0,
  GUARDED = 1,
  EXCLUSIVE = 2,
}

/**
 * NFSPROC3_CREATE (RFC 1813 3.3.8). EXCLUSIVE keeps the client's verifier
 * in memory so a retransmitted create succeeds; the datastore has no place
 * to store it, so after a restart a retransmission answers EXIST.
 */
export const create = defineProc({
  name: 'CREATE',
  decode: (r) => {
    const { dir, name } = readDirop(r);
    const how = r.enum([CreateMode.UNCHECKED, CreateMode.GUARDED, CreateMode.EXCLUSIVE]);
    const attr: Sattr3 = how === CreateMode.EXCLUSIVE ? {} : readSattr(r);
    const verf = how === CreateMode.EXCLUSIVE ? r.fixed(8) : undefined;
    return { dir, name, how, attr, verf };
  },
  async run(call, a, w) {
    const { id: dir, pre } = await modifyingDir(call, a.dir, a.name);
    const ds = call.env.datastore;
    const mode = a.attr.mode ?? 0o644;
    let id: number;
    if (a.how === CreateMode.EXCLUSIVE) {
      const key = `${dir}/${a.name}`;
      try {
        id = await ds.create(dir, a.name, mode, call.caller, true);
        rememberExclusiveCreate(call.env, key, Buffer.from(a.verf!));
      } catch (e) {
        const prior = call.env.exclusiveCreates.get(key);
        if (e instanceof DatastoreError && e.code === 'EEXIST' && prior?.equals(a.verf!)) id = await ds.lookup(dir, a.name);
        else throw e;
      }
    } else {
      checkOwnerChange(call, a.attr);
      id = await ds.create(dir, a.name, mode, call.caller, a.how === CreateMode.GUARDED);
      const rest = { ...a.attr };
      delete rest.mode;
      if (!isEmptySattr(rest)) await ds.setattr(id, toSetAttr(rest), call.caller);
    }
    if (!Number.isSafeInteger(id) || id <= 0) throw new NfsStatusError(Nfs3Status.SERVERFAULT);
    await writeCreated(call, w, id, dir, pre);
  },
  fail: (call, a, w) => failDirWcc(call, a.dir, w),
});

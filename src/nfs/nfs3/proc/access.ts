import { attrOrUndefined, fileIdOf, readHandle, resolve } from '../context.js';
import { defineProc } from '../procedure.js';
import {
  ACCESS3_DELETE,
  ACCESS3_EXECUTE,
  ACCESS3_EXTEND,
  ACCESS3_LOOKUP,
  ACCESS3_MODIFY,
  ACCESS3_READ,
  Nfs3Status,
  writePostOpAttr,
} from '../types.js';

/**
 * NFSPROC3_ACCESS (RFC 1813 3.3.4). Permission is finally decided by the
 * datastore on each operation; here we answer what the export and the
 * file's mode allow, so clients do not attempt writes that must fail.
 */
export const access = defineProc({
  name: 'ACCESS',
  decode: (r) => ({ fh: readHandle(r), access: r.u32() }),
  async run(call, a, w) {
    const { id, attr } = await resolve(call, a.fh);
    let allowed = ACCESS3_READ | ACCESS3_MODIFY | ACCESS3_EXTEND | ACCESS3_DELETE;
    if (attr.type === 'dir') allowed |= ACCESS3_LOOKUP;
    else if (attr.mode & 0o111) allowed |= ACCESS3_EXECUTE;
    if (call.env.readOnly || call.env.datastore.readOnly(id)) allowed &= ~(ACCESS3_MODIFY | ACCESS3_EXTEND | ACCESS3_DELETE);
    w.u32(Nfs3Status.OK);
    writePostOpAttr(w, attr);
    w.u32(a.access & allowed);
  },
  async fail(call, a, w) {
    writePostOpAttr(w, await attrOrUndefined(call, fileIdOf(call, a.fh)));
  },
});

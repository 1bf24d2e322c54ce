import { attrOrUndefined, fileIdOf, readHandle, resolve } from '../context.js';
import { defineProc } from '../procedure.js';
import { NFS_IO_MAX, Nfs3Status, NfsStatusError, writePostOpAttr } from '../types.js';
import { countBytes } from '../../../telemetry/counters.js';

/** NFSPROC3_READ (RFC 1813 3.3.6). */
export const read = defineProc({
  name: 'READ',
  decode: (r) => ({ fh: readHandle(r), offset: r.u64(), count: r.u32() }),
  async run(call, a, w) {
    const { id, attr } = await resolve(call, a.fh);
    if (attr.type === 'dir') throw new NfsStatusError(Nfs3Status.ISDIR);
    if (attr.type !== 'file') throw new NfsStatusError(Nfs3Status.INVAL);
    const count = Math.min(a.count, NFS_IO_MAX);
    const { data, eof } = count === 0 || a.offset >= attr.size
      ? { data: Buffer.alloc(0), eof: a.offset >= attr.size }
      : await call.env.datastore.read(id, a.offset, count);
    call.env.counters.bytesRead += data.length;
    countBytes('nfs', 'read', data.length);
    w.u32(Nfs3Status.OK);
    writePostOpAttr(w, attr);
    w.u32(data.length).bool(eof).opaque(data);
  },
  async fail(call, a, w) {
    writePostOpAttr(w, await attrOrUndefined(call, fileIdOf(call, a.fh)));
  },
});

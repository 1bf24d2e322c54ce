import { attrOrUndefined, fileIdOf, readHandle, requireWritable, resolve } from '../context.js';
import { defineProc } from '../procedure.js';
import { NFS_IO_MAX, Nfs3Status, NfsStatusError, StableHow, writeWcc } from '../types.js';
import { countBytes } from '../../../telemetry/counters.js';

/**
 * NFSPROC3_WRITE (RFC 1813 3.3.7). DATA_SYNC and FILE_SYNC are both made
 * durable before replying and answered FILE_SYNC; UNSTABLE writes are
 * answered UNSTABLE and made durable by COMMIT.
 */
export const write = defineProc({
  name: 'WRITE',
  decode: (r) => {
    const fh = readHandle(r);
    const offset = r.u64();
    const count = r.u32();
    const stable = r.enum([StableHow.UNSTABLE, StableHow.DATA_SYNC, StableHow.FILE_SYNC]);
    const data = r.opaque(NFS_IO_MAX);
    return { fh, offset, count, stable, data };
  },
  async run(call, a, w) {
    const { id, attr: pre } = await resolve(call, a.fh);
    requireWritable(call, id);
    if (pre.type === 'dir') throw new NfsStatusError(Nfs3Status.ISDIR);
    if (pre.type !== 'file') throw new NfsStatusError(Nfs3Status.INVAL);
    if (a.count > a.data.length) throw new NfsStatusError(Nfs3Status.INVAL);
    const data = a.data.subarray(0, a.count);
    const sync = a.stable !== StableHow.UNSTABLE;
    const post = await call.env.datastore.write(id, a.offset, data, sync);
    call.env.counters.bytesWritten += data.length;
    countBytes('nfs', 'write', data.length);
    w.u32(Nfs3Status.OK);
    writeWcc(w, pre, post);
    w.u32(data.length)
      .u32(sync ? StableHow.FILE_SYNC : StableHow.UNSTABLE)
      .fixed(call.env.writeVerifier);
  },
  async fail(call, a, w) {
    writeWcc(w, undefined, await attrOrUndefined(call, fileIdOf(call, a.fh)));
  },
});

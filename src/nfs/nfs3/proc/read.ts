import { attrOrUndefined, fileIdOf, readHandle, resolve, type NfsEnv } from '../context.js';
import { POOLED_RECORD_MIN } from '../../record.js';
import type { FileId } from '../../../datastore/types.js';
import { defineProc } from '../procedure.js';
import { NFS_IO_MAX, Nfs3Status, NfsStatusError, writePostOpAttr } from '../types.js';
import { countBytes } from '../../../telemetry/counters.js';

/**
 * The bytes of a READ. A large one goes into a reused reply buffer: a fresh
 * 1 MiB buffer per READ is mapped, faulted in and unmapped each time (the
 * publisher keeps large allocations out of glibc's heap, src/host/malloc.ts),
 * which cost a third of warm read throughput.
 */
async function readData(env: NfsEnv, id: FileId, offset: number, count: number): Promise<{ data: Buffer; eof: boolean }> {
  const ds = env.datastore;
  if (!ds.readInto) return ds.read(id, offset, count);
  const target = (count >= POOLED_RECORD_MIN ? env.replyBuffers?.acquire(count) : undefined) ?? Buffer.allocUnsafe(count);
  const { length, eof } = await ds.readInto(id, offset, target);
  return { data: target.subarray(0, length), eof };
}

/** NFSPROC3_READ (RFC 1813 3.3.6). */
export const read = defineProc({
  name: 'READ',
  decode: (r) => ({ fh: readHandle(r), offset: r.u64(), count: r.u32() }),
  async run(call, a, w) {
    const { id, attr } = await resolve(call, a.fh);
    if (attr.type === 'dir') throw new NfsStatusError(Nfs3Status.ISDIR);
    if (attr.type !== 'file') throw new NfsStatusError(Nfs3Status.INVAL);
    const count = Math.min(a.count, NFS_IO_MAX);
    const { data, eof } =
      count === 0 || a.offset >= attr.size
        ? { data: Buffer.alloc(0), eof: a.offset >= attr.size }
        : await readData(call.env, id, a.offset, count);
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

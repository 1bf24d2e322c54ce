import { readHandle, resolve } from '../context.js';
import { defineProc } from '../procedure.js';
import { NFS_IO_MAX, Nfs3Status, writePostOpAttr } from '../types.js';
import { failPostOp } from './dirop.js';

const FSF3_SYMLINK = 0x2;
const FSF3_HOMOGENEOUS = 0x8;
const FSF3_CANSETTIME = 0x10;

/** NFSPROC3_FSINFO (RFC 1813 3.3.19). */
export const fsinfo = defineProc({
  name: 'FSINFO',
  decode: (r) => ({ fh: readHandle(r) }),
  async run(call, a, w) {
    const { attr } = await resolve(call, a.fh);
    const props = FSF3_HOMOGENEOUS | FSF3_CANSETTIME | (call.env.datastore.symlink ? FSF3_SYMLINK : 0);
    w.u32(Nfs3Status.OK);
    writePostOpAttr(w, attr);
    w.u32(NFS_IO_MAX)
      .u32(NFS_IO_MAX)
      .u32(4096) // rtmax rtpref rtmult
      .u32(NFS_IO_MAX)
      .u32(NFS_IO_MAX)
      .u32(4096) // wtmax wtpref wtmult
      .u32(NFS_IO_MAX) // dtpref
      .u64(Number.MAX_SAFE_INTEGER) // maxfilesize
      .u32(0)
      .u32(1_000_000) // time_delta: we keep milliseconds
      .u32(props);
  },
  fail: (call, a, w) => failPostOp(call, a.fh, w),
});

/**
 * The NFSv3 dispatch table (RFC 1813 section 3: procedure numbers 0-21)
 * and the wrapper that turns NfsStatusError / DatastoreError into a status
 * plus the procedure's resfail body.
 */
import type { RpcProcedure, RpcProgram } from '../rpc.js';
import type { XdrWriter } from '../xdr.js';
import { XdrError } from '../xdr.js';
import type { NfsEnv } from './context.js';
import type { NfsProcedure } from './procedure.js';
import { NFS_PROG, NFS_VERS, Nfs3Status, NfsStatusError } from './types.js';
import { countOp } from '../../telemetry/counters.js';
import { nullProc } from './proc/null.js';
import { getattr } from './proc/getattr.js';
import { setattr } from './proc/setattr.js';
import { lookup } from './proc/lookup.js';
import { access } from './proc/access.js';
import { readlink } from './proc/readlink.js';
import { read } from './proc/read.js';
import { write } from './proc/write.js';
import { create } from './proc/create.js';
import { mkdir } from './proc/mkdir.js';
import { symlink } from './proc/symlink.js';
import { mknod } from './proc/mknod.js';
import { remove } from './proc/remove.js';
import { rmdir } from './proc/rmdir.js';
import { rename } from './proc/rename.js';
import { link } from './proc/link.js';
import { readdir } from './proc/readdir.js';
import { readdirplus } from './proc/readdirplus.js';
import { fsstat } from './proc/fsstat.js';
import { fsinfo } from './proc/fsinfo.js';
import { pathconf } from './proc/pathconf.js';
import { commit } from './proc/commit.js';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export const NFS3_PROCEDURES: readonly NfsProcedure<any>[] = [
  nullProc,
  getattr,
  setattr,
  lookup,
  access,
  readlink,
  read,
  write,
  create,
  mkdir,
  symlink,
  mknod,
  remove,
  rmdir,
  rename,
  link,
  readdir,
  readdirplus,
  fsstat,
  fsinfo,
  pathconf,
  commit,
];

export interface NfsLog {
  warn(msg: string, err: unknown): void;
}

function wrap<A>(env: NfsEnv, p: NfsProcedure<A>, log?: NfsLog): RpcProcedure {
  return async (r, ctx, w: XdrWriter) => {
    const args = p.decode(r); // XdrError propagates: GARBAGE_ARGS
    env.counters.ops++;
    env.counters.byProc[p.name] = (env.counters.byProc[p.name] ?? 0) + 1;
    countOp('nfs', p.name); // process-wide, for /metrics; READ/WRITE add their bytes
    const call = { env, rpc: ctx, caller: ctx.caller };
    const mark = w.length;
    try {
      if (p !== nullProc && !env.isAllowed(ctx.remoteAddress)) throw new NfsStatusError(Nfs3Status.ACCES);
      await p.run(call, args, w);
    } catch (e) {
      if (e instanceof XdrError) throw e;
      let status = NfsStatusError.from(e)?.status;
      if (status === undefined) {
        log?.warn(`NFS ${p.name} failed`, e);
        status = Nfs3Status.SERVERFAULT;
      }
      env.counters.errors++;
      truncateTo(w, mark);
      w.u32(status);
      if (p.fail) await p.fail(call, args, w);
    }
  };
}

/** Drops a half-written resok body, keeping the RPC header before it. */
function truncateTo(w: XdrWriter, mark: number): void {
  const head = Buffer.concat(w.pieces()).subarray(0, mark);
  w.reset().fixed(Buffer.from(head));
}

export function nfsProgram(env: NfsEnv, log?: NfsLog): RpcProgram {
  return { prog: NFS_PROG, vers: NFS_VERS, name: 'nfs', procs: NFS3_PROCEDURES.map((p) => wrap(env, p, log)) };
}

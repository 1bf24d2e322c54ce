import type { DirEntry } from '../../../datastore/types.js';
import { readHandle, requireDir, resolve, ROOT_ID, type NfsCall } from '../context.js';
import { defineProc } from '../procedure.js';
import { Nfs3Status, NfsStatusError, writePostOpAttr } from '../types.js';
import { failPostOp } from './dirop.js';

const padded = (n: number): number => (n + 3) & ~3;
/** status + post_op_attr + cookieverf + list end + eof. */
export const READDIR_OVERHEAD = 4 + 4 + 84 + 8 + 4 + 4;

/** A directory entry with its READDIR cookie. */
export interface Listed extends DirEntry {
  cookie: number;
}

/**
 * Entries after `cookie`. `.` has cookie 1, `..` cookie 2, and every other
 * entry its file id + 2 (file id 1 is the root, never an entry). The
 * datastore lists by file id, so a cookie stays valid across inserts,
 * removals and server restarts, and the verifier never has to invalidate it.
 */
export async function entriesAfter(call: NfsCall, a: { cookie: number; verf: Buffer }, dir: number): Promise<Listed[]> {
  if (a.cookie !== 0 && !a.verf.equals(call.env.cookieVerifier)) throw new NfsStatusError(Nfs3Status.BAD_COOKIE);
  const ds = call.env.datastore;
  const out: Listed[] = [];
  if (a.cookie < 1) out.push({ name: '.', fileid: dir, cookie: 1 });
  if (a.cookie < 2) {
    const parent = dir === ROOT_ID ? ROOT_ID : ds.parent ? await ds.parent(dir) : undefined;
    if (parent !== undefined) out.push({ name: '..', fileid: parent, cookie: 2 });
  }
  const after = Math.max(0, a.cookie - 2);
  const all = await ds.readdir(dir);
  for (const e of all.filter((x) => x.fileid > after).sort((x, y) => x.fileid - y.fileid)) out.push({ ...e, cookie: e.fileid + 2 });
  return out;
}

export const entrySize = (e: DirEntry): number => 4 + 8 + 4 + padded(Buffer.byteLength(e.name)) + 8;

/** NFSPROC3_READDIR (RFC 1813 3.3.16). */
export const readdir = defineProc({
  name: 'READDIR',
  decode: (r) => ({ dir: readHandle(r), cookie: r.u64(), verf: r.fixed(8), count: r.u32() }),
  async run(call, a, w) {
    const { id, attr } = await resolve(call, a.dir);
    requireDir(attr);
    const entries = await entriesAfter(call, a, id);
    let used = READDIR_OVERHEAD;
    let n = 0;
    for (const e of entries) {
      const s = entrySize(e);
      if (used + s > a.count) break;
      used += s;
      n++;
    }
    if (n === 0 && entries.length > 0) throw new NfsStatusError(Nfs3Status.TOOSMALL);
    w.u32(Nfs3Status.OK);
    writePostOpAttr(w, attr);
    w.fixed(call.env.cookieVerifier);
    for (const e of entries.slice(0, n)) w.bool(true).u64(e.fileid).string(e.name).u64(e.cookie);
    w.bool(false).bool(n === entries.length);
  },
  fail: (call, a, w) => failPostOp(call, a.dir, w),
});

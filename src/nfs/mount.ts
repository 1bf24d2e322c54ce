/**
 * MOUNT v3 (RFC 1813 appendix I, program 100005): hands out the root file
 * handle of the export, or of a directory below it, to allowed clients.
 * libnfs mounts the URL's directory, so `/restorelab/<pub>` must work too.
 */
import { DatastoreError, ROOT_ID, type Datastore } from '../datastore/types.js';
import type { HandleCodec } from './handle.js';
import type { RpcProgram } from './rpc.js';
import { AUTH_NONE, AUTH_SYS } from './rpc.js';
import type { XdrReader, XdrWriter } from './xdr.js';

export const MOUNT_PROG = 100005;
export const MOUNT_VERS = 3;
const MNTPATHLEN = 1024;
const enum MountStat {
  OK = 0,
  PERM = 1,
  NOENT = 2,
  IO = 5,
  ACCES = 13,
  NOTDIR = 20,
  INVAL = 22,
  NAMETOOLONG = 63,
  NOTSUPP = 10004,
  SERVERFAULT = 10006,
}

export interface MountEnv {
  datastore: Datastore;
  handles: HandleCodec;
  exportPath: string;
  isAllowed(address: string): boolean;
  /** Clients allowed, as written in the configuration, for EXPORT. */
  allow: readonly string[];
  /** Bound of the mount table (limits.ts maxMountEntries). */
  maxEntries: number;
}

export function normalizePath(p: string): string {
  const parts = p.split('/').filter((x) => x !== '' && x !== '.');
  return '/' + parts.join('/');
}

/**
 * What DUMP lists: who mounted what. Informational only (NFS v3 is
 * stateless; nothing is refused for a missing entry), so it is bounded by
 * dropping the oldest entry, and keyed by the normalised path, so that
 * `/restorelab`, `//restorelab/` and `/restorelab/.` are one entry.
 */
export class MountTable {
  private readonly mounts = new Map<string, { host: string; dir: string }>();

  constructor(private readonly maxEntries: number) {}

  get size(): number {
    return this.mounts.size;
  }

  add(host: string, path: string): void {
    const dir = normalizePath(path);
    const key = `${host}\0${dir}`;
    this.mounts.delete(key);
    if (this.mounts.size >= this.maxEntries) {
      const oldest = this.mounts.keys().next().value;
      if (oldest !== undefined) this.mounts.delete(oldest);
    }
    this.mounts.set(key, { host, dir });
  }

  remove(host: string, path: string): void {
    this.mounts.delete(`${host}\0${normalizePath(path)}`);
  }

  removeHost(host: string): void {
    for (const [k, m] of this.mounts) if (m.host === host) this.mounts.delete(k);
  }

  entries(): IterableIterator<{ host: string; dir: string }> {
    return this.mounts.values();
  }
}

export function mountProgram(env: MountEnv, mounts = new MountTable(env.maxEntries)): RpcProgram {
  const exportPath = normalizePath(env.exportPath);

  async function resolvePath(path: string): Promise<{ stat: MountStat; id?: number }> {
    const p = normalizePath(path);
    if (p !== exportPath && !p.startsWith(exportPath === '/' ? '/' : exportPath + '/')) return { stat: MountStat.NOENT };
    const rest = p.slice(exportPath.length).split('/').filter(Boolean);
    let id = ROOT_ID;
    try {
      for (const name of rest) {
        if (name === '..') return { stat: MountStat.INVAL };
        id = await env.datastore.lookup(id, name);
      }
      if ((await env.datastore.getattr(id)).type !== 'dir') return { stat: MountStat.NOTDIR };
    } catch (e) {
      if (e instanceof DatastoreError)
        return { stat: e.code === 'ENOTDIR' ? MountStat.NOTDIR : e.code === 'EACCES' ? MountStat.ACCES : MountStat.NOENT };
      throw e;
    }
    return { stat: MountStat.OK, id };
  }

  const procs = [];
  procs[0] = () => {};
  // MOUNTPROC3_MNT
  procs[1] = async (r: XdrReader, ctx: { remoteAddress: string }, w: XdrWriter) => {
    const dir = r.string(MNTPATHLEN);
    if (!env.isAllowed(ctx.remoteAddress)) return void w.u32(MountStat.ACCES);
    const res = await resolvePath(dir);
    if (res.stat !== MountStat.OK || res.id === undefined) return void w.u32(res.stat);
    mounts.add(ctx.remoteAddress, dir);
    w.u32(MountStat.OK).opaque(env.handles.encode(res.id));
    w.u32(2).u32(AUTH_SYS).u32(AUTH_NONE);
  };
  // MOUNTPROC3_DUMP
  procs[2] = (_r: XdrReader, _ctx: unknown, w: XdrWriter) => {
    for (const m of mounts.entries()) w.bool(true).string(m.host).string(m.dir);
    w.bool(false);
  };
  // MOUNTPROC3_UMNT
  procs[3] = (r: XdrReader, ctx: { remoteAddress: string }) => {
    mounts.remove(ctx.remoteAddress, r.string(MNTPATHLEN));
  };
  // MOUNTPROC3_UMNTALL
  procs[4] = (_r: XdrReader, ctx: { remoteAddress: string }) => {
    mounts.removeHost(ctx.remoteAddress);
  };
  // MOUNTPROC3_EXPORT
  procs[5] = (_r: XdrReader, _ctx: unknown, w: XdrWriter) => {
    w.bool(true).string(exportPath);
    for (const g of env.allow) w.bool(true).string(g);
    w.bool(false).bool(false);
  };
  return { prog: MOUNT_PROG, vers: MOUNT_VERS, name: 'mount', procs };
}

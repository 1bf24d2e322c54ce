/**
 * PublicationDatastore: the Datastore seam (types.ts) over live publications.
 *
 * Layout: the root holds one directory per publication, `<vm>-<point>`; each
 * holds `<disk>.raw` (the overlay over the published disk), `<disk>.vmdk` (a
 * monolithicFlat descriptor) + `<disk>-flat.vmdk` (the same bytes as .raw),
 * `<vm>.json` (the VM definition), `<vm>.vmx` (a VMware configuration), and scratch files and directories a
 * hypervisor creates (locks, swap, logs), stored as ordinary files under the
 * publication's state directory.
 *
 * File ids: `number * PUBLICATION_ID_SPAN + local`. The publication number is
 * persisted with the publication; local ids are fixed for the virtual files
 * and persisted in `<state>/ids.json` for scratch files, so ids (and so NFS
 * file handles) survive a restart.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { VmDefinition } from '../vm/definition.js';
import { OverlayError, type Overlay } from '../overlay/overlay.js';
import { DiskIoError } from '../disk/published-disk.js';
import { vmdkDescriptor, vmxConfig } from './vmdk.js';
import {
  DatastoreError, NAME_MAX, ROOT_ID, type Caller, type Datastore, type DatastoreErrorCode, type DirEntry, type FileAttr,
  type FileId, type FsStat, type SetAttr,
} from './types.js';

/** Local ids per publication; publication numbers go above (2^53 / 2^24 leaves 2^29 publications). */
export const PUBLICATION_ID_SPAN = 2 ** 24;
const LOCAL_DIR = 1;
const LOCAL_DEFINITION = 2;
const LOCAL_VMX = 3;
const LOCAL_DISKS = 16;
const IDS_PER_DISK = 4;
const LOCAL_SCRATCH_FIRST = 4096;

export interface PublicationDisk {
  name: string;
  overlay: Overlay;
}

/** One publication as the datastore serves it. */
export interface DatastorePublication {
  id: string;
  /** Directory name, `<vm>-<point>`. */
  name: string;
  /** Persisted, unique per state directory; the high bits of every file id. */
  number: number;
  vm: VmDefinition;
  created: Date;
  disks: PublicationDisk[];
  /** The publication's state directory: scratch files and ids.json live here. */
  stateDir: string;
  /** Where the overlays live, for free-space reporting. */
  overlayDir: string;
  readOnly: boolean;
}

type Kind = 'dir' | 'definition' | 'vmx' | 'raw' | 'vmdk' | 'flat' | 'scratch';

interface Node {
  pub: Pub;
  kind: Kind;
  disk?: PublicationDisk;
  /** Scratch path relative to the scratch directory. */
  rel?: string;
  local: number;
}

class Pub {
  readonly scratchDir: string;
  readonly idsFile: string;
  next = LOCAL_SCRATCH_FIRST;
  readonly byRel = new Map<string, number>();
  readonly byLocal = new Map<number, string>();
  readonly mtimes = new Map<number, Date>();
  readonly definition: Buffer;
  readonly vmx: Buffer;
  readonly descriptors: Buffer[];

  constructor(readonly p: DatastorePublication) {
    this.scratchDir = path.join(p.stateDir, 'scratch');
    this.idsFile = path.join(p.stateDir, 'ids.json');
    this.definition = Buffer.from(JSON.stringify(p.vm, null, 2) + '\n');
    this.vmx = Buffer.from(vmxConfig(p.vm, p.disks.map((d) => d.name)));
    this.descriptors = p.disks.map((d) => Buffer.from(vmdkDescriptor(d.name, d.overlay.size)));
  }

  fileId(local: number): FileId {
    return this.p.number * PUBLICATION_ID_SPAN + local;
  }

  async load(): Promise<void> {
    await fs.promises.mkdir(this.scratchDir, { recursive: true });
    try {
      const saved = JSON.parse(await fs.promises.readFile(this.idsFile, 'utf8')) as { next: number; files: Record<string, number> };
      this.next = saved.next;
      for (const [rel, local] of Object.entries(saved.files)) this.remember(rel, local);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }

  remember(rel: string, local: number): void {
    this.byRel.set(rel, local);
    this.byLocal.set(local, rel);
  }

  forget(rel: string): void {
    const local = this.byRel.get(rel);
    if (local === undefined) return;
    this.byRel.delete(rel);
    this.byLocal.delete(local);
  }

  /** The id of a scratch path, assigning (and persisting) one the first time. */
  async idFor(rel: string): Promise<number> {
    const known = this.byRel.get(rel);
    if (known !== undefined) return known;
    if (this.next >= PUBLICATION_ID_SPAN) throw new DatastoreError('ENOSPC', 'publication ran out of file ids');
    const local = this.next++;
    this.remember(rel, local);
    await this.save();
    return local;
  }

  async save(): Promise<void> {
    const tmp = this.idsFile + '.tmp';
    await fs.promises.writeFile(tmp, JSON.stringify({ next: this.next, files: Object.fromEntries(this.byRel) }));
    await fs.promises.rename(tmp, this.idsFile);
  }

  virtualNames(): Array<[string, number]> {
    const out: Array<[string, number]> = [[`${this.p.vm.name}.json`, LOCAL_DEFINITION], [`${this.p.vm.name}.vmx`, LOCAL_VMX]];
    this.p.disks.forEach((d, i) => {
      const base = LOCAL_DISKS + i * IDS_PER_DISK;
      out.push([`${d.name}.raw`, base], [`${d.name}.vmdk`, base + 1], [`${d.name}-flat.vmdk`, base + 2]);
    });
    return out;
  }
}

function fail(code: DatastoreErrorCode, message?: string): never {
  throw new DatastoreError(code, message);
}

/** Overlay and disk errors as datastore codes: ENOSPC stays ENOSPC, a corrupt chunk is EIO. */
function mapError(err: unknown): never {
  if (err instanceof DatastoreError) throw err;
  if (err instanceof OverlayError) throw new DatastoreError(err.code, err.message);
  if (err instanceof DiskIoError) throw new DatastoreError('EIO', err.message);
  const code = (err as NodeJS.ErrnoException).code;
  const known: DatastoreErrorCode[] = ['ENOENT', 'EEXIST', 'ENOTDIR', 'EISDIR', 'ENOTEMPTY', 'EACCES', 'EPERM', 'EROFS', 'ENOSPC', 'EIO', 'ENAMETOOLONG', 'EINVAL', 'EXDEV', 'EFBIG'];
  if (code && (known as string[]).includes(code)) throw new DatastoreError(code as DatastoreErrorCode, (err as Error).message);
  if (code === 'EDQUOT') throw new DatastoreError('ENOSPC', (err as Error).message);
  throw new DatastoreError('EIO', (err as Error).message);
}

function checkName(name: string): void {
  if (name.length > NAME_MAX) fail('ENAMETOOLONG');
  if (name === '' || name === '.' || name === '..' || name.includes('/') || name.includes('\0')) fail('EINVAL', `bad name ${JSON.stringify(name)}`);
}

export class PublicationDatastore implements Datastore {
  private readonly pubs = new Map<number, Pub>();
  private readonly started = new Date();
  private readonly uid = process.getuid?.() ?? 0;
  private readonly gid = process.getgid?.() ?? 0;

  /** Starts serving a publication (its scratch ids are loaded from its state directory). */
  async attach(p: DatastorePublication): Promise<void> {
    if (this.pubs.has(p.number)) fail('EEXIST', `publication number ${p.number} is already attached`);
    for (const other of this.pubs.values()) if (other.p.name === p.name) fail('EEXIST', `publication ${p.name} is already attached`);
    const pub = new Pub(p);
    await pub.load();
    this.pubs.set(p.number, pub);
  }

  /** Stops serving a publication; its ids become stale. */
  detach(id: string): DatastorePublication | undefined {
    for (const [n, pub] of this.pubs) {
      if (pub.p.id === id) {
        this.pubs.delete(n);
        return pub.p;
      }
    }
    return undefined;
  }

  publications(): DatastorePublication[] {
    return [...this.pubs.values()].map((p) => p.p);
  }

  private node(id: FileId): Node {
    const number = Math.floor(id / PUBLICATION_ID_SPAN);
    const local = id % PUBLICATION_ID_SPAN;
    const pub = this.pubs.get(number);
    if (!pub) fail('ESTALE');
    if (local === LOCAL_DIR) return { pub, kind: 'dir', local };
    if (local === LOCAL_DEFINITION) return { pub, kind: 'definition', local };
    if (local === LOCAL_VMX) return { pub, kind: 'vmx', local };
    if (local >= LOCAL_DISKS && local < LOCAL_DISKS + pub.p.disks.length * IDS_PER_DISK) {
      const k = local - LOCAL_DISKS;
      const kind = (['raw', 'vmdk', 'flat'] as const)[k % IDS_PER_DISK];
      if (!kind) fail('ESTALE');
      return { pub, kind, disk: pub.p.disks[Math.floor(k / IDS_PER_DISK)], local };
    }
    const rel = pub.byLocal.get(local);
    if (rel === undefined) fail('ESTALE');
    return { pub, kind: 'scratch', rel, local };
  }

  private scratchPath(n: Node): string {
    return path.join(n.pub.scratchDir, n.rel ?? '');
  }

  /** The scratch directory a directory id stands for (the publication dir is the scratch root). */
  private dirNode(id: FileId): Node & { relDir: string } {
    if (id === ROOT_ID) fail('EACCES', 'the root holds only publications');
    const n = this.node(id);
    if (n.kind === 'dir') return { ...n, relDir: '' };
    if (n.kind !== 'scratch') fail('ENOTDIR');
    return { ...n, relDir: n.rel ?? '' };
  }

  private dirAttr(fileid: FileId, nlink: number, mtime: Date, ro: boolean): FileAttr {
    return { fileid, type: 'dir', mode: ro ? 0o555 : 0o755, nlink, uid: this.uid, gid: this.gid, size: 4096, used: 4096, atime: mtime, mtime, ctime: mtime };
  }

  async getattr(id: FileId): Promise<FileAttr> {
    if (id === ROOT_ID) return this.dirAttr(ROOT_ID, 2 + this.pubs.size, this.started, true);
    const n = this.node(id);
    const p = n.pub.p;
    const file = (size: number, used: number, writable: boolean): FileAttr => {
      const mtime = n.pub.mtimes.get(n.local) ?? p.created;
      return { fileid: id, type: 'file', mode: writable ? 0o644 : 0o444, nlink: 1, uid: this.uid, gid: this.gid, size, used, atime: mtime, mtime, ctime: mtime };
    };
    switch (n.kind) {
      case 'dir': return this.dirAttr(id, 2, p.created, p.readOnly);
      case 'definition': return file(n.pub.definition.length, n.pub.definition.length, false);
      case 'vmx': return file(n.pub.vmx.length, n.pub.vmx.length, false);
      case 'raw':
      case 'flat': return file(n.disk!.overlay.size, n.disk!.overlay.usedBytes, !p.readOnly);
      case 'vmdk': {
        const d = n.pub.descriptors[p.disks.indexOf(n.disk!)]!;
        return file(d.length, d.length, false);
      }
      case 'scratch': {
        const st = await fs.promises.lstat(this.scratchPath(n)).catch(mapError);
        return {
          fileid: id, type: st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'symlink' : 'file', mode: st.mode & 0o7777,
          nlink: st.nlink, uid: st.uid, gid: st.gid, size: st.size, used: st.blocks * 512, atime: st.atime, mtime: st.mtime, ctime: st.ctime,
        };
      }
    }
  }

  async setattr(id: FileId, attr: SetAttr, caller?: Caller): Promise<FileAttr> {
    if (id === ROOT_ID) fail('EACCES');
    const n = this.node(id);
    if (n.kind === 'scratch') {
      if (n.pub.p.readOnly) fail('EROFS');
      const file = this.scratchPath(n);
      try {
        if (attr.size !== undefined) await fs.promises.truncate(file, attr.size);
        if (attr.mode !== undefined) await fs.promises.chmod(file, attr.mode & 0o7777);
        if (attr.uid !== undefined || attr.gid !== undefined) {
          const st = await fs.promises.lstat(file);
          await fs.promises.lchown(file, attr.uid ?? st.uid, attr.gid ?? st.gid);
        }
        if (attr.atime || attr.mtime) {
          const st = await fs.promises.lstat(file);
          await fs.promises.utimes(file, attr.atime ?? st.atime, attr.mtime ?? st.mtime);
        }
      } catch (err) {
        mapError(err);
      }
      return this.getattr(id);
    }
    const current = await this.getattr(id);
    // Disk files have a fixed size; setting it to what it is (O_TRUNC-free opens, qemu's checks) is fine.
    if (attr.size !== undefined && attr.size !== current.size) fail(n.kind === 'raw' || n.kind === 'flat' ? 'EINVAL' : 'EACCES');
    if (attr.mtime) n.pub.mtimes.set(n.local, attr.mtime);
    void caller;
    return this.getattr(id);
  }

  async lookup(dir: FileId, name: string): Promise<FileId> {
    if (dir === ROOT_ID) {
      for (const pub of this.pubs.values()) if (pub.p.name === name) return pub.fileId(LOCAL_DIR);
      fail('ENOENT');
    }
    const d = this.dirNode(dir);
    if (name === '.') return dir;
    if (name === '..') return this.parent(dir);
    checkName(name);
    if (d.kind === 'dir') {
      const v = d.pub.virtualNames().find(([n]) => n === name);
      if (v) return d.pub.fileId(v[1]);
    }
    const rel = path.posix.join(d.relDir, name);
    const exists = await fs.promises.lstat(path.join(d.pub.scratchDir, rel)).then(() => true, () => false);
    if (!exists) {
      d.pub.forget(rel);
      fail('ENOENT');
    }
    return d.pub.fileId(await d.pub.idFor(rel));
  }

  async parent(dir: FileId): Promise<FileId> {
    if (dir === ROOT_ID) return ROOT_ID;
    const n = this.node(dir);
    if (n.kind === 'dir') return ROOT_ID;
    const up = path.posix.dirname(n.rel ?? '.');
    if (n.kind !== 'scratch' || up === '.') return n.pub.fileId(LOCAL_DIR);
    return n.pub.fileId(await n.pub.idFor(up));
  }

  async readdir(dir: FileId): Promise<DirEntry[]> {
    if (dir === ROOT_ID) {
      return [...this.pubs.values()].map((p) => ({ name: p.p.name, fileid: p.fileId(LOCAL_DIR) })).sort((a, b) => a.fileid - b.fileid);
    }
    const d = this.dirNode(dir);
    const out: DirEntry[] = d.kind === 'dir' ? d.pub.virtualNames().map(([name, local]) => ({ name, fileid: d.pub.fileId(local) })) : [];
    const names = await fs.promises.readdir(path.join(d.pub.scratchDir, d.relDir)).catch(mapError);
    for (const name of names) out.push({ name, fileid: d.pub.fileId(await d.pub.idFor(path.posix.join(d.relDir, name))) });
    return out.sort((a, b) => a.fileid - b.fileid);
  }

  async read(id: FileId, offset: number, length: number): Promise<{ data: Buffer; eof: boolean }> {
    if (id === ROOT_ID) fail('EISDIR');
    const n = this.node(id);
    const slice = (b: Buffer): { data: Buffer; eof: boolean } => {
      const data = b.subarray(Math.min(offset, b.length), Math.min(b.length, offset + length));
      return { data, eof: offset + data.length >= b.length };
    };
    switch (n.kind) {
      case 'dir': return fail('EISDIR');
      case 'definition': return slice(n.pub.definition);
      case 'vmx': return slice(n.pub.vmx);
      case 'vmdk': return slice(n.pub.descriptors[n.pub.p.disks.indexOf(n.disk!)]!);
      case 'raw':
      case 'flat': {
        const ov = n.disk!.overlay;
        const data = await ov.read(offset, length).catch(mapError);
        return { data, eof: offset + data.length >= ov.size };
      }
      case 'scratch': {
        const h = await fs.promises.open(this.scratchPath(n), 'r').catch(mapError);
        try {
          const buf = Buffer.alloc(length);
          const { bytesRead } = await h.read(buf, 0, length, offset).catch(mapError);
          const size = (await h.stat()).size;
          return { data: buf.subarray(0, bytesRead), eof: offset + bytesRead >= size };
        } finally {
          await h.close();
        }
      }
    }
  }

  async readInto(id: FileId, offset: number, target: Buffer): Promise<{ length: number; eof: boolean }> {
    const n = id === ROOT_ID ? undefined : this.node(id);
    if (n && (n.kind === 'raw' || n.kind === 'flat')) {
      const ov = n.disk!.overlay;
      const length = await ov.readInto(offset, target).catch(mapError);
      return { length, eof: offset + length >= ov.size };
    }
    const { data, eof } = await this.read(id, offset, target.length);
    return { length: data.copy(target), eof };
  }

  async write(id: FileId, offset: number, data: Buffer, sync: boolean): Promise<FileAttr> {
    if (id === ROOT_ID) fail('EISDIR');
    const n = this.node(id);
    if (n.kind === 'dir') fail('EISDIR');
    if (n.pub.p.readOnly) fail('EROFS', `publication ${n.pub.p.name} is read-only`);
    if (n.kind === 'definition' || n.kind === 'vmx' || n.kind === 'vmdk') fail('EACCES', 'generated files cannot be written');
    if (n.kind === 'raw' || n.kind === 'flat') {
      await n.disk!.overlay.write(offset, data, sync).catch(mapError);
      n.pub.mtimes.set(n.local, new Date());
      return this.getattr(id);
    }
    const h = await fs.promises.open(this.scratchPath(n), 'r+').catch(mapError);
    try {
      let done = 0;
      while (done < data.length) done += (await h.write(data, done, data.length - done, offset + done).catch(mapError)).bytesWritten;
      if (sync) await h.datasync();
    } finally {
      await h.close();
    }
    return this.getattr(id);
  }

  async commit(id: FileId): Promise<void> {
    if (id === ROOT_ID) return;
    const n = this.node(id);
    if (n.kind === 'raw' || n.kind === 'flat') {
      await n.disk!.overlay.commit().catch(mapError);
    } else if (n.kind === 'scratch') {
      const h = await fs.promises.open(this.scratchPath(n), 'r').catch(mapError);
      try {
        await h.datasync();
      } finally {
        await h.close();
      }
    }
  }

  private async writableDir(dir: FileId, name: string): Promise<Node & { relDir: string; rel: string }> {
    const d = this.dirNode(dir);
    if (d.pub.p.readOnly) fail('EROFS');
    checkName(name);
    const rel = path.posix.join(d.relDir, name);
    return { ...d, rel };
  }

  async create(dir: FileId, name: string, mode: number, caller?: Caller, exclusive?: boolean): Promise<FileId> {
    const d = await this.writableDir(dir, name);
    if (d.kind === 'dir') {
      const v = d.pub.virtualNames().find(([n]) => n === name);
      if (v) {
        if (exclusive) fail('EEXIST');
        return d.pub.fileId(v[1]);
      }
    }
    const file = path.join(d.pub.scratchDir, d.rel);
    try {
      const h = await fs.promises.open(file, exclusive ? 'wx' : 'a', mode & 0o7777);
      await h.close();
      if (caller && this.uid === 0) await fs.promises.chown(file, caller.uid, caller.gid);
    } catch (err) {
      mapError(err);
    }
    return d.pub.fileId(await d.pub.idFor(d.rel));
  }

  async mkdir(dir: FileId, name: string, mode: number, caller?: Caller): Promise<FileId> {
    const d = await this.writableDir(dir, name);
    if (d.kind === 'dir' && d.pub.virtualNames().some(([n]) => n === name)) fail('EEXIST');
    const full = path.join(d.pub.scratchDir, d.rel);
    try {
      await fs.promises.mkdir(full, { mode: mode & 0o7777 });
      if (caller && this.uid === 0) await fs.promises.chown(full, caller.uid, caller.gid);
    } catch (err) {
      mapError(err);
    }
    return d.pub.fileId(await d.pub.idFor(d.rel));
  }

  async symlink(dir: FileId, name: string, target: string): Promise<FileId> {
    const d = await this.writableDir(dir, name);
    if (d.kind === 'dir' && d.pub.virtualNames().some(([n]) => n === name)) fail('EEXIST');
    await fs.promises.symlink(target, path.join(d.pub.scratchDir, d.rel)).catch(mapError);
    return d.pub.fileId(await d.pub.idFor(d.rel));
  }

  async readlink(id: FileId): Promise<string> {
    const n = this.node(id);
    if (n.kind !== 'scratch') fail('EINVAL');
    return fs.promises.readlink(this.scratchPath(n)).catch(mapError);
  }

  async remove(dir: FileId, name: string): Promise<void> {
    const d = await this.writableDir(dir, name);
    if (d.kind === 'dir' && d.pub.virtualNames().some(([n]) => n === name)) fail('EACCES', `${name} belongs to the publication; unpublish it instead`);
    const full = path.join(d.pub.scratchDir, d.rel);
    const st = await fs.promises.lstat(full).catch(mapError);
    if (st.isDirectory()) fail('EISDIR');
    await fs.promises.unlink(full).catch(mapError);
    d.pub.forget(d.rel);
    await d.pub.save();
  }

  async rmdir(dir: FileId, name: string): Promise<void> {
    if (dir === ROOT_ID) fail('EACCES', 'unpublish a publication instead of removing its directory');
    const d = await this.writableDir(dir, name);
    if (d.kind === 'dir' && d.pub.virtualNames().some(([n]) => n === name)) fail('ENOTDIR');
    await fs.promises.rmdir(path.join(d.pub.scratchDir, d.rel)).catch(mapError);
    d.pub.forget(d.rel);
    await d.pub.save();
  }

  async rename(fromDir: FileId, fromName: string, toDir: FileId, toName: string): Promise<void> {
    if (fromDir === ROOT_ID || toDir === ROOT_ID) fail('EACCES');
    const from = await this.writableDir(fromDir, fromName);
    const to = await this.writableDir(toDir, toName);
    if (from.pub !== to.pub) fail('EXDEV', 'publications do not share files');
    const pub = from.pub;
    const virtual = (d: { kind: Kind }, name: string): boolean => d.kind === 'dir' && pub.virtualNames().some(([n]) => n === name);
    if (virtual(from, fromName) || virtual(to, toName)) fail('EACCES', 'publication files cannot be renamed or replaced');
    if (from.rel === to.rel) return;
    await fs.promises.rename(path.join(pub.scratchDir, from.rel), path.join(pub.scratchDir, to.rel)).catch(mapError);
    // Ids follow the renamed file (and everything below a renamed directory); a replaced target's id dies.
    pub.forget(to.rel);
    for (const [rel, local] of [...pub.byRel]) {
      if (rel === from.rel || rel.startsWith(from.rel + '/')) {
        pub.forget(rel);
        pub.remember(to.rel + rel.slice(from.rel.length), local);
      }
    }
    await pub.save();
  }

  async fsstat(id: FileId): Promise<FsStat> {
    const pubs = id === ROOT_ID ? [...this.pubs.values()] : [this.node(id).pub];
    let limit = 0;
    let used = 0;
    let fsTotal = 0;
    let fsAvail = Number.MAX_SAFE_INTEGER;
    let fsFree = Number.MAX_SAFE_INTEGER;
    let files = 0;
    let freeFiles = 0;
    for (const pub of pubs) {
      const budget = pub.p.disks[0]?.overlay.budget;
      for (const d of pub.p.disks) used += d.overlay.usedBytes;
      limit += budget?.limitBytes ?? 0;
      const st = await fs.promises.statfs(pub.p.overlayDir).catch(mapError);
      fsTotal = Math.max(fsTotal, st.blocks * st.bsize);
      fsAvail = Math.min(fsAvail, st.bavail * st.bsize);
      fsFree = Math.min(fsFree, st.bfree * st.bsize);
      files = Math.max(files, st.files);
      freeFiles = Math.max(freeFiles, st.ffree);
    }
    if (pubs.length === 0) return { totalBytes: 0, freeBytes: 0, availBytes: 0, totalFiles: 0, freeFiles: 0 };
    const capped = limit > 0 && limit < Number.MAX_SAFE_INTEGER;
    const avail = Math.min(fsAvail, capped ? Math.max(0, limit - used) : fsAvail);
    const free = Math.min(fsFree, capped ? Math.max(0, limit - used) : fsFree);
    return { totalBytes: capped ? Math.min(limit, used + fsAvail) : fsTotal, freeBytes: free, availBytes: avail, totalFiles: files, freeFiles };
  }

  readOnly(id: FileId): boolean {
    if (id === ROOT_ID) return true;
    try {
      const n = this.node(id);
      return n.pub.p.readOnly || n.kind === 'definition' || n.kind === 'vmx' || n.kind === 'vmdk';
    } catch {
      return true;
    }
  }
}

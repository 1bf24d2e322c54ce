/**
 * PublicationDatastore: the Datastore seam (types.ts) over live publications.
 *
 * Layout: the root holds one directory per publication, `<vm>-<point>`; each
 * holds `<disk>.raw` (the overlay over the published disk), `<disk>.vmdk` (a
 * monolithicFlat descriptor) + `<disk>-flat.vmdk` (the same bytes as .raw),
 * `<vm>.json` (the VM definition), `<vm>.vmx` (a VMware configuration), and
 * scratch files, directories and symlinks a hypervisor creates (locks, swap,
 * logs). Scratch lives in the publication's own storage (scratch-store.ts):
 * its namespace is metadata, its bytes are files named by id, and nothing a
 * client names or links is ever resolved on the host.
 *
 * File ids: `number * PUBLICATION_ID_SPAN + local`. The publication number is
 * persisted with the publication; local ids are fixed for the virtual files
 * and persisted in the scratch metadata for scratch entries, so ids (and so
 * NFS file handles) survive a restart.
 */
import fs from 'node:fs';
import type { VmDefinition } from '../vm/definition.js';
import { OverlayBudget, OverlayError, type Overlay } from '../overlay/overlay.js';
import { DiskIoError } from '../disk/published-disk.js';
import { vmdkDescriptor, vmxConfig } from './vmdk.js';
import { MAX_SCRATCH_ENTRIES, SCRATCH_ROOT, ScratchStore, checkScratchName } from './scratch-store.js';
import {
  DatastoreError,
  ROOT_ID,
  type Caller,
  type Datastore,
  type DatastoreErrorCode,
  type DirEntry,
  type Extent,
  type FileAttr,
  type FileId,
  type FsStat,
  type SetAttr,
} from './types.js';

/** Local ids per publication; publication numbers go above (2^53 / 2^24 leaves 2^29 publications). */
export const PUBLICATION_ID_SPAN = 2 ** 24;
const LOCAL_DIR = SCRATCH_ROOT;
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
  /** The disks share one overlay budget (the first disk's); scratch files draw on it too. */
  disks: PublicationDisk[];
  /** The publication's state directory: scratch metadata and content live here. */
  stateDir: string;
  /** Where the overlays live, for free-space reporting. */
  overlayDir: string;
  readOnly: boolean;
}

export interface AttachOptions {
  /** Told when an earlier version's scratch files are discarded, or damaged metadata dropped. */
  onWarning?: (message: string) => void;
}

type Kind = 'dir' | 'definition' | 'vmx' | 'raw' | 'vmdk' | 'flat' | 'scratch';

interface Node {
  pub: Pub;
  kind: Kind;
  disk?: PublicationDisk;
  local: number;
}

class Pub {
  readonly mtimes = new Map<number, Date>();
  readonly definition: Buffer;
  readonly vmx: Buffer;
  readonly descriptors: Buffer[];
  readonly budget: OverlayBudget;

  constructor(
    readonly p: DatastorePublication,
    readonly scratch: ScratchStore,
    budget: OverlayBudget,
  ) {
    this.budget = budget;
    this.definition = Buffer.from(JSON.stringify(p.vm, null, 2) + '\n');
    this.vmx = Buffer.from(
      vmxConfig(
        p.vm,
        p.disks.map((d) => d.name),
      ),
    );
    this.descriptors = p.disks.map((d) => Buffer.from(vmdkDescriptor(d.name, d.overlay.size)));
  }

  fileId(local: number): FileId {
    return this.p.number * PUBLICATION_ID_SPAN + local;
  }

  virtualNames(): Array<[string, number]> {
    const out: Array<[string, number]> = [
      [`${this.p.vm.name}.json`, LOCAL_DEFINITION],
      [`${this.p.vm.name}.vmx`, LOCAL_VMX],
    ];
    this.p.disks.forEach((d, i) => {
      const base = LOCAL_DISKS + i * IDS_PER_DISK;
      out.push([`${d.name}.raw`, base], [`${d.name}.vmdk`, base + 1], [`${d.name}-flat.vmdk`, base + 2]);
    });
    return out;
  }

  isVirtual(local: number, name: string): boolean {
    return local === LOCAL_DIR && this.virtualNames().some(([n]) => n === name);
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
  if (code === 'ENOSPC' || code === 'EDQUOT') throw new DatastoreError('ENOSPC', (err as Error).message);
  throw new DatastoreError('EIO', (err as Error).message);
}

export class PublicationDatastore implements Datastore {
  private readonly pubs = new Map<number, Pub>();
  private readonly started = new Date();
  private readonly uid = process.getuid?.() ?? 0;
  private readonly gid = process.getgid?.() ?? 0;

  /** Starts serving a publication (its scratch metadata is loaded from its state directory). */
  async attach(p: DatastorePublication, opts: AttachOptions = {}): Promise<void> {
    if (this.pubs.has(p.number)) fail('EEXIST', `publication number ${p.number} is already attached`);
    for (const other of this.pubs.values()) if (other.p.name === p.name) fail('EEXIST', `publication ${p.name} is already attached`);
    const budget = p.disks[0]?.overlay.budget ?? new OverlayBudget();
    const scratch = await ScratchStore.open({
      stateDir: p.stateDir,
      firstId: LOCAL_SCRATCH_FIRST,
      endId: PUBLICATION_ID_SPAN,
      budget,
      serverOwner: { uid: this.uid, gid: this.gid },
      label: p.name,
      warn: opts.onWarning ?? (() => undefined),
    });
    // Checked again: another attach of the same publication may have finished while this one loaded.
    if (this.pubs.has(p.number)) {
      scratch.release();
      fail('EEXIST', `publication number ${p.number} is already attached`);
    }
    this.pubs.set(p.number, new Pub(p, scratch, budget));
  }

  /** Stops serving a publication; its ids become stale and its scratch stops counting on the budget. */
  detach(id: string): DatastorePublication | undefined {
    for (const [n, pub] of this.pubs) {
      if (pub.p.id === id) {
        this.pubs.delete(n);
        pub.scratch.release();
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
    if (!pub.scratch.has(local)) fail('ESTALE');
    return { pub, kind: 'scratch', local };
  }

  /** A directory a name can be looked up in: the publication directory or a scratch directory. */
  private dirNode(id: FileId): Node {
    if (id === ROOT_ID) fail('EACCES', 'the root holds only publications');
    const n = this.node(id);
    if (n.kind !== 'dir' && !(n.kind === 'scratch' && n.pub.scratch.isDir(n.local))) fail('ENOTDIR');
    return n;
  }

  private dirAttr(fileid: FileId, nlink: number, mtime: Date, ro: boolean): FileAttr {
    return {
      fileid,
      type: 'dir',
      mode: ro ? 0o555 : 0o755,
      nlink,
      uid: this.uid,
      gid: this.gid,
      size: 4096,
      used: 4096,
      atime: mtime,
      mtime,
      ctime: mtime,
    };
  }

  async getattr(id: FileId): Promise<FileAttr> {
    if (id === ROOT_ID) return this.dirAttr(ROOT_ID, 2 + this.pubs.size, this.started, true);
    const n = this.node(id);
    const p = n.pub.p;
    const file = (size: number, used: number, writable: boolean): FileAttr => {
      const mtime = n.pub.mtimes.get(n.local) ?? p.created;
      return {
        fileid: id,
        type: 'file',
        mode: writable ? 0o644 : 0o444,
        nlink: 1,
        uid: this.uid,
        gid: this.gid,
        size,
        used,
        atime: mtime,
        mtime,
        ctime: mtime,
      };
    };
    switch (n.kind) {
      case 'dir':
        return this.dirAttr(id, 2, p.created, p.readOnly);
      case 'definition':
        return file(n.pub.definition.length, n.pub.definition.length, false);
      case 'vmx':
        return file(n.pub.vmx.length, n.pub.vmx.length, false);
      case 'raw':
      case 'flat':
        return file(n.disk!.overlay.size, n.disk!.overlay.usedBytes, !p.readOnly);
      case 'vmdk': {
        const d = n.pub.descriptors[p.disks.indexOf(n.disk!)]!;
        return file(d.length, d.length, false);
      }
      case 'scratch':
        return { fileid: id, ...n.pub.scratch.attr(n.local) };
    }
  }

  /** Scratch attributes are datastore metadata (never applied to a host file); the caller changes nothing else. */
  async setattr(id: FileId, attr: SetAttr, caller?: Caller): Promise<FileAttr> {
    if (id === ROOT_ID) fail('EACCES');
    const n = this.node(id);
    void caller;
    if (n.kind === 'scratch') {
      if (n.pub.p.readOnly) fail('EROFS');
      await n.pub.scratch.setattr(n.local, attr);
      return this.getattr(id);
    }
    const current = await this.getattr(id);
    // Disk files have a fixed size; setting it to what it is (O_TRUNC-free opens, qemu's checks) is fine.
    if (attr.size !== undefined && attr.size !== current.size) fail(n.kind === 'raw' || n.kind === 'flat' ? 'EINVAL' : 'EACCES');
    if (attr.mtime) n.pub.mtimes.set(n.local, attr.mtime);
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
    checkScratchName(name);
    if (d.kind === 'dir') {
      const v = d.pub.virtualNames().find(([n]) => n === name);
      if (v) return d.pub.fileId(v[1]);
    }
    const local = d.pub.scratch.lookup(d.local, name);
    if (local === undefined) fail('ENOENT');
    return d.pub.fileId(local);
  }

  async parent(dir: FileId): Promise<FileId> {
    if (dir === ROOT_ID) return ROOT_ID;
    const n = this.node(dir);
    if (n.kind === 'dir') return ROOT_ID;
    return n.pub.fileId(n.kind === 'scratch' ? n.pub.scratch.parentOf(n.local) : LOCAL_DIR);
  }

  async readdir(dir: FileId): Promise<DirEntry[]> {
    if (dir === ROOT_ID) {
      return [...this.pubs.values()].map((p) => ({ name: p.p.name, fileid: p.fileId(LOCAL_DIR) })).sort((a, b) => a.fileid - b.fileid);
    }
    const d = this.dirNode(dir);
    const out: DirEntry[] = d.kind === 'dir' ? d.pub.virtualNames().map(([name, local]) => ({ name, fileid: d.pub.fileId(local) })) : [];
    for (const e of d.pub.scratch.list(d.local)) out.push({ name: e.name, fileid: d.pub.fileId(e.id) });
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
      case 'dir':
        return fail('EISDIR');
      case 'definition':
        return slice(n.pub.definition);
      case 'vmx':
        return slice(n.pub.vmx);
      case 'vmdk':
        return slice(n.pub.descriptors[n.pub.p.disks.indexOf(n.disk!)]!);
      case 'raw':
      case 'flat': {
        const ov = n.disk!.overlay;
        const data = await ov.read(offset, length).catch(mapError);
        return { data, eof: offset + data.length >= ov.size };
      }
      case 'scratch':
        return n.pub.scratch.read(n.local, offset, length);
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

  /** A disk's map from its overlay and restore point (no chunk is read); any other file is one data extent. */
  async extents(id: FileId, offset: number, length: number): Promise<Extent[]> {
    if (id === ROOT_ID) fail('EISDIR');
    const n = this.node(id);
    if (n.kind === 'dir') fail('EISDIR');
    if (n.kind === 'raw' || n.kind === 'flat') {
      return n.disk!.overlay.extents(offset, length).map((e) => ({ length: e.length, hole: e.hole, zero: e.hole }));
    }
    const { size } = await this.getattr(id);
    const len = Math.max(0, Math.min(size, offset + length) - offset);
    return len > 0 ? [{ length: len, hole: false, zero: false }] : [];
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
    await n.pub.scratch.write(n.local, offset, data, sync);
    return this.getattr(id);
  }

  async commit(id: FileId): Promise<void> {
    if (id === ROOT_ID) return;
    const n = this.node(id);
    if (n.kind === 'raw' || n.kind === 'flat') await n.disk!.overlay.commit().catch(mapError);
    else if (n.kind === 'scratch') await n.pub.scratch.commit(n.local);
  }

  /** A directory of a writable publication to change `name` in; the publication's own files are not scratch. */
  private writableDir(dir: FileId, name: string): Node {
    const d = this.dirNode(dir);
    if (d.pub.p.readOnly) fail('EROFS');
    checkScratchName(name);
    return d;
  }

  async create(dir: FileId, name: string, mode: number, caller?: Caller, exclusive?: boolean): Promise<FileId> {
    const d = this.writableDir(dir, name);
    if (d.pub.isVirtual(d.local, name)) {
      if (exclusive) fail('EEXIST');
      return d.pub.fileId(d.pub.virtualNames().find(([n]) => n === name)![1]);
    }
    return d.pub.fileId(await d.pub.scratch.create(d.local, name, mode, caller, exclusive ?? false));
  }

  async mkdir(dir: FileId, name: string, mode: number, caller?: Caller): Promise<FileId> {
    const d = this.writableDir(dir, name);
    if (d.pub.isVirtual(d.local, name)) fail('EEXIST');
    return d.pub.fileId(await d.pub.scratch.mkdir(d.local, name, mode, caller));
  }

  async symlink(dir: FileId, name: string, target: string, caller?: Caller): Promise<FileId> {
    const d = this.writableDir(dir, name);
    if (d.pub.isVirtual(d.local, name)) fail('EEXIST');
    return d.pub.fileId(await d.pub.scratch.symlink(d.local, name, target, caller));
  }

  async readlink(id: FileId): Promise<string> {
    if (id === ROOT_ID) fail('EINVAL');
    const n = this.node(id);
    if (n.kind !== 'scratch') fail('EINVAL');
    return n.pub.scratch.readlink(n.local);
  }

  async remove(dir: FileId, name: string): Promise<void> {
    const d = this.writableDir(dir, name);
    if (d.pub.isVirtual(d.local, name)) fail('EACCES', `${name} belongs to the publication; unpublish it instead`);
    await d.pub.scratch.remove(d.local, name);
  }

  async rmdir(dir: FileId, name: string): Promise<void> {
    if (dir === ROOT_ID) fail('EACCES', 'unpublish a publication instead of removing its directory');
    const d = this.writableDir(dir, name);
    if (d.pub.isVirtual(d.local, name)) fail('ENOTDIR');
    await d.pub.scratch.rmdir(d.local, name);
  }

  async rename(fromDir: FileId, fromName: string, toDir: FileId, toName: string): Promise<void> {
    if (fromDir === ROOT_ID || toDir === ROOT_ID) fail('EACCES');
    const from = this.writableDir(fromDir, fromName);
    const to = this.writableDir(toDir, toName);
    if (from.pub !== to.pub) fail('EXDEV', 'publications do not share files');
    if (from.pub.isVirtual(from.local, fromName) || to.pub.isVirtual(to.local, toName))
      fail('EACCES', 'publication files cannot be renamed or replaced');
    await from.pub.scratch.rename(from.local, fromName, to.local, toName);
  }

  /** The overlay budget, which scratch files draw on too: limit − used, bounded by the overlay filesystem's free space. */
  async fsstat(id: FileId): Promise<FsStat> {
    const pubs = id === ROOT_ID ? [...this.pubs.values()] : [this.node(id).pub];
    let limit = 0;
    let used = 0;
    let fsTotal = 0;
    let fsAvail = Number.MAX_SAFE_INTEGER;
    let fsFree = Number.MAX_SAFE_INTEGER;
    let files = 0;
    let freeFiles = 0;
    const budgets = new Set<OverlayBudget>();
    for (const pub of pubs) {
      if (!budgets.has(pub.budget)) {
        budgets.add(pub.budget);
        used += pub.budget.usedBytes;
        limit += pub.budget.limitBytes;
      }
      const st = await fs.promises.statfs(pub.p.overlayDir).catch(mapError);
      fsTotal = Math.max(fsTotal, st.blocks * st.bsize);
      fsAvail = Math.min(fsAvail, st.bavail * st.bsize);
      fsFree = Math.min(fsFree, st.bfree * st.bsize);
      files += MAX_SCRATCH_ENTRIES;
      freeFiles += Math.min(st.ffree, MAX_SCRATCH_ENTRIES - pub.scratch.count);
    }
    if (pubs.length === 0) return { totalBytes: 0, freeBytes: 0, availBytes: 0, totalFiles: 0, freeFiles: 0 };
    const capped = limit > 0 && limit < Number.MAX_SAFE_INTEGER;
    const avail = Math.min(fsAvail, capped ? Math.max(0, limit - used) : fsAvail);
    const free = Math.min(fsFree, capped ? Math.max(0, limit - used) : fsFree);
    return {
      totalBytes: capped ? Math.min(limit, used + fsAvail) : fsTotal,
      freeBytes: free,
      availBytes: avail,
      totalFiles: files,
      freeFiles,
    };
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

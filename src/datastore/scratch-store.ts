/**
 * ScratchStore: the files a hypervisor creates beside a publication's disks
 * (`.vmx~`, `.lck`, logs, swap), kept in the publication's own storage.
 *
 * The namespace (directories, files, symlinks; names, modes, owners, times,
 * symlink text) is datastore metadata (scratch-journal.ts), never a host
 * directory tree. A regular file's bytes live in a host file named by its
 * local id, `<stateDir>/scratch-data/<id>`, created 0600 by the server's user
 * and opened with O_NOFOLLOW. So no client-chosen path, link, mode or owner
 * ever reaches the host: a symlink is text READLINK returns; chmod, chown and
 * utimes change metadata; setuid, setgid and (on files) sticky bits are dropped.
 *
 * Bounds: scratch files draw on the publication's overlay budget by their
 * size (rounded up to 4 KiB blocks, sparse or not), at most
 * MAX_SCRATCH_ENTRIES entries, symlink text up to SYMLINK_MAX bytes, names
 * and texts together up to MAX_SCRATCH_TEXT_BYTES.
 *
 * Concurrency: namespace changes (and attribute changes) run one at a time
 * per publication and are durable before they return; content writes and
 * truncates of one file run one at a time under that file's lock.
 */
import fs from 'node:fs';
import path from 'node:path';
import { BLOCK_SIZE, type OverlayBudget } from '../overlay/overlay.js';
import { RestorelabError } from '../errors.js';
import { DatastoreError, NAME_MAX, type Caller, type DatastoreErrorCode, type FileAttr, type SetAttr } from './types.js';
import {
  JOURNAL_FILE,
  SNAPSHOT_FILE,
  ScratchJournal,
  type JournalRecord,
  type ScratchRecord,
  type ScratchType,
} from './scratch-journal.js';

export const MAX_SCRATCH_ENTRIES = 10_000;
/** PATH_MAX: the longest symlink text kept. */
export const SYMLINK_MAX = 4096;
/** Names and symlink texts of one publication held in memory, together. */
export const MAX_SCRATCH_TEXT_BYTES = 4 * 1024 * 1024;
export const SCRATCH_DATA_DIR = 'scratch-data';
/** Local id of the publication directory, the parent of top-level scratch entries. */
export const SCRATCH_ROOT = 1;

/** The attributes of one entry, as the datastore reports them (the datastore adds the file id). */
export type ScratchAttr = Omit<FileAttr, 'fileid'>;

interface Entry extends ScratchRecord {
  /** Files: the content's length (the host file's size). */
  size: number;
  live: boolean;
  /** Serializes writes and truncates of this file's content. */
  lock: Promise<unknown>;
  /** mtime changed by a write and not yet journaled (done at the next commit or namespace change). */
  timesDirty: boolean;
}

export interface ScratchStoreOptions {
  stateDir: string;
  /** Lowest local id for scratch entries; ids are never reused. */
  firstId: number;
  /** One past the highest local id (the publication's id span). */
  endId: number;
  budget: OverlayBudget;
  /** Owner recorded when a change comes without a caller (FUSE): the server's own ids. */
  serverOwner: Caller;
  /** For messages: the publication's name. */
  label: string;
  warn: (message: string) => void;
}

function fail(code: DatastoreErrorCode, message?: string): never {
  throw new DatastoreError(code, message);
}

/** Bytes a file of `size` draws from the budget: whole 4 KiB blocks, like the overlay. */
export function chargeOf(size: number): number {
  return Math.ceil(size / BLOCK_SIZE) * BLOCK_SIZE;
}

/** Permission bits a client may set: no setuid/setgid anywhere; sticky only on directories. */
export function clientMode(type: ScratchType, mode: number): number {
  if (type === 'symlink') return 0o777;
  return mode & (type === 'dir' ? 0o1777 : 0o777);
}

export function checkScratchName(name: string): void {
  if (Buffer.byteLength(name) > NAME_MAX) fail('ENAMETOOLONG');
  if (name === '' || name === '.' || name === '..' || name.includes('/') || name.includes('\0'))
    fail('EINVAL', `bad name ${JSON.stringify(name)}`);
}

/** Host errors of the store's own files, as datastore codes (never naming a client path). */
function hostError(err: unknown): never {
  if (err instanceof DatastoreError) throw err;
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'ENOSPC' || code === 'EDQUOT') fail('ENOSPC', (err as Error).message);
  if (code === 'EFBIG' || code === 'EINVAL') fail(code, (err as Error).message);
  fail('EIO', (err as Error).message);
}

/** Earlier versions kept scratch as a host tree `<stateDir>/scratch/` plus `ids.json`: removed, never followed. */
async function discardLegacy(stateDir: string, label: string, warn: (m: string) => void): Promise<void> {
  const legacy = [path.join(stateDir, 'scratch'), path.join(stateDir, 'ids.json')];
  const present = [];
  for (const p of legacy)
    if (
      await fs.promises.lstat(p).then(
        () => true,
        () => false,
      )
    )
      present.push(p);
  if (present.length === 0) return;
  // fs.rm removes symlinks themselves and does not follow them.
  for (const p of present) await fs.promises.rm(p, { recursive: true, force: true });
  warn(`publication ${label}: discarded scratch files of an earlier version (${present.join(', ')}); scratch now starts empty`);
}

/** Removes every scratch file of a publication's state directory (a fresh publish without --resume). */
export async function discardScratch(stateDir: string): Promise<void> {
  for (const p of ['scratch', 'ids.json', SCRATCH_DATA_DIR, SNAPSHOT_FILE, JOURNAL_FILE]) {
    await fs.promises.rm(path.join(stateDir, p), { recursive: true, force: true });
  }
}

export class ScratchStore {
  private readonly entries = new Map<number, Entry>();
  private readonly children = new Map<number, Map<string, number>>([[SCRATCH_ROOT, new Map()]]);
  private readonly journal: ScratchJournal;
  private readonly dataDir: string;
  private next: number;
  private textBytes = 0;
  private charged = 0;
  private mutex: Promise<unknown> = Promise.resolve();
  /** A journal append failed: memory is ahead of disk until a full snapshot is written. */
  private needsSnapshot = false;
  /** True while attached: charges go to the budget (not while loading, nor after release). */
  private counting = false;

  private constructor(private readonly o: ScratchStoreOptions) {
    this.journal = new ScratchJournal(o.stateDir);
    this.dataDir = path.join(o.stateDir, SCRATCH_DATA_DIR);
    this.next = o.firstId;
  }

  /** Loads (or starts) a publication's scratch: metadata, then content files, then a compacted snapshot. */
  static async open(o: ScratchStoreOptions): Promise<ScratchStore> {
    const store = new ScratchStore(o);
    await fs.promises.mkdir(o.stateDir, { recursive: true });
    await discardLegacy(o.stateDir, o.label, o.warn);
    const loaded = await store.journal.load(o.firstId);
    if (loaded.problem) {
      throw new RestorelabError('SCRATCH_CORRUPT', `publication ${o.label}: ${loaded.problem} (in ${o.stateDir})`, {
        hint: `move ${path.join(o.stateDir, SNAPSHOT_FILE)} and ${JOURNAL_FILE} aside to start with no scratch files (the disks are not affected)`,
      });
    }
    store.next = Math.min(Math.max(loaded.next, o.firstId), o.endId);
    store.adopt(loaded.records);
    await store.openData();
    await store.journal.compact(store.next, store.records());
    o.budget.add(store.charged, false);
    store.counting = true;
    return store;
  }

  /** Takes the loaded records that form a tree under the root; anything else (a damaged file) is dropped with a warning. */
  private adopt(records: Map<number, ScratchRecord>): void {
    const sane = (r: ScratchRecord): boolean =>
      r.id >= this.o.firstId &&
      r.id < this.o.endId &&
      r.parent !== r.id &&
      Buffer.byteLength(r.name) <= NAME_MAX &&
      !['', '.', '..'].includes(r.name) &&
      !/[/\0]/.test(r.name) &&
      (r.target === undefined || Buffer.byteLength(r.target) <= SYMLINK_MAX);
    const byParent = new Map<number, ScratchRecord[]>();
    for (const r of records.values()) {
      if (!sane(r)) continue;
      const list = byParent.get(r.parent);
      if (list) list.push(r);
      else byParent.set(r.parent, [r]);
    }
    // Breadth-first from the root: a record is taken only below a directory already taken.
    const queue = [SCRATCH_ROOT];
    let taken = 0;
    for (let q = 0; q < queue.length; q++) {
      for (const r of byParent.get(queue[q]!) ?? []) {
        if (this.children.get(r.parent)!.has(r.name) || this.entries.size >= MAX_SCRATCH_ENTRIES) continue;
        this.insert({ ...r, mode: clientMode(r.type, r.mode), size: 0, live: true, lock: Promise.resolve(), timesDirty: false });
        taken++;
        if (r.type === 'dir') queue.push(r.id);
      }
    }
    const dropped = records.size - taken;
    if (dropped > 0) this.o.warn(`publication ${this.o.label}: ${dropped} damaged or unreachable scratch entries were dropped`);
  }

  /** Matches content files to file entries: sizes from the host files, orphans removed, missing ones created empty. */
  private async openData(): Promise<void> {
    await fs.promises.mkdir(this.dataDir, { recursive: true, mode: 0o700 });
    const st = await fs.promises.lstat(this.dataDir);
    if (!st.isDirectory()) {
      throw new RestorelabError('SCRATCH_CORRUPT', `publication ${this.o.label}: ${this.dataDir} is not a directory`, {
        hint: 'remove it; scratch files start empty',
      });
    }
    const seen = new Set<number>();
    for (const name of await fs.promises.readdir(this.dataDir)) {
      const id = /^[0-9]{1,10}$/.test(name) ? Number(name) : NaN;
      const e = this.entries.get(id);
      const file = path.join(this.dataDir, name);
      const fst = await fs.promises.lstat(file);
      if (e?.type === 'file' && fst.isFile()) {
        e.size = fst.size;
        this.charge(chargeOf(fst.size));
        seen.add(id);
      } else {
        // A crash between unlinking an entry and removing its content, or something that is not ours.
        await fs.promises.rm(file, { recursive: true, force: true });
      }
    }
    for (const e of this.entries.values()) if (e.type === 'file' && !seen.has(e.id)) await this.createContent(e.id);
  }

  private contentPath(id: number): string {
    return path.join(this.dataDir, String(id));
  }

  private async createContent(id: number): Promise<void> {
    const { O_RDWR, O_CREAT, O_EXCL, O_NOFOLLOW } = fs.constants;
    const h = await fs.promises.open(this.contentPath(id), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600);
    await h.close();
  }

  private openContent(id: number, write: boolean): Promise<fs.promises.FileHandle> {
    const { O_RDONLY, O_RDWR, O_NOFOLLOW } = fs.constants;
    return fs.promises.open(this.contentPath(id), (write ? O_RDWR : O_RDONLY) | O_NOFOLLOW);
  }

  private records(): ScratchRecord[] {
    return [...this.entries.values()].map((e) => this.record(e));
  }

  private record(e: Entry): ScratchRecord {
    const r: ScratchRecord = {
      id: e.id,
      parent: e.parent,
      name: e.name,
      type: e.type,
      mode: e.mode,
      uid: e.uid,
      gid: e.gid,
      atime: e.atime,
      mtime: e.mtime,
      ctime: e.ctime,
    };
    if (e.target !== undefined) r.target = e.target;
    return r;
  }

  private insert(e: Entry): void {
    this.entries.set(e.id, e);
    this.children.get(e.parent)!.set(e.name, e.id);
    if (e.type === 'dir') this.children.set(e.id, new Map());
    this.textBytes += Buffer.byteLength(e.name) + Buffer.byteLength(e.target ?? '');
  }

  private unlink(e: Entry): void {
    e.live = false;
    this.entries.delete(e.id);
    this.children.get(e.parent)?.delete(e.name);
    this.children.delete(e.id);
    this.textBytes -= Buffer.byteLength(e.name) + Buffer.byteLength(e.target ?? '');
    this.charge(-chargeOf(e.size));
  }

  private charge(bytes: number): void {
    this.charged += bytes;
    if (this.counting) this.o.budget.add(bytes);
  }

  /**
   * Draws `bytes` more from the overlay budget (and, without a limit, checks
   * the host filesystem), or fails with ENOSPC. Check and charge happen with
   * no await between, so concurrent writers cannot both take the last bytes.
   */
  private async reserve(bytes: number): Promise<void> {
    if (bytes <= 0) return;
    const b = this.o.budget;
    if (!b.limited) {
      const st = await fs.promises.statfs(this.dataDir).catch(hostError);
      if (bytes > st.bavail * st.bsize) fail('ENOSPC', `no space left for scratch files in ${this.o.stateDir}`);
    }
    if (bytes > b.freeBytes)
      fail('ENOSPC', `publication ${this.o.label} is full (${b.usedBytes} of ${b.limitBytes} bytes used by overlay and scratch)`);
    this.charge(bytes);
  }

  /**
   * Changes a file's content under its lock: reserves the growth to `size`
   * (taken under the lock, from the size then),
   * runs `fn` on the content file, then charges what the file really holds
   * (also when `fn` failed half-way).
   */
  private resize(e: Entry, sizeAfter: (current: number) => number, fn: (h: fs.promises.FileHandle) => Promise<void>): Promise<void> {
    return this.withContent(e, async () => {
      if (!e.live) fail('ESTALE');
      const size = sizeAfter(e.size);
      const grow = Math.max(0, chargeOf(size) - chargeOf(e.size));
      await this.reserve(grow);
      let h: fs.promises.FileHandle | undefined;
      try {
        h = await this.openContent(e.id, true);
        await fn(h);
      } catch (err) {
        hostError(err);
      } finally {
        const actual = h ? ((await h.stat().catch(() => undefined))?.size ?? size) : e.size;
        await h?.close();
        this.charge(chargeOf(actual) - chargeOf(e.size) - grow);
        e.size = actual;
      }
    });
  }

  /** Runs one namespace change at a time; a change is durable (journaled) before it resolves. */
  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.mutex.then(fn, fn);
    this.mutex = run.catch(() => undefined);
    return run;
  }

  private withContent<T>(e: Entry, fn: () => Promise<T>): Promise<T> {
    const run = e.lock.then(fn, fn);
    e.lock = run.catch(() => undefined);
    return run;
  }

  /** Journals the records (plus any times left dirty by writes); compacts when the journal has grown. */
  private async persist(recs: JournalRecord[]): Promise<void> {
    try {
      if (this.needsSnapshot || this.journal.wantsCompaction) {
        await this.journal.compact(this.next, this.records());
        this.needsSnapshot = false;
        return;
      }
      await this.journal.append(recs);
    } catch (err) {
      this.needsSnapshot = true;
      hostError(err);
    }
  }

  private put(...es: Array<Entry | undefined>): JournalRecord[] {
    const out: JournalRecord[] = [];
    for (const e of es) {
      if (!e?.live) continue;
      e.timesDirty = false;
      out.push({ put: this.record(e) });
    }
    return out;
  }

  /** Bytes drawn from the overlay budget. */
  get usedBytes(): number {
    return this.charged;
  }

  get count(): number {
    return this.entries.size;
  }

  has(id: number): boolean {
    return this.entries.has(id);
  }

  isDir(id: number): boolean {
    return id === SCRATCH_ROOT || this.entries.get(id)?.type === 'dir';
  }

  lookup(parent: number, name: string): number | undefined {
    return this.children.get(parent)?.get(name);
  }

  /** Entries directly below `parent` (the root or a scratch directory). */
  list(parent: number): Array<{ name: string; id: number }> {
    const kids = this.children.get(parent);
    if (!kids) fail(this.entries.has(parent) ? 'ENOTDIR' : 'ESTALE');
    return [...kids].map(([name, id]) => ({ name, id }));
  }

  parentOf(id: number): number {
    return this.live(id).parent;
  }

  private live(id: number): Entry {
    const e = this.entries.get(id);
    if (!e) fail('ESTALE');
    return e;
  }

  attr(id: number): ScratchAttr {
    const e = this.live(id);
    let nlink = 1;
    let size = e.size;
    if (e.type === 'dir') {
      nlink = 2;
      for (const kid of this.children.get(id)!.values()) if (this.entries.get(kid)?.type === 'dir') nlink++;
      size = BLOCK_SIZE;
    } else if (e.type === 'symlink') {
      size = Buffer.byteLength(e.target ?? '');
    }
    return {
      type: e.type,
      mode: e.mode,
      nlink,
      uid: e.uid,
      gid: e.gid,
      size,
      used: e.type === 'file' ? chargeOf(e.size) : e.type === 'dir' ? BLOCK_SIZE : 0,
      atime: new Date(e.atime),
      mtime: new Date(e.mtime),
      ctime: new Date(e.ctime),
    };
  }

  readlink(id: number): string {
    const e = this.live(id);
    if (e.type !== 'symlink') fail('EINVAL', 'not a symlink');
    return e.target ?? '';
  }

  /** A new entry below `parent`: checks the name, the entry cap and the text budget. */
  private newEntry(parent: number, name: string, type: ScratchType, mode: number, owner: Caller | undefined, target?: string): Entry {
    checkScratchName(name);
    if (!this.children.has(parent)) fail(this.entries.has(parent) ? 'ENOTDIR' : 'ESTALE');
    if (target !== undefined && Buffer.byteLength(target) > SYMLINK_MAX)
      fail('ENAMETOOLONG', `symlink text is longer than ${SYMLINK_MAX} bytes`);
    if (this.entries.size >= MAX_SCRATCH_ENTRIES)
      fail('ENOSPC', `publication ${this.o.label} has ${MAX_SCRATCH_ENTRIES} scratch entries, the most it keeps`);
    if (this.textBytes + Buffer.byteLength(name) + Buffer.byteLength(target ?? '') > MAX_SCRATCH_TEXT_BYTES)
      fail('ENOSPC', 'scratch names and symlinks use up their space');
    if (this.next >= this.o.endId) fail('ENOSPC', `publication ${this.o.label} ran out of file ids`);
    const now = Date.now();
    const who = owner ?? this.o.serverOwner;
    return {
      id: this.next++,
      parent,
      name,
      type,
      mode: clientMode(type, mode),
      uid: who.uid >>> 0,
      gid: who.gid >>> 0,
      atime: now,
      mtime: now,
      ctime: now,
      ...(target !== undefined ? { target } : {}),
      size: 0,
      live: true,
      lock: Promise.resolve(),
      timesDirty: false,
    };
  }

  private touchDir(id: number, now: number): Entry | undefined {
    const d = this.entries.get(id);
    if (d) {
      d.mtime = now;
      d.ctime = now;
    }
    return d;
  }

  /**
   * A regular file. An existing file is returned unless `exclusive` (EEXIST);
   * an existing directory or symlink is EEXIST: nothing is followed.
   */
  create(parent: number, name: string, mode: number, owner: Caller | undefined, exclusive: boolean): Promise<number> {
    return this.exclusive(async () => {
      const existing = this.lookup(parent, name);
      if (existing !== undefined) {
        if (exclusive || this.entries.get(existing)?.type !== 'file') fail('EEXIST');
        return existing;
      }
      const e = this.newEntry(parent, name, 'file', mode, owner);
      try {
        await this.createContent(e.id);
      } catch (err) {
        hostError(err);
      }
      return this.link(e);
    });
  }

  /** Enters a new entry in its directory and journals both: the common end of create, mkdir and symlink. */
  private async link(e: Entry): Promise<number> {
    this.insert(e);
    await this.persist(this.put(e, this.touchDir(e.parent, e.ctime)));
    return e.id;
  }

  mkdir(parent: number, name: string, mode: number, owner: Caller | undefined): Promise<number> {
    return this.exclusive(async () => {
      if (this.lookup(parent, name) !== undefined) fail('EEXIST');
      const e = this.newEntry(parent, name, 'dir', mode, owner);
      return this.link(e);
    });
  }

  /** A symlink is its text: stored, listed, returned by readlink, and followed by nothing here. */
  symlink(parent: number, name: string, target: string, owner: Caller | undefined): Promise<number> {
    return this.exclusive(async () => {
      if (this.lookup(parent, name) !== undefined) fail('EEXIST');
      if (target.includes('\0')) fail('EINVAL', 'symlink text contains NUL');
      const e = this.newEntry(parent, name, 'symlink', 0o777, owner, target);
      return this.link(e);
    });
  }

  /** Removes a file or symlink (EISDIR for a directory). */
  remove(parent: number, name: string): Promise<void> {
    return this.exclusive(async () => {
      const e = this.entryAt(parent, name);
      if (e.type === 'dir') fail('EISDIR');
      await this.drop(e, parent);
    });
  }

  rmdir(parent: number, name: string): Promise<void> {
    return this.exclusive(async () => {
      const e = this.entryAt(parent, name);
      if (e.type !== 'dir') fail('ENOTDIR');
      if (this.children.get(e.id)!.size > 0) fail('ENOTEMPTY');
      await this.drop(e, parent);
    });
  }

  private entryAt(parent: number, name: string): Entry {
    checkScratchName(name);
    if (!this.children.has(parent)) fail(this.entries.has(parent) ? 'ENOTDIR' : 'ESTALE');
    const id = this.lookup(parent, name);
    if (id === undefined) fail('ENOENT');
    return this.live(id);
  }

  /** Forgets an entry durably, then deletes its content (an orphaned content file is swept at the next load). */
  private async drop(e: Entry, parent: number): Promise<void> {
    // Under the content lock: a write in flight finishes (and is charged) before the entry dies.
    await this.withContent(e, async () => {
      this.unlink(e);
      await this.persist([{ del: e.id }, ...this.put(this.touchDir(parent, Date.now()))]);
      if (e.type === 'file') await fs.promises.rm(this.contentPath(e.id), { force: true }).catch(() => undefined);
    });
  }

  /** POSIX rename within the publication: ids follow the entry; a replaced target's id dies. */
  rename(fromParent: number, fromName: string, toParent: number, toName: string): Promise<void> {
    return this.exclusive(async () => {
      const src = this.entryAt(fromParent, fromName);
      checkScratchName(toName);
      if (!this.children.has(toParent)) fail(this.entries.has(toParent) ? 'ENOTDIR' : 'ESTALE');
      if (fromParent === toParent && fromName === toName) return;
      if (src.type === 'dir') {
        for (let p = toParent; p !== SCRATCH_ROOT; p = this.live(p).parent)
          if (p === src.id) fail('EINVAL', 'a directory cannot move below itself');
      }
      const dstId = this.lookup(toParent, toName);
      const dst = dstId === undefined ? undefined : this.live(dstId);
      if (dst) {
        if (src.type === 'dir' && dst.type !== 'dir') fail('ENOTDIR');
        if (src.type !== 'dir' && dst.type === 'dir') fail('EISDIR');
        if (dst.type === 'dir' && this.children.get(dst.id)!.size > 0) fail('ENOTEMPTY');
      }
      const grow =
        Buffer.byteLength(toName) -
        Buffer.byteLength(fromName) -
        (dst ? Buffer.byteLength(dst.name) + Buffer.byteLength(dst.target ?? '') : 0);
      if (this.textBytes + grow > MAX_SCRATCH_TEXT_BYTES) fail('ENOSPC', 'scratch names and symlinks use up their space');
      if (dst) await this.withContent(dst, async () => this.unlink(dst));
      const now = Date.now();
      this.children.get(fromParent)!.delete(fromName);
      this.children.get(toParent)!.set(toName, src.id);
      this.textBytes += Buffer.byteLength(toName) - Buffer.byteLength(fromName);
      src.parent = toParent;
      src.name = toName;
      src.ctime = now;
      this.touchDir(fromParent, now);
      this.touchDir(toParent, now);
      const recs: JournalRecord[] = [
        ...(dst ? [{ del: dst.id }] : []),
        ...this.put(src, this.entries.get(fromParent), this.entries.get(toParent)),
      ];
      await this.persist(recs);
      if (dst?.type === 'file') await fs.promises.rm(this.contentPath(dst.id), { force: true }).catch(() => undefined);
    });
  }

  /** Attributes are metadata; a size change truncates or extends the content file within the budget. */
  setattr(id: number, attr: SetAttr): Promise<void> {
    return this.exclusive(async () => {
      const e = this.live(id);
      const now = Date.now();
      for (const t of [attr.atime, attr.mtime]) if (t && !Number.isFinite(t.getTime())) fail('EINVAL', 'bad time');
      if (attr.size !== undefined) {
        if (e.type === 'dir') fail('EISDIR');
        if (e.type !== 'file') fail('EINVAL');
        const size = attr.size;
        if (!Number.isSafeInteger(size) || size < 0) fail('EFBIG');
        const before = e.size;
        await this.resize(
          e,
          () => size,
          (h) => h.truncate(size),
        );
        if (e.size !== before) e.mtime = now;
      }
      if (attr.mode !== undefined) e.mode = clientMode(e.type, attr.mode);
      if (attr.uid !== undefined) e.uid = attr.uid >>> 0;
      if (attr.gid !== undefined) e.gid = attr.gid >>> 0;
      if (attr.atime) e.atime = attr.atime.getTime();
      if (attr.mtime) e.mtime = attr.mtime.getTime();
      e.ctime = now;
      await this.persist(this.put(e));
    });
  }

  async read(id: number, offset: number, length: number): Promise<{ data: Buffer; eof: boolean }> {
    const e = this.live(id);
    if (e.type === 'dir') fail('EISDIR');
    if (e.type !== 'file') fail('EINVAL');
    const want = Math.max(0, Math.min(length, e.size - offset));
    if (want === 0) return { data: Buffer.alloc(0), eof: true };
    const h = await this.openContent(id, false).catch(hostError);
    try {
      const buf = Buffer.alloc(want);
      const { bytesRead } = await h.read(buf, 0, want, offset).catch(hostError);
      return { data: buf.subarray(0, bytesRead), eof: offset + bytesRead >= e.size };
    } finally {
      await h.close();
    }
  }

  /** Writes within the budget: growing the file (even sparsely) draws its new size. */
  write(id: number, offset: number, data: Buffer, sync: boolean): Promise<void> {
    const e = this.live(id);
    if (e.type === 'dir') fail('EISDIR');
    if (e.type !== 'file') fail('EINVAL');
    if (!Number.isSafeInteger(offset + data.length)) fail('EFBIG');
    return this.resize(
      e,
      (current) => Math.max(current, offset + data.length),
      async (h) => {
        let done = 0;
        while (done < data.length) done += (await h.write(data, done, data.length - done, offset + done)).bytesWritten;
        if (sync) await h.datasync();
        e.mtime = Date.now();
        e.timesDirty = true;
      },
    );
  }

  /** Makes a file's content durable, and its times journaled. */
  async commit(id: number): Promise<void> {
    const e = this.live(id);
    if (e.type === 'file') {
      await this.withContent(e, async () => {
        const h = await this.openContent(id, false).catch(hostError);
        try {
          await h.datasync().catch(hostError);
        } finally {
          await h.close();
        }
      });
    }
    if (e.timesDirty) await this.exclusive(() => this.persist(this.put(e)));
  }

  /** Stops drawing on the budget (the publication is detached); the budget gives back what scratch used. */
  release(): void {
    if (!this.counting) return;
    this.o.budget.add(-this.charged, false);
    this.counting = false;
  }
}

/**
 * A flat, file-backed Datastore for the NFS benchmark only: the root holds
 * the files of one host directory. It lets the benchmark serve the very
 * same file that nfs-ganesha serves, until the real publication datastore
 * is benchmarked instead.
 */
import fs from 'node:fs';
import path from 'node:path';
import {
  DatastoreError, ROOT_ID, type Datastore, type DirEntry, type FileAttr, type FileId, type FsStat, type SetAttr,
} from '../src/datastore/types.js';

export class FileDatastore implements Datastore {
  private readonly ids = new Map<string, FileId>();
  private readonly names = new Map<FileId, string>();
  private readonly fds = new Map<FileId, Promise<fs.promises.FileHandle>>();
  private next = 2;

  constructor(private readonly dir: string) {
    for (const n of fs.readdirSync(dir).sort()) this.track(n);
  }

  private track(name: string): FileId {
    const id = this.next++;
    this.ids.set(name, id);
    this.names.set(id, name);
    return id;
  }

  private file(id: FileId): string {
    const n = this.names.get(id);
    if (n === undefined) throw new DatastoreError('ESTALE');
    return path.join(this.dir, n);
  }

  private async fd(id: FileId): Promise<fs.promises.FileHandle> {
    // Cache the promise, not the handle, so concurrent first calls share one open.
    let h = this.fds.get(id);
    if (!h) {
      h = fs.promises.open(this.file(id), 'r+');
      this.fds.set(id, h);
    }
    return await h;
  }

  /**
   * Attributes are cached until this process changes the file, as nfs-ganesha
   * does; a stat per READ would otherwise dominate small random reads.
   */
  private readonly attrs = new Map<FileId, FileAttr>();

  async getattr(id: FileId): Promise<FileAttr> {
    const cached = this.attrs.get(id);
    if (cached) return cached;
    const a = await this.stat(id);
    this.attrs.set(id, a);
    return a;
  }

  private async stat(id: FileId): Promise<FileAttr> {
    const st = await fs.promises.stat(id === ROOT_ID ? this.dir : this.file(id));
    return {
      fileid: id, type: st.isDirectory() ? 'dir' : 'file', mode: st.mode & 0o7777, nlink: st.nlink, uid: st.uid, gid: st.gid,
      size: st.size, used: st.blocks * 512, atime: st.atime, mtime: st.mtime, ctime: st.ctime,
    };
  }

  async setattr(id: FileId, a: SetAttr): Promise<FileAttr> {
    if (a.size !== undefined) await (await this.fd(id)).truncate(a.size);
    this.attrs.delete(id);
    return this.getattr(id);
  }

  async lookup(dir: FileId, name: string): Promise<FileId> {
    if (dir !== ROOT_ID) throw new DatastoreError('ENOTDIR');
    const id = this.ids.get(name);
    if (id === undefined) throw new DatastoreError('ENOENT');
    return id;
  }

  async readdir(): Promise<DirEntry[]> {
    return [...this.ids].map(([name, fileid]) => ({ name, fileid }));
  }

  async read(id: FileId, offset: number, length: number): Promise<{ data: Buffer; eof: boolean }> {
    const h = await this.fd(id);
    const buf = Buffer.allocUnsafe(length);
    const { bytesRead } = await h.read(buf, 0, length, offset);
    return { data: buf.subarray(0, bytesRead), eof: bytesRead < length };
  }

  async write(id: FileId, offset: number, data: Buffer, sync: boolean): Promise<FileAttr> {
    const h = await this.fd(id);
    await h.write(data, 0, data.length, offset);
    if (sync) await h.datasync();
    const prev = await this.getattr(id);
    const now = new Date();
    const size = Math.max(prev.size, offset + data.length);
    const next = { ...prev, size, used: Math.max(prev.used, size), mtime: now, ctime: now };
    this.attrs.set(id, next);
    return next;
  }

  async commit(id: FileId): Promise<void> {
    await (await this.fd(id)).datasync();
  }

  async create(dir: FileId, name: string): Promise<FileId> {
    if (dir !== ROOT_ID) throw new DatastoreError('ENOTDIR');
    const existing = this.ids.get(name);
    if (existing !== undefined) return existing;
    await fs.promises.writeFile(path.join(this.dir, name), '');
    this.attrs.delete(ROOT_ID);
    return this.track(name);
  }

  async mkdir(): Promise<FileId> { throw new DatastoreError('ENOTSUP'); }
  async remove(): Promise<void> { throw new DatastoreError('ENOTSUP'); }
  async rmdir(): Promise<void> { throw new DatastoreError('ENOTSUP'); }
  async rename(): Promise<void> { throw new DatastoreError('ENOTSUP'); }

  async fsstat(): Promise<FsStat> {
    const s = await fs.promises.statfs(this.dir);
    return { totalBytes: s.blocks * s.bsize, freeBytes: s.bfree * s.bsize, availBytes: s.bavail * s.bsize, totalFiles: s.files, freeFiles: s.ffree };
  }

  readOnly(): boolean { return false; }

  async close(): Promise<void> {
    for (const h of this.fds.values()) await (await h).close();
    this.fds.clear();
  }
}

/**
 * FuseFrontend: serves a Datastore as a FUSE filesystem (fuse-native over
 * libfuse2's multi-threaded loop).
 *
 * The frontend is a translation only: paths are resolved to file ids with
 * lookups, opens hand out small handle numbers mapped to file ids, and
 * DatastoreError codes become -errno. Large requests are negotiated
 * (max_read/max_write up to the 128 KiB a libfuse2 kernel session allows,
 * big_writes), so sequential I/O is not a round trip per 4 KiB page.
 * kernel_cache keeps the page cache across opens: every change goes through
 * this mount, so the cache cannot go stale.
 *
 * The kernel enforces who may open what (default_permissions) from the
 * ownership and modes src/fuse/access.ts reports: the publishing user, and
 * an access group when one is configured; nobody else.
 */
import fs from 'node:fs';
import os from 'node:os';
import Fuse from 'fuse-native';
import { RestorelabError, missingComponent } from '../errors.js';
import { DatastoreError, ROOT_ID, type Datastore, type FileAttr, type FileId } from '../datastore/types.js';
import { detachMount, isStaleFuseMount } from './mounts.js';
import { mountEntry } from '../host/mounts.js';
import { accessMountOptions, fuseAccess, presentedOwnership, type FuseAccess } from './access.js';
import { countBytes, countOp } from '../telemetry/counters.js';

/** Largest request libfuse2 can negotiate with the kernel (32 pages). */
export const FUSE_MAX_IO = 128 * 1024;

/**
 * Readahead wanted from the kernel on the mount: eight requests of 128 KiB in
 * flight. Measured on a 2 GiB sequential read, 1 to 16 MiB all run at the
 * same speed, 25% faster than the 128 KiB default.
 */
const FUSE_READAHEAD_KIB = 1024;

/**
 * The kernel reads ahead on a FUSE mount no further than the mount's bdi
 * allows, 128 KiB by default, whatever max_readahead libfuse2 asks for. A
 * sequential reader then has one or two requests in flight and waits out
 * every round trip. As root, sysfs raises it; without the right, the default
 * stays and reads are merely slower.
 */
function raiseKernelReadahead(dir: string): void {
  // From mountinfo, not stat: a synchronous stat of this mount would wait for the loop that answers it.
  const device = mountEntry(dir)?.device;
  if (!device) return;
  try {
    fs.writeFileSync(`/sys/class/bdi/${device}/read_ahead_kb`, String(FUSE_READAHEAD_KIB));
  } catch {
    // Not root (or sysfs read-only, as in some containers): keep the kernel's default.
  }
}

export interface FuseMountOptions {
  mountPoint: string;
  /** Log a line per failed operation to stderr. */
  debug?: boolean;
  /** Called when a stale mount was found and cleared before mounting. */
  onStaleCleared?: (dir: string) => void;
  /**
   * A group (name or gid) given the owner's rights besides the publishing
   * user, e.g. the hypervisor's group when it runs QEMU as another user.
   * Without it no other user reaches the mount.
   */
  accessGroup?: string;
}

interface Handle {
  id: FileId;
  sync: boolean;
}

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;

function errno(err: unknown): number {
  const code = err instanceof DatastoreError ? err.code : (err as NodeJS.ErrnoException)?.code;
  const n = code ? (os.constants.errno as Record<string, number>)[code] : undefined;
  return n ? -n : Fuse.EIO;
}

function statOf(a: FileAttr, access: FuseAccess): Record<string, unknown> {
  const type = a.type === 'dir' ? S_IFDIR : a.type === 'symlink' ? S_IFLNK : S_IFREG;
  const own = presentedOwnership(a, access);
  return {
    mode: type | own.mode,
    uid: own.uid,
    gid: own.gid,
    size: a.size,
    nlink: a.nlink,
    blksize: 4096,
    blocks: Math.ceil(a.used / 512),
    atime: a.atime,
    mtime: a.mtime,
    ctime: a.ctime,
  };
}

/** Checks that FUSE can be used on this host; a missing /dev/fuse is a missing component. */
export function assertFuseAvailable(device = '/dev/fuse'): void {
  try {
    fs.accessSync(device, fs.constants.R_OK | fs.constants.W_OK);
  } catch {
    throw missingComponent(
      `${device} (FUSE: libfuse2 / fuse3)`,
      'install the fuse3 and libfuse2 packages (apt-get install fuse3 libfuse2) and load the module (modprobe fuse); in a container pass --device /dev/fuse',
    );
  }
}

export class FuseFrontend {
  private readonly handles = new Map<number, Handle>();
  private nextHandle = 1;
  private mounted = false;

  private constructor(
    private readonly ds: Datastore,
    readonly mountPoint: string,
    private readonly fuse: Fuse,
    readonly access: FuseAccess,
  ) {}

  /**
   * Mounts `ds` at `opts.mountPoint` (created if missing). A stale mount left by
   * a crashed server is cleared first; a live mount there is refused.
   */
  static async mount(ds: Datastore, opts: FuseMountOptions): Promise<FuseFrontend> {
    assertFuseAvailable();
    const access = await fuseAccess(opts.accessGroup);
    const dir = opts.mountPoint;
    if (mountEntry(dir) && (await isStaleFuseMount(dir))) {
      if (!(await detachMount(dir)))
        throw new RestorelabError('MOUNT_POINT_STALE', `${dir} holds a stale FUSE mount that could not be removed`, {
          hint: `run: umount -l ${dir}`,
        });
      opts.onStaleCleared?.(dir);
    }
    const existing = mountEntry(dir);
    if (existing) {
      throw new RestorelabError('MOUNT_POINT_IN_USE', `${dir} is already a mount point (${existing.fstype} from ${existing.source})`, {
        hint: 'choose an empty directory, or unpublish/umount what is mounted there',
      });
    }
    await fs.promises.mkdir(dir, { recursive: true });
    if ((await fs.promises.readdir(dir)).length > 0) {
      throw new RestorelabError('MOUNT_POINT_IN_USE', `${dir} is not empty`, { hint: 'choose an empty directory for the FUSE mount' });
    }
    // The operations need the frontend, the frontend needs the Fuse built from them.
    const holder: { frontend?: FuseFrontend } = {};
    const ops = FuseFrontend.operations(() => holder.frontend!, opts.debug ?? false);
    const fuse = new Fuse(dir, ops, { timeout: false });
    const options = [
      'fsname=restorelab',
      'subtype=restorelab',
      ...accessMountOptions(access),
      'kernel_cache',
      'big_writes',
      `max_read=${FUSE_MAX_IO}`,
      `max_write=${FUSE_MAX_IO}`,
      `max_readahead=${FUSE_READAHEAD_KIB * 1024}`,
      'attr_timeout=1',
      'entry_timeout=1',
    ];
    // fuse-native only knows a fixed option list; max_write and big_writes are not on it.
    (fuse as unknown as { _fuseOptions: () => string })._fuseOptions = () => '-o' + options.join(',');
    const frontend = new FuseFrontend(ds, dir, fuse, access);
    holder.frontend = frontend;
    await new Promise<void>((resolve, reject) => fuse.mount((err) => (err ? reject(err) : resolve())));
    frontend.mounted = true;
    // The kernel sets the mount's readahead when libfuse answers INIT, and no
    // request is served before that: once a statfs returns, raising it sticks.
    await fs.promises.statfs(dir).catch(() => undefined);
    raiseKernelReadahead(dir);
    return frontend;
  }

  /** Unmounts (lazily, so open files held by a dying hypervisor do not block it). */
  async unmount(): Promise<void> {
    if (!this.mounted) return;
    this.mounted = false;
    await new Promise<void>((resolve) => this.fuse.unmount(() => resolve()));
    if (mountEntry(this.mountPoint)) await detachMount(this.mountPoint);
  }

  private async resolve(p: string): Promise<FileId> {
    let id = ROOT_ID;
    for (const part of p.split('/')) if (part) id = await this.ds.lookup(id, part);
    return id;
  }

  private async resolveParent(p: string): Promise<{ dir: FileId; name: string }> {
    const i = p.lastIndexOf('/');
    return { dir: await this.resolve(p.slice(0, i)), name: p.slice(i + 1) };
  }

  private handle(fd: number): Handle {
    const h = this.handles.get(fd);
    if (!h) throw new DatastoreError('EINVAL', `unknown handle ${fd}`);
    return h;
  }

  private open(id: FileId, flags: number): number {
    const fd = this.nextHandle++;
    const c = fs.constants;
    this.handles.set(fd, { id, sync: (flags & (c.O_SYNC | c.O_DSYNC)) !== 0 });
    return fd;
  }

  private static operations(self: () => FuseFrontend, debug: boolean): Fuse.Operations {
    // Each op runs a promise and reports either a result or -errno. Both
    // helpers count the op process-wide for /metrics; read and write add their bytes.
    const run = <T>(name: string, cb: (err: number, v?: T) => void, fn: () => Promise<T>): void => {
      countOp('fuse', name);
      fn().then(
        (v) => cb(0, v),
        (err: unknown) => {
          if (debug) process.stderr.write(`fuse ${name}: ${(err as Error).message}\n`);
          cb(errno(err));
        },
      );
    };
    const io = (name: string, cb: (n: number) => void, fn: () => Promise<number>): void => {
      countOp('fuse', name);
      fn().then(cb, (err: unknown) => {
        if (debug || !(err instanceof DatastoreError)) process.stderr.write(`fuse ${name}: ${(err as Error).message}\n`);
        cb(errno(err));
      });
    };
    return {
      init: (cb) => cb(0),
      getattr: (p, cb) => run('getattr', cb, async () => statOf(await self().ds.getattr(await self().resolve(p)), self().access)),
      fgetattr: (p, fd, cb) => run('fgetattr', cb, async () => statOf(await self().ds.getattr(self().handle(fd).id), self().access)),
      readdir: (p, cb) => run('readdir', cb, async () => (await self().ds.readdir(await self().resolve(p))).map((e) => e.name)),
      open: (p, flags, cb) => run('open', cb, async () => self().open(await self().resolve(p), flags)),
      opendir: (p, flags, cb) =>
        run('opendir', cb, async () => {
          await self().resolve(p);
          return 0;
        }),
      create: (p, mode, cb) =>
        run('create', cb, async () => {
          const { dir, name } = await self().resolveParent(p);
          return self().open(await self().ds.create(dir, name, mode & 0o7777), 0);
        }),
      release: (p, fd, cb) => {
        self().handles.delete(fd);
        cb(0);
      },
      releasedir: (p, fd, cb) => cb(0),
      read: (p, fd, buf, len, pos, cb) =>
        io('read', cb, async () => {
          const { ds } = self();
          const id = self().handle(fd).id;
          // Straight into libfuse's buffer when the datastore can: no allocation per request.
          const n = ds.readInto ? (await ds.readInto(id, pos, buf.subarray(0, len))).length : (await ds.read(id, pos, len)).data.copy(buf);
          countBytes('fuse', 'read', n);
          return n;
        }),
      write: (p, fd, buf, len, pos, cb) =>
        io('write', cb, async () => {
          const h = self().handle(fd);
          await self().ds.write(h.id, pos, buf.subarray(0, len), h.sync);
          countBytes('fuse', 'write', len);
          return len;
        }),
      flush: (p, fd, cb) => cb(0),
      fsync: (p, datasync, fd, cb) => run('fsync', cb, async () => self().ds.commit(self().handle(fd).id)),
      truncate: (p, size, cb) =>
        run('truncate', cb, async () => {
          await self().ds.setattr(await self().resolve(p), { size });
        }),
      ftruncate: (p, fd, size, cb) =>
        run('ftruncate', cb, async () => {
          await self().ds.setattr(self().handle(fd).id, { size });
        }),
      utimens: (p, atime, mtime, cb) =>
        run('utimens', cb, async () => {
          await self().ds.setattr(await self().resolve(p), { atime: new Date(atime), mtime: new Date(mtime) });
        }),
      chmod: (p, mode, cb) =>
        run('chmod', cb, async () => {
          await self().ds.setattr(await self().resolve(p), { mode: mode & 0o7777 });
        }),
      chown: (p, uid, gid, cb) =>
        run('chown', cb, async () => {
          await self().ds.setattr(await self().resolve(p), { uid, gid });
        }),
      unlink: (p, cb) =>
        run('unlink', cb, async () => {
          const { dir, name } = await self().resolveParent(p);
          await self().ds.remove(dir, name);
        }),
      rmdir: (p, cb) =>
        run('rmdir', cb, async () => {
          const { dir, name } = await self().resolveParent(p);
          await self().ds.rmdir(dir, name);
        }),
      mkdir: (p, mode, cb) =>
        run('mkdir', cb, async () => {
          const { dir, name } = await self().resolveParent(p);
          await self().ds.mkdir(dir, name, mode & 0o7777);
        }),
      rename: (src, dest, cb) =>
        run('rename', cb, async () => {
          const a = await self().resolveParent(src);
          const b = await self().resolveParent(dest);
          await self().ds.rename(a.dir, a.name, b.dir, b.name);
        }),
      symlink: (target, p, cb) =>
        run('symlink', cb, async () => {
          const ds = self().ds;
          if (!ds.symlink) throw new DatastoreError('ENOTSUP');
          const { dir, name } = await self().resolveParent(p);
          await ds.symlink(dir, name, target);
        }),
      readlink: (p, cb) =>
        run('readlink', cb, async () => {
          const ds = self().ds;
          if (!ds.readlink) throw new DatastoreError('EINVAL');
          return ds.readlink(await self().resolve(p));
        }),
      statfs: (p, cb) =>
        run('statfs', cb, async () => {
          const s = await self().ds.fsstat(
            await self()
              .resolve(p)
              .catch(() => ROOT_ID),
          );
          const bsize = 4096;
          const blocks = (n: number): number => Math.min(0xffffffff, Math.floor(n / bsize));
          return {
            bsize,
            frsize: bsize,
            blocks: blocks(s.totalBytes),
            bfree: blocks(s.freeBytes),
            bavail: blocks(s.availBytes),
            files: Math.min(0xffffffff, s.totalFiles),
            ffree: Math.min(0xffffffff, s.freeFiles),
            favail: Math.min(0xffffffff, s.freeFiles),
            fsid: 0,
            flag: 0,
            namemax: 255,
          };
        }),
    };
  }
}

/**
 * Browsing and extracting guest files below a mounted partition, confined to
 * it. A guest path is resolved one component at a time with lstat, the way
 * the guest's kernel would resolve it with the partition as its root, except
 * that anything leaving the partition is refused instead of followed: `..`
 * above the root, absolute symlinks (they mean the guest's root, not ours)
 * and relative symlinks that climb out. Listings never follow symlinks; they
 * report them with their target.
 *
 * All file system calls are asynchronous on purpose: the partition may be
 * served by FUSE, and a synchronous call in a process that also serves FUSE
 * would wait on itself.
 */
import { lstat, readdir, readlink, open, utimes, chmod, rm, stat } from 'node:fs/promises';
import { constants, createWriteStream, type Stats } from 'node:fs';
import { join, posix } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Writable } from 'node:stream';
import tar from 'tar-stream';
import { RestorelabError, badInput, notFound } from '../errors.js';
import type { MountedPartition } from './session.js';

/** The kernel's own limit on symlinks followed in one lookup. */
const MAX_SYMLINKS = 40;

export type EntryType = 'file' | 'directory' | 'symlink' | 'other';

export interface GuestEntry {
  name: string;
  /** Path inside the partition, absolute ("/etc/hostname"). */
  path: string;
  type: EntryType;
  size: number;
  /** ISO 8601. */
  mtime: string;
  /** Permission bits in octal, "0644". */
  mode: string;
  uid: number;
  gid: number;
  /** Symlink target as stored (never followed). */
  target?: string;
}

export interface ResolvedPath {
  /** Normalised guest path, "/a/b". */
  guestPath: string;
  hostPath: string;
  stat: Stats;
}

function escapes(guestPath: string, why: string): RestorelabError {
  return new RestorelabError('PATH_TRAVERSAL', `guest path ${guestPath} is refused: ${why}`, {
    hint: 'guest paths are confined to the mounted partition; give the path the link points to, inside the same partition',
  });
}

function typeOf(st: Stats): EntryType {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'directory';
  if (st.isSymbolicLink()) return 'symlink';
  return 'other';
}

/**
 * Resolves `guestPath` below `root`. A symlink in the middle is followed when
 * it stays inside; a final symlink is followed only with `followFinal`.
 */
export async function resolveGuestPath(root: string, guestPath: string, opts: { followFinal: boolean }): Promise<ResolvedPath> {
  if (guestPath.includes('\0'))
    throw badInput('BAD_GUEST_PATH', 'guest path contains a NUL byte', 'give a plain path such as /etc/hostname');
  const queue = guestPath.split('/').filter((c) => c !== '' && c !== '.');
  const stack: string[] = [];
  let links = 0;
  let st = await lstat(root);
  while (queue.length > 0) {
    const c = queue.shift()!;
    if (c === '..') {
      if (stack.length === 0) throw escapes(guestPath, '".." climbs above the root of the partition');
      stack.pop();
      st = await lstat(join(root, ...stack));
      continue;
    }
    const host = join(root, ...stack, c);
    try {
      st = await lstat(host);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT')
        throw notFound(
          'GUEST_PATH_NOT_FOUND',
          `guest path ${guestPath} does not exist (no ${posix.join('/', ...stack, c)})`,
          'list the directory with `restorelab files ls` to see what is there',
        );
      if ((err as NodeJS.ErrnoException).code === 'ENOTDIR')
        throw notFound(
          'GUEST_PATH_NOT_FOUND',
          `guest path ${guestPath}: ${posix.join('/', ...stack)} is not a directory`,
          'check the path',
        );
      throw err;
    }
    const last = queue.length === 0;
    if (st.isSymbolicLink() && (!last || opts.followFinal)) {
      const target = await readlink(host);
      const where = posix.join('/', ...stack, c);
      if (target.startsWith('/')) throw escapes(guestPath, `${where} is an absolute symlink (to ${target}); it is not followed`);
      if (++links > MAX_SYMLINKS) throw escapes(guestPath, `more than ${MAX_SYMLINKS} symlinks (a loop?)`);
      // Climbing out is checked as the link's components are resolved.
      const parts = target.split('/').filter((x) => x !== '' && x !== '.');
      let depth = stack.length;
      for (const p of parts) {
        depth += p === '..' ? -1 : 1;
        if (depth < 0) throw escapes(guestPath, `${where} is a symlink to ${target}, which points outside the partition`);
      }
      queue.unshift(...parts);
      continue;
    }
    if (!last && !st.isDirectory())
      throw notFound(
        'GUEST_PATH_NOT_FOUND',
        `guest path ${guestPath}: ${posix.join('/', ...stack, c)} is not a directory`,
        'check the path',
      );
    stack.push(c);
  }
  return { guestPath: posix.join('/', ...stack), hostPath: join(root, ...stack), stat: st };
}

async function entryOf(hostPath: string, guestPath: string, st: Stats): Promise<GuestEntry> {
  const e: GuestEntry = {
    name: posix.basename(guestPath) || '/',
    path: guestPath,
    type: typeOf(st),
    size: st.size,
    mtime: st.mtime.toISOString(),
    mode: (st.mode & 0o7777).toString(8).padStart(4, '0'),
    uid: st.uid,
    gid: st.gid,
  };
  if (st.isSymbolicLink()) e.target = await readlink(hostPath);
  return e;
}

/** Lists a directory (its entries, sorted by name) or a single non-directory. Symlinks are not followed. */
export async function listGuestPath(root: string, guestPath: string): Promise<GuestEntry[]> {
  try {
    return await list(root, guestPath);
  } catch (err) {
    throw readFailure(err, guestPath);
  }
}

async function list(root: string, guestPath: string): Promise<GuestEntry[]> {
  const r = await resolveGuestPath(root, guestPath, { followFinal: false });
  if (!r.stat.isDirectory()) return [await entryOf(r.hostPath, r.guestPath, r.stat)];
  const names = (await readdir(r.hostPath)).sort();
  const out: GuestEntry[] = [];
  for (const n of names) {
    const host = join(r.hostPath, n);
    out.push(await entryOf(host, posix.join(r.guestPath, n), await lstat(host)));
  }
  return out;
}

export interface GetResult {
  guestPath: string;
  /** Where it was written ("-" for stdout); inside `to` when `to` is a directory. */
  to: string;
  format: 'file' | 'tar';
  bytes: number;
  files: number;
  directories: number;
  symlinks: number;
  /** Devices, sockets and FIFOs are left out of tar streams. */
  skipped: number;
}

class CountingSink extends Writable {
  bytes = 0;
  constructor(private readonly inner: NodeJS.WritableStream) {
    super();
  }
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.bytes += chunk.length;
    if (this.inner.write(chunk)) cb();
    else this.inner.once('drain', () => cb());
  }
  override _final(cb: (err?: Error | null) => void): void {
    if (this.inner === process.stdout) return cb();
    this.inner.end(() => cb());
  }
}

/**
 * Extracts a guest file (streamed) or, for a directory or with `tar`, a tar
 * stream of it. `to` is a local file path, or "-" for stdout.
 */
export async function getGuestPath(root: string, guestPath: string, to: string, opts: { tar?: boolean } = {}): Promise<GetResult> {
  let r: ResolvedPath;
  try {
    r = await resolveGuestPath(root, guestPath, { followFinal: true });
  } catch (err) {
    throw readFailure(err, guestPath);
  }
  const asTar = opts.tar === true || r.stat.isDirectory();
  if (!asTar && !r.stat.isFile())
    throw badInput(
      'NOT_A_REGULAR_FILE',
      `guest path ${guestPath} is a ${typeOf(r.stat)}, not a file`,
      'use --tar to get it as a tar stream',
    );
  const base = r.guestPath === '/' ? 'root' : posix.basename(r.guestPath);
  // Like cp: a directory as the target means "into it".
  const target = to !== '-' && (await isDirectory(to)) ? join(to, asTar ? `${base}.tar` : base) : to;
  const result: GetResult = {
    guestPath: r.guestPath,
    to: target,
    format: asTar ? 'tar' : 'file',
    bytes: 0,
    files: 0,
    directories: 0,
    symlinks: 0,
    skipped: 0,
  };
  const sink = new CountingSink(target === '-' ? process.stdout : createWriteStream(target, { mode: 0o600 }));
  try {
    if (asTar) await writeTar(r, sink, result);
    else await copyFile(r, sink, result);
  } catch (err) {
    // A half-written file must not pass for the guest's file.
    if (target !== '-') await rm(target, { force: true });
    throw readFailure(err, guestPath);
  }
  result.bytes = sink.bytes;
  if (!asTar && target !== '-') {
    await chmod(target, r.stat.mode & 0o777);
    await utimes(target, r.stat.atime, r.stat.mtime);
  }
  return result;
}

/**
 * Writes a guest file or directory as a tar stream into `out`, a stream the
 * caller owns (the API's download sends it as the HTTP response). Nothing is
 * buffered beyond the tar packer's chunk. If `out` closes early (the client
 * went away), packing stops with an error instead of waiting on it forever.
 */
export async function streamGuestTar(root: string, guestPath: string, out: Writable): Promise<GetResult> {
  let r: ResolvedPath;
  try {
    r = await resolveGuestPath(root, guestPath, { followFinal: true });
  } catch (err) {
    throw readFailure(err, guestPath);
  }
  const result: GetResult = { guestPath: r.guestPath, to: '-', format: 'tar', bytes: 0, files: 0, directories: 0, symlinks: 0, skipped: 0 };
  const sink = new CountingSink(out);
  const onClose = (): void => {
    if (!sink.writableFinished) sink.destroy(new Error(`the receiver of ${guestPath} closed the stream`));
  };
  out.once('close', onClose);
  try {
    await writeTar(r, sink, result);
  } catch (err) {
    throw readFailure(err, guestPath);
  } finally {
    out.off('close', onClose);
  }
  result.bytes = sink.bytes;
  return result;
}

async function isDirectory(p: string): Promise<boolean> {
  try {
    return (await stat(p)).isDirectory();
  } catch {
    return false;
  }
}

/** EIO under a mounted restore point means a chunk failed its checks: say so instead of a bare errno. */
function readFailure(err: unknown, guestPath: string): unknown {
  if ((err as NodeJS.ErrnoException).code !== 'EIO') return err;
  return new RestorelabError('GUEST_READ_FAILED', `reading ${guestPath} failed with an I/O error`, {
    hint: 'the restore point may have corrupt chunks: run `restorelab verify`, and try an earlier restore point',
    cause: err,
  });
}

async function copyFile(r: ResolvedPath, sink: CountingSink, result: GetResult): Promise<void> {
  // O_NOFOLLOW: what we open is what we resolved.
  const fh = await open(r.hostPath, constants.O_RDONLY | constants.O_NOFOLLOW);
  try {
    await pipeline(fh.createReadStream({ autoClose: false }), sink);
  } finally {
    await fh.close();
  }
  result.files = 1;
}

async function writeTar(r: ResolvedPath, sink: CountingSink, result: GetResult): Promise<void> {
  const pack = tar.pack();
  const done = pipeline(pack, sink);
  // Awaited below; a sink that fails while packing (a client gone) must not count as unhandled meanwhile.
  done.catch(() => undefined);
  const prefix = r.guestPath === '/' ? '.' : posix.basename(r.guestPath);
  try {
    await packTree(pack, r.hostPath, prefix, r.stat, result);
    pack.finalize();
  } catch (err) {
    pack.destroy(err as Error);
    await done.catch(() => undefined);
    throw err;
  }
  await done;
}

type TarHeader = Partial<tar.Header> & { name: string };

function header(name: string, st: Stats): TarHeader {
  return { name, mode: st.mode & 0o7777, uid: st.uid, gid: st.gid, mtime: st.mtime };
}

/** Depth-first, never following symlinks and never crossing into another filesystem. */
async function packTree(pack: tar.Pack, hostPath: string, name: string, st: Stats, result: GetResult): Promise<void> {
  if (st.isDirectory()) {
    await addEntry(pack, { ...header(name, st), type: 'directory' });
    result.directories++;
    for (const n of (await readdir(hostPath)).sort()) {
      const child = join(hostPath, n);
      const cst = await lstat(child);
      if (cst.dev !== st.dev) {
        result.skipped++;
        continue;
      }
      await packTree(pack, child, `${name}/${n}`, cst, result);
    }
  } else if (st.isSymbolicLink()) {
    await addEntry(pack, { ...header(name, st), type: 'symlink', linkname: await readlink(hostPath) });
    result.symlinks++;
  } else if (st.isFile()) {
    const fh = await open(hostPath, constants.O_RDONLY | constants.O_NOFOLLOW);
    try {
      const entry = pack.entry({ ...header(name, st), type: 'file', size: st.size });
      await pipeline(fh.createReadStream({ autoClose: false }), entry);
    } finally {
      await fh.close();
    }
    result.files++;
  } else {
    result.skipped++;
  }
}

function addEntry(pack: tar.Pack, h: TarHeader): Promise<void> {
  return new Promise((resolve, reject) => {
    pack.entry(h, (err) => (err ? reject(err) : resolve()));
  });
}

/**
 * The mounted partition holding `guestPath`: the one asked for (by disk and/or
 * partition number), or else the first, by disk then number, where the path
 * exists. `howToChoose` ends the error hints: how the caller's user names a
 * partition (a CLI flag, a query parameter).
 */
export async function choosePartition(
  mounts: readonly MountedPartition[],
  guestPath: string,
  want: { disk?: string; partition?: number },
  howToChoose: string,
): Promise<MountedPartition> {
  const usable = mounts.filter((m) => !m.skipped);
  const candidates = usable.filter(
    (m) => (want.disk === undefined || m.disk === want.disk) && (want.partition === undefined || m.partition === want.partition),
  );
  const names = (ms: readonly MountedPartition[]): string =>
    ms.map((m) => `${m.disk} p${m.partition}${m.volume ? ` ${m.volume}` : ''}`).join(', ') || 'none';
  if (candidates.length === 0) {
    throw notFound(
      'PARTITION_NOT_MOUNTED',
      `no mounted partition matching${want.disk !== undefined ? ` disk ${want.disk}` : ''}${want.partition !== undefined ? ` partition ${want.partition}` : ''} (mounted: ${names(usable)})`,
      howToChoose,
    );
  }
  if (candidates.length === 1) return candidates[0] as MountedPartition;
  for (const m of candidates) {
    try {
      await resolveGuestPath(m.path, guestPath, { followFinal: false });
      return m;
    } catch (err) {
      if (err instanceof RestorelabError && err.code === 'GUEST_PATH_NOT_FOUND') continue;
      throw err;
    }
  }
  throw notFound(
    'GUEST_PATH_NOT_FOUND',
    `guest path ${guestPath} exists on none of the mounted partitions (${names(candidates)})`,
    howToChoose,
  );
}

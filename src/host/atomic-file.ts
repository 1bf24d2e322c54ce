/**
 * Crash-safe file replacement, the one copy every module uses: a reader sees
 * the old file or the complete new one, never a torn write, and after return
 * the new name survives a power loss.
 *
 * The steps: a temp file in the same directory (rename is atomic only within
 * one filesystem), write, fsync the file (its data is on disk before its name
 * is), rename over the target, fsync the directory (the rename itself is on
 * disk). Temp names start with TEMP_PREFIX, so directory listings and garbage
 * collection can tell a leftover of a crash from a real file.
 */
import { closeSync, fsyncSync, openSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import { open, rename, stat, unlink } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { dirname, join } from 'node:path';
import { isErrno } from '../errors.js';

/** Names of temp files written here start with this (the repository's GC removes old ones). */
export const TEMP_PREFIX = '.tmp-';

/** Files are created with this mode unless the caller asks otherwise (before the umask). */
const DEFAULT_MODE = 0o644;

export async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export function fsyncDirSync(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** A fresh temp file name (no directory), unique across processes and calls. */
export function tempName(): string {
  return `${TEMP_PREFIX}${process.pid}-${randomBytes(6).toString('hex')}`;
}

/** A temp path beside `file`, for writers that stream into it and then call commitTempFile. */
export function tempPathFor(file: string): string {
  return join(dirname(file), tempName());
}

/** Replaces `dir/name` with `data`, crash-safely (see the module comment). */
export async function writeFileAtomic(dir: string, name: string, data: Buffer | string, mode = DEFAULT_MODE): Promise<void> {
  const tmp = join(dir, tempName());
  const fh = await open(tmp, 'wx', mode);
  try {
    try {
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, join(dir, name));
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
  await fsyncDir(dir);
}

/**
 * writeFileAtomic for the few callers that cannot wait: state files written
 * from signal handlers and synchronous state machines (sessions, labs,
 * publication records).
 */
export function writeFileAtomicSync(dir: string, name: string, data: Buffer | string, mode = DEFAULT_MODE): void {
  const tmp = join(dir, tempName());
  const fd = openSync(tmp, 'wx', mode);
  try {
    try {
      const buf = typeof data === 'string' ? Buffer.from(data) : data;
      for (let off = 0; off < buf.length;) off += writeSync(fd, buf, off, buf.length - off);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, join(dir, name));
  } catch (err) {
    try {
      unlinkSync(tmp);
    } catch {
      // Already renamed, or never created.
    }
    throw err;
  }
  fsyncDirSync(dir);
}

/**
 * The last steps for a temp file the caller wrote itself (too big for one
 * buffer, e.g. a restored disk image, or written by another program such as
 * qemu-img): fsync it, rename it over `file`, then fsync the directory. The
 * temp file is removed on failure.
 */
export async function commitTempFile(tmp: string, file: string): Promise<void> {
  try {
    const fh = await open(tmp, 'r');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, file);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
  await fsyncDir(dirname(file));
}

/**
 * Deletes `file` only if its mtime is older than `cutoffMs`, without racing a
 * writer that refreshes the mtime to claim the file: rename it aside first,
 * then look again. A writer that touched it before the rename shows up in the
 * second stat (and the file goes back); one that comes after finds it gone
 * and writes it anew. Returns the bytes freed, 0 when kept.
 */
export async function removeIfOlder(file: string, cutoffMs: number): Promise<number> {
  const first = await stat(file).catch(() => undefined);
  if (!first || first.mtimeMs >= cutoffMs) return 0;
  const aside = join(dirname(file), tempName());
  try {
    await rename(file, aside);
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return 0;
    throw err;
  }
  const again = await stat(aside);
  if (again.mtimeMs >= cutoffMs) {
    await rename(aside, file);
    return 0;
  }
  await unlink(aside);
  return again.size;
}

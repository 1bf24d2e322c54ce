/**
 * Crash-safe file replacement: a reader sees the old file or the complete new
 * one, never a torn write, and after return the new name survives a power
 * loss (temp file, fsync, rename, fsync directory).
 */
import { open, rename, stat, unlink } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { dirname, join } from 'node:path';
import { isErrno } from '../errors.js';
import { TEMP_PREFIX } from './format.js';

export async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export function tempName(): string {
  return `${TEMP_PREFIX}${process.pid}-${randomBytes(6).toString('hex')}`;
}

export async function writeFileAtomic(dir: string, name: string, data: Buffer | string, mode = 0o644): Promise<void> {
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

/**
 * Crash-safe file replacement: a reader sees the old file or the complete new
 * one, never a torn write, and after return the new name survives a power
 * loss (temp file, fsync, rename, fsync directory).
 */
import { open, rename, unlink } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
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

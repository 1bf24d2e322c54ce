/**
 * What the scan engine walks: one *target* per partition, whichever way its
 * files are reached.
 *
 * - `mount`: a read-only kernel mount (file-level restore); files are walked
 *   and hashed through it, filefrag gives their extents, yara reads them in
 *   place.
 * - `reader`: the in-process ext reader (src/fsread) over the point's disk
 *   read from the repository; a file's extents come from its inode, its bytes
 *   are hashed as they are copied into a private scratch file that yara reads
 *   (under a number, never under the guest's name), and the copy is removed
 *   once yara has answered.
 */
import type { Extent } from './extents.js';
import { hashFile, walkRegularFiles } from './walk.js';
import { readExtents } from './extents.js';
import type { MountedPartition } from '../flr/session.js';

export type ScanVia = 'reader' | 'mount';

export interface TargetFile {
  /** Path inside the partition, starting with "/". */
  guestPath: Buffer;
  size: number;
}

/** A file's content read once: its SHA-256, the host path yara reads it at, and what frees that path. */
export interface ReadFile {
  sha: string;
  path: Buffer;
  /** Removes a scratch copy (nothing for a file read in place). */
  release(): void;
}

export interface ScanTarget<F extends TargetFile = TargetFile> {
  disk: string;
  partition: number;
  /** The LVM logical volume ("vg/lv") in that partition, when the target is one. */
  volume?: string;
  fstype: string;
  /** Byte offset of the partition on its disk (the file map needs it). */
  offset?: number;
  /** Why it is not scanned (swap, LVM, no driver). */
  skipped?: string;
  via: ScanVia;
  /** Every regular file, never following a symlink. */
  files(): AsyncIterable<F>;
  /** Extent lists in order (null: unknown or not plain data, so the file is read). */
  extents(files: readonly F[]): Promise<(Extent[] | null)[]>;
  read(file: F): Promise<ReadFile>;
  /** The file's SHA-256 alone, without a copy for yara (a file the file map expects unchanged: src/scan/filemap.ts). */
  hash(file: F): Promise<string>;
}

interface MountedFile extends TargetFile {
  path: Buffer;
  dev: number;
}

/** A mounted partition as a target: walked, hashed and scanned in place. */
export function mountTarget(m: MountedPartition): ScanTarget {
  const t: ScanTarget<MountedFile> = {
    disk: m.disk,
    partition: m.partition,
    ...(m.volume !== undefined ? { volume: m.volume } : {}),
    fstype: m.fstype,
    via: 'mount',
    ...(m.offset !== undefined ? { offset: m.offset } : {}),
    ...(m.skipped !== undefined ? { skipped: m.skipped } : {}),
    files: () => walkRegularFiles(m.path),
    extents: (files) => readExtents(files.map((f) => f.path)),
    read: async (f) => ({ sha: await hashFile(f.path, f.dev), path: f.path, release: () => undefined }),
    hash: (f) => hashFile(f.path, f.dev),
  };
  return t as unknown as ScanTarget;
}

/**
 * The metadata seam under a repository: where config.json, indexes/*.fidx,
 * points/*.json and the lock holders live. LocalRepository keeps the format
 * (what the bytes mean, which is written first); a MetaStore only keeps
 * named byte strings. Words:
 *
 * - *name*: a path relative to the repository root, `/`-separated
 *   (`config.json`, `indexes/<digest>.fidx`, `points/<id>.json`).
 * - *write*: atomic replace. A reader sees the old bytes or the new ones,
 *   never a torn file, and a crash leaves at most a temp file (local) or
 *   nothing (object storage: a PUT appears whole or not at all).
 * - *mtime*: when the entry was last written or touched, in the clock of
 *   whatever stores it (the file system's, the gateway's); gc compares it
 *   with its cutoff.
 *
 * Two implementations: LocalMetaStore (files, this module) and S3MetaStore
 * (objects under the repository's prefix, s3-meta-store.ts), same names and
 * same bytes.
 */
import { mkdir, readdir, readFile, stat, unlink, utimes } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Leftover, LockHolder, LockKind, RepoLock, Sweep, SweepView } from './api.js';
import { badInput, isErrno } from '../errors.js';
import { fsyncDir, removeIfOlder, TEMP_PREFIX, writeFileAtomic } from '../host/atomic-file.js';
import { PRIVATE_DIR_MODE, tightenMode } from '../host/private-files.js';
import { acquireLock, liveLocks } from './lock.js';
import { INDEXES_DIR, LOCKS_DIR, POINTS_DIR } from './format.js';

export interface MetaEntry {
  /** The last segment of the name. */
  name: string;
  size: number;
  mtimeMs: number;
}

export interface MetaStore {
  /** The repository as users name it: a directory, or `s3://bucket/prefix/`. */
  readonly path: string;
  /** Where an entry lives, for messages (a file path, an s3:// URL). */
  where(name: string): string;
  /** Throws REPO_NOT_EMPTY unless nothing is stored here yet. */
  assertEmpty(): Promise<void>;
  /** Creates what must exist before the first write (local directories); owner-only. */
  prepare(): Promise<void>;
  /** The entry's bytes, undefined when there is none. */
  read(name: string): Promise<Buffer | undefined>;
  /** Atomic, durable replace (see the module doc). */
  write(name: string, data: Buffer | string): Promise<void>;
  exists(name: string): Promise<boolean>;
  /** Moves the entry's mtime to now; false when there is none. */
  touch(name: string): Promise<boolean>;
  /** False when there was none. */
  remove(name: string): Promise<boolean>;
  /** Entries directly under `dir`, sorted by name, temp files left out. */
  list(dir: string): Promise<MetaEntry[]>;
  /** Deletes the entry only when its mtime is before `cutoffMs`; the bytes freed, or 0. */
  /** `guard` runs right before an object store's DELETE (Sweep.assertLive); the local rename-and-recheck needs none. */
  removeIfOlder(name: string, cutoffMs: number, guard?: () => void): Promise<number>;
  /** Temp files crashed writers left, older than `beforeMs`. */
  leftovers(beforeMs: number): Promise<Leftover[]>;
  removeLeftover(leftover: Leftover): Promise<void>;
  /** Shared locks on object storage carry the sweep view their holder's commit compares with (sweptSince). */
  lock(kind: LockKind, purpose: string): Promise<RepoLock>;
  liveHolders(): Promise<LockHolder[]>;
  /** Announces a sweep to writers (Sweep in api.ts); silent where deletes cannot race a touch (local files). */
  beginSweep(purpose: string, tidyBeforeMs?: number): Promise<Sweep>;
  /**
   * Whether a sweep may have deleted something since `view`, once no
   * DELETE begun before this call is still to come (s3-sweep.ts).
   */
  sweptSince(view: SweepView): Promise<boolean>;
}

/** A sweep nobody needs to hear of: local deletes close the window themselves (removeIfOlder renames, then checks again). */
export const SILENT_SWEEP: Sweep = { checkpoint: async () => undefined, assertLive: () => undefined, end: async () => undefined };

/** Today's files: written temp + fsync + rename (writeFileAtomic), so crash-safe. */
export class LocalMetaStore implements MetaStore {
  constructor(readonly path: string) {}

  where(name: string): string {
    return join(this.path, name);
  }

  async assertEmpty(): Promise<void> {
    try {
      const st = await stat(this.path);
      if (!st.isDirectory()) throw badInput('REPO_NOT_EMPTY', `cannot create a repository at ${this.path}: it is not a directory`);
      if ((await readdir(this.path)).length > 0) {
        throw badInput(
          'REPO_NOT_EMPTY',
          `cannot create a repository at ${this.path}: the directory is not empty`,
          'choose a new or empty directory',
        );
      }
    } catch (err) {
      if (!isErrno(err, 'ENOENT')) throw err;
    }
  }

  async prepare(): Promise<void> {
    // Owner-only: an unencrypted chunk is a piece of a VM disk, and a manifest names the VM.
    await mkdir(this.path, { recursive: true, mode: PRIVATE_DIR_MODE });
    tightenMode(this.path);
    for (const d of [INDEXES_DIR, POINTS_DIR, LOCKS_DIR]) await mkdir(join(this.path, d), { recursive: true });
  }

  async read(name: string): Promise<Buffer | undefined> {
    try {
      return await readFile(this.where(name));
    } catch (err) {
      if (isErrno(err, 'ENOENT') || isErrno(err, 'ENOTDIR')) return undefined;
      throw err;
    }
  }

  async write(name: string, data: Buffer | string): Promise<void> {
    const file = this.where(name);
    await writeFileAtomic(dirname(file), file.slice(dirname(file).length + 1), data);
  }

  exists(name: string): Promise<boolean> {
    return stat(this.where(name)).then(
      () => true,
      () => false,
    );
  }

  touch(name: string): Promise<boolean> {
    const now = new Date();
    return utimes(this.where(name), now, now).then(
      () => true,
      () => false,
    );
  }

  async remove(name: string): Promise<boolean> {
    const file = this.where(name);
    try {
      await unlink(file);
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return false;
      throw err;
    }
    await fsyncDir(dirname(file));
    return true;
  }

  async list(dir: string): Promise<MetaEntry[]> {
    const out: MetaEntry[] = [];
    for (const name of (await readdir(this.where(dir))).sort()) {
      if (name.startsWith(TEMP_PREFIX)) continue;
      const st = await stat(join(this.where(dir), name)).catch(() => undefined);
      if (st?.isFile()) out.push({ name, size: st.size, mtimeMs: st.mtimeMs });
    }
    return out;
  }

  removeIfOlder(name: string, cutoffMs: number): Promise<number> {
    return removeIfOlder(this.where(name), cutoffMs);
  }

  async leftovers(beforeMs: number): Promise<Leftover[]> {
    const out: Leftover[] = [];
    for (const dir of [this.path, this.where(POINTS_DIR), this.where(INDEXES_DIR), this.where(LOCKS_DIR)]) {
      for (const name of await readdir(dir)) {
        if (!name.startsWith(TEMP_PREFIX)) continue;
        const st = await stat(join(dir, name)).catch(() => undefined);
        if (st && st.mtimeMs < beforeMs) out.push({ path: join(dir, name), size: st.size, mtimeMs: st.mtimeMs });
      }
    }
    return out;
  }

  async removeLeftover(leftover: Leftover): Promise<void> {
    await unlink(leftover.path).catch((err: unknown) => {
      if (!isErrno(err, 'ENOENT')) throw err;
    });
  }

  lock(kind: LockKind, purpose: string): Promise<RepoLock> {
    return acquireLock(this.where(LOCKS_DIR), this.path, kind, purpose);
  }

  liveHolders(): Promise<LockHolder[]> {
    return liveLocks(this.where(LOCKS_DIR));
  }

  async beginSweep(): Promise<Sweep> {
    return SILENT_SWEEP;
  }

  /** Never: a local shared lock carries no view, and local deletes need none. */
  async sweptSince(): Promise<boolean> {
    return false;
  }
}

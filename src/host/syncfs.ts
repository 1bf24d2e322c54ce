/**
 * syncfs(2) for Node, which has no binding for it: one call makes every
 * write to a file system durable (file data, new names, renames), whoever
 * wrote it. A repository at sync level `filesystem` (src/repo/sync-level.ts)
 * writes its chunks without an fsync each and calls this once per backup.
 *
 * Why `sync -f DIR` (coreutils 8.24+, which calls syncfs on DIR's file
 * system) and not something in-process:
 * - fsync on a directory fd is not a substitute: it makes that directory's
 *   entries durable, not the data of the files named in it (ext4 allocates
 *   delayed data at writeback, outside the journal commit an fsync forces),
 *   and XFS and btrfs give even less.
 * - fsync of every chunk file at the end, from the libuv pool, is still one
 *   journal commit and one device flush per file: the cost this replaces.
 * - sync(2) (Node could reach it through `sync` without -f) flushes every
 *   file system of the host, including busy VM disks on other devices.
 * - A native addon would need a compiler at install time.
 * The child costs one fork of node (20-30 ms on a loaded host, measured in
 * docs/backup.md, "Sync levels"), once per backup: far less than the fsyncs
 * it replaces. Since Linux 5.8 syncfs reports writeback errors
 * of the file system (EIO, ENOSPC), and `sync` exits non-zero with them.
 */
import { exec } from './exec.js';

/** How long a sync may take before it counts as failed: a flush of gigabytes of dirty data on a slow disk is minutes. */
const SYNC_TIMEOUT_MS = 15 * 60_000;

/**
 * Makes every write to the file system holding `dir` durable. Rejects with
 * an Error naming the command and what it said when it fails or is missing.
 */
export async function syncFilesystem(dir: string): Promise<void> {
  const r = await exec('sync', ['-f', dir], { timeoutMs: SYNC_TIMEOUT_MS });
  if (r.code === 0) return;
  const why = r.timedOut
    ? `timed out after ${SYNC_TIMEOUT_MS / 1000} s`
    : r.code === 127
      ? `cannot run it (${r.stderr.trim()}): install coreutils 8.24 or newer`
      : `exit ${r.code ?? r.signal}: ${r.stderr.trim()}`;
  throw new Error(`sync -f ${dir} failed: ${why}`);
}

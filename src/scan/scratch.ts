/**
 * Where the in-process reader puts the copies yara reads (src/scan/inprocess.ts).
 *
 * Yara's command line reads files by path, so a file read from the
 * repository is written once for it. On a disk file system every copy pays
 * block allocation, a journal and, for a slow scan, writeback; bench/scan.ts
 * measured creating, writing, closing and removing the copies in the state
 * directory at about 1.6 s of the scan thread's time for 2000 files. A
 * memory file system (the host's tmpfs at /dev/shm) makes them page-cache
 * copies only.
 *
 * Memory stays bounded: a file above MEMORY_FILE_MAX goes to the disk
 * scratch instead, and the scan engine holds at most two yara batches of
 * copies (src/scan/scan.ts). Both directories are private (0700, created by
 * mkdtemp), the copies carry sequence numbers only, and `dispose` removes
 * both. A process killed outright leaves its `restorelab-scan-*` directory in
 * /dev/shm until reboot (docs/operations.md).
 *
 * A memory copy yara has answered for is kept for the next file rather than
 * removed: tmpfs zeroes every page it allocates and frees it again on
 * unlink, and overwriting a kept file (then truncating it to its new size)
 * skips most of both (2000 copies of 1-256 KiB: 250 ms created and
 * removed, 150 ms reused). The kept files are bounded in number and bytes
 * (REUSE_FILES, REUSE_BYTES), live in the same private directory, and go
 * with it.
 */
import { closeSync, constants, ftruncateSync, mkdirSync, mkdtempSync, openSync, rmSync, statfsSync, writeSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';

/** Largest file copied into memory; larger ones go to the disk scratch. */
export const MEMORY_FILE_MAX = 16 * 1024 * 1024;
/** Memory copies kept for reuse, at most (files, and bytes they hold). */
const REUSE_FILES = 256;
const REUSE_BYTES = 64 * 1024 * 1024;
/** statfs(2) f_type of tmpfs (linux/magic.h). */
const TMPFS_MAGIC = 0x01021994;
const SHM = '/dev/shm';

/** One copy being written: a new file (never an existing one, never through a symlink), 0600. */
export interface ScratchCopy {
  path: string;
  write(bytes: Buffer): Promise<void>;
  /** A memory copy's write, done before it returns (the bytes may be reused right after); absent on disk. */
  writeNow?(bytes: Buffer): void;
  close(): Promise<void>;
  /** Removes the file (idempotent). */
  remove(): void;
}

export interface Scratch {
  /** Creates the copy named `name` (a sequence number) of a file of `size` bytes. */
  create(name: string, size: number): Promise<ScratchCopy>;
  /** Whether small copies are in memory (tmpfs). */
  readonly inMemory: boolean;
  dispose(): void;
}

const CREATE = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
/** A kept copy of our own, overwritten from its start. */
const REUSE = constants.O_WRONLY | constants.O_NOFOLLOW;

/** Memory copies yara is done with, kept for the next files (see the module comment). */
interface Kept {
  files: { path: string; bytes: number }[];
  bytes: number;
}

/**
 * In memory, synchronous calls: a tmpfs write is a memory copy, cheaper
 * than the round trip through libuv's thread pool (measured: the promise
 * calls cost the scan thread about 1 s per 2000 files). `reuse`: `path` is
 * a kept copy, overwritten and cut to its new length on close.
 */
function memoryCopy(path: string, kept: Kept, reuse: boolean): ScratchCopy {
  const fd = openSync(path, reuse ? REUSE : CREATE, 0o600);
  let closed = false;
  let removed = false;
  let length = 0;
  const writeNow = (bytes: Buffer): void => {
    for (let at = 0; at < bytes.length;) {
      const n = writeSync(fd, bytes, at, bytes.length - at, length);
      at += n;
      length += n;
    }
  };
  return {
    path,
    writeNow,
    write: async (bytes) => writeNow(bytes),
    close: async () => {
      if (closed) return;
      closed = true;
      try {
        if (reuse) ftruncateSync(fd, length);
      } finally {
        closeSync(fd);
      }
    },
    remove: () => {
      if (removed) return;
      removed = true;
      if (closed && kept.files.length < REUSE_FILES && kept.bytes + length <= REUSE_BYTES) {
        kept.files.push({ path, bytes: length });
        kept.bytes += length;
        return;
      }
      if (!closed) {
        closed = true;
        closeSync(fd);
      }
      rmSync(path, { force: true });
    },
  };
}

/** On disk, asynchronous calls: a write may wait for writeback, and the scan thread must not. */
async function diskCopy(path: string): Promise<ScratchCopy> {
  const fh = await open(path, CREATE, 0o600);
  let closed = false;
  return {
    path,
    write: async (bytes) => {
      await fh.write(bytes);
    },
    close: async () => {
      if (!closed) await fh.close();
      closed = true;
    },
    remove: () => rmSync(path, { force: true }),
  };
}

function isTmpfs(dir: string): boolean {
  try {
    return statfsSync(dir).type === TMPFS_MAGIC;
  } catch {
    return false;
  }
}

/**
 * Scratch below `diskDir` (created 0700), with small copies in a private
 * directory below `memoryRoot` (default /dev/shm) when that is a tmpfs;
 * `memoryRoot: false`: on disk only.
 */
export function openScratch(diskDir: string, opts: { memoryRoot?: string | false } = {}): Scratch {
  mkdirSync(diskDir, { recursive: true, mode: 0o700 });
  let memDir: string | undefined;
  const root = opts.memoryRoot ?? SHM;
  if (root !== false && isTmpfs(root)) {
    try {
      memDir = mkdtempSync(join(root, 'restorelab-scan-'));
    } catch {
      memDir = undefined;
    }
  }
  const kept: Kept = { files: [], bytes: 0 };
  return {
    create: async (name, size) => {
      if (memDir === undefined || size > MEMORY_FILE_MAX) return diskCopy(join(diskDir, name));
      const reuse = kept.files.pop();
      if (!reuse) return memoryCopy(join(memDir, name), kept, false);
      kept.bytes -= reuse.bytes;
      return memoryCopy(reuse.path, kept, true);
    },
    inMemory: memDir !== undefined,
    dispose: () => {
      if (memDir !== undefined) rmSync(memDir, { recursive: true, force: true });
      rmSync(diskDir, { recursive: true, force: true });
    },
  };
}

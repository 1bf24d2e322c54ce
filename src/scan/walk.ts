/**
 * Walking a mounted guest filesystem for scanning: every regular file below
 * the partition's root, and nothing else.
 *
 * - Symlinks are never followed (a guest's `/etc/x -> /etc/passwd` would
 *   otherwise scan the host's file, and the guest decides what we read):
 *   entries are typed by the directory (or `lstat`), and files are opened
 *   with O_NOFOLLOW, so a name swapped for a link fails instead of leading out.
 * - Another filesystem is never entered: a directory or file on a device
 *   other than the root's is left out.
 * - Names are Buffers: a guest name need not be valid UTF-8.
 *
 * Directories are read with opendir, one entry at a time, so memory stays
 * bounded by the depth of the tree, not its width.
 */
import { constants } from 'node:fs';
import { lstat, open, opendir } from 'node:fs/promises';
import { createHash } from 'node:crypto';

export interface WalkedFile {
  /** Host path of the file (below the mount). */
  path: Buffer;
  /** Path inside the partition, starting with "/". */
  guestPath: Buffer;
  size: number;
  /** Device of the partition (hashFile checks the open file is still on it). */
  dev: number;
}

const SLASH = Buffer.from('/');
const HASH_BUFFER_BYTES = 1024 * 1024;
/** Entries of a directory lstat'ed at once (bounded memory for wide directories). */
const STAT_GROUP = 64;

/** Yields every regular file below `root` (depth first), without following symlinks or crossing devices. */
export async function* walkRegularFiles(root: string): AsyncGenerator<WalkedFile> {
  const rootDev = (await lstat(root)).dev;
  const stack: { host: Buffer; guest: Buffer }[] = [{ host: Buffer.from(root), guest: Buffer.alloc(0) }];
  while (stack.length > 0) {
    const dir = stack.pop()!;
    const handle = await opendir(dir.host as unknown as string, { encoding: 'buffer' as BufferEncoding });
    const subdirs: { host: Buffer; guest: Buffer }[] = [];
    let pending: { host: Buffer; guest: Buffer; isDir: boolean; isFile: boolean }[] = [];
    // lstat a group of entries at once: one at a time, a cold walk through a FUSE-backed loop mount waits on each in turn.
    const settle = async function* (): AsyncGenerator<WalkedFile> {
      const stats = await Promise.all(pending.map((e) => (e.isDir || e.isFile ? lstat(e.host) : undefined)));
      for (const [i, e] of pending.entries()) {
        const st = stats[i];
        if (!st || st.dev !== rootDev) continue;
        if (e.isDir) {
          if (st.isDirectory()) subdirs.push({ host: e.host, guest: e.guest });
        } else if (st.isFile()) {
          yield { path: e.host, guestPath: e.guest, size: st.size, dev: rootDev };
        }
      }
      pending = [];
    };
    for await (const ent of handle) {
      const name = ent.name as unknown as Buffer;
      const host = Buffer.concat([dir.host, SLASH, name]);
      const guest = Buffer.concat([dir.guest, SLASH, name]);
      let isDir = ent.isDirectory();
      let isFile = ent.isFile();
      if (
        !isDir &&
        !isFile &&
        !ent.isSymbolicLink() &&
        !ent.isFIFO() &&
        !ent.isSocket() &&
        !ent.isCharacterDevice() &&
        !ent.isBlockDevice()
      ) {
        // DT_UNKNOWN: the filesystem did not say; ask without following.
        const st = await lstat(host);
        isDir = st.isDirectory();
        isFile = st.isFile();
      }
      // Checked again by lstat (not followed, same device) before it counts.
      if (isDir || isFile) pending.push({ host, guest, isDir, isFile });
      if (pending.length >= STAT_GROUP) yield* settle();
    }
    yield* settle();
    // Reversed so the walk visits subdirectories in directory order.
    for (let i = subdirs.length - 1; i >= 0; i--) stack.push(subdirs[i]!);
  }
}

/**
 * SHA-256 of a regular file, streamed in 1 MiB reads. Opened with O_NOFOLLOW
 * and checked again after open (a regular file on `dev`), so what is hashed is
 * what the walk saw; yara later reads the same read-only mount.
 */
export async function hashFile(path: Buffer, dev?: number): Promise<string> {
  const fh = await open(path as unknown as string, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  try {
    const st = await fh.stat();
    if (!st.isFile() || (dev !== undefined && st.dev !== dev))
      throw Object.assign(new Error('not a regular file of this filesystem'), { code: 'EINVAL' });
    const h = createHash('sha256');
    const buf = Buffer.allocUnsafe(HASH_BUFFER_BYTES);
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      h.update(buf.subarray(0, bytesRead));
    }
    return h.digest('hex');
  } finally {
    await fh.close();
  }
}

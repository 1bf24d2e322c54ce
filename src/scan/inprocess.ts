/**
 * Scan targets read in-process: the point's disks are read from the
 * repository through the same seams a publication uses (DiskSource, the
 * DecodePool's worker threads, PublishedDisk's chunk cache and readahead),
 * partitions come from our own table parser and superblock probe
 * (src/flr), and an ext2/3/4 partition the in-process reader (src/fsread)
 * accepts is walked without a holder process, a loop device or a mount.
 *
 * Every other partition is named in `needMount`, and the caller mounts it;
 * partitions nobody reads (swap, unknown) are skipped with the same
 * words the mount path uses.
 *
 * Yara reads files by path, so a file's bytes are copied into the scan's
 * scratch (src/scan/scratch.ts: 0700 directories of its own, in memory for
 * small files) under a sequence number while they are hashed: a guest's name
 * never becomes a host path, so `..`, `/` or a very long name cannot lead
 * out of it. Copies are removed once yara answered.
 */
import { createHash } from 'node:crypto';
import { RestorelabError } from '../errors.js';
import type { RepositoryReader, RestorePoint } from '../repo/contract.js';
import { DecodePool } from '../disk/decode-pool.js';
import { ChunkCache } from '../disk/chunk-cache.js';
import { PublishedDisk } from '../disk/published-disk.js';
import { readPartitionTable, type ReadAt } from '../flr/partitions.js';
import { identifyFilesystem, PROBE_BYTES } from '../flr/filesystems.js';
import { Ext4Volume, type ByteVisitor, type Inode, type Extent as FsExtent } from '../fsread/ext4.js';
import type { Extent } from './extents.js';
import type { ReadFile, ScanTarget, TargetFile } from './targets.js';
import { openScratch, type Scratch } from './scratch.js';

/** Bytes read (and written to the scratch copy) at a time. */
const READ_BYTES = 1024 * 1024;
/** Decoded chunks kept in memory: readahead of a few files in flight. */
const CACHE_BYTES = 64 * 1024 * 1024;
/** Decode worker threads, as a publication has. */
const DECODE_WORKERS = 2;

interface ReaderFile extends TargetFile {
  inode: Inode;
  fsExtents?: FsExtent[];
}

export interface InProcessPlan {
  /** Partitions read in-process. */
  targets: ScanTarget[];
  /** Partitions read in-process or skipped; the others need a mount ("disk\0partition"). */
  handled: Set<string>;
  /** Whether some partition needs the kernel (another filesystem, or an ext feature the reader refuses). */
  needMount: boolean;
  /** Why each partition that needs a mount does (for the scan's output). */
  reasons: Map<string, string>;
  close(): Promise<void>;
}

export function partitionKey(disk: string, partition: number): string {
  return `${disk}\0${partition}`;
}

/**
 * Opens every disk of `point` in-process and plans its partitions; undefined
 * when a disk has no partition or filesystem we recognise (the mount path
 * says why, with its own error).
 */
export async function planInProcess(o: {
  repo: RepositoryReader;
  point: RestorePoint;
  scratch: string;
  keyFile?: string;
  /** Where small copies go (src/scan/scratch.ts; default the host's /dev/shm); false: on disk only, below `scratch`. */
  memoryScratch?: string | false;
}): Promise<InProcessPlan | undefined> {
  const scratch = openScratch(o.scratch, o.memoryScratch !== undefined ? { memoryRoot: o.memoryScratch } : {});
  const pool = new DecodePool(o.repo.path, { size: DECODE_WORKERS, ...(o.keyFile ? { keyFile: o.keyFile } : {}) });
  const cache = new ChunkCache(CACHE_BYTES);
  const plan: InProcessPlan = {
    targets: [],
    handled: new Set(),
    needMount: false,
    reasons: new Map(),
    close: async () => {
      try {
        await pool.close();
      } finally {
        scratch.dispose();
      }
    },
  };
  let seq = 0;
  try {
    for (const d of [...o.point.disks].sort((a, b) => a.name.localeCompare(b.name))) {
      const source = pool.wrap(await o.repo.openDisk(o.point.id, d.name), o.point.id, d.name);
      const disk = new PublishedDisk(source, { cache, name: `${o.point.id}/${d.name}` });
      const read: ReadAt = (off, len) => disk.read(off, Math.max(0, Math.min(len, disk.size - off)));
      const table = await readPartitionTable(read, disk.size, async () => identifyFilesystem(await read(0, PROBE_BYTES)) !== undefined);
      if (table.partitions.length === 0) {
        await plan.close();
        return undefined;
      }
      for (const p of table.partitions) {
        const at: ReadAt = (off, len) => read(p.offset + off, Math.max(0, Math.min(len, p.size - off)));
        const visit: ByteVisitor = (off, len, use) => disk.visit(p.offset + off, Math.max(0, Math.min(len, p.size - off)), use);
        const fs = identifyFilesystem(await at(0, PROBE_BYTES));
        const key = partitionKey(d.name, p.number);
        if (fs?.fstype === 'LVM2_member') {
          // Its logical volumes are found and mounted by file-level restore (src/flr/lvm.ts): never skipped unread.
          plan.needMount = true;
          plan.reasons.set(key, 'LVM physical volume: its logical volumes are read through mounts');
          continue;
        }
        if (!fs || !fs.driver) {
          plan.handled.add(key);
          plan.targets.push(
            skippedTarget(d.name, p.number, fs?.fstype ?? 'unknown', fs ? `unsupported filesystem ${fs.fstype}` : 'unknown filesystem'),
          );
          continue;
        }
        if (fs.driver !== 'ext4') {
          plan.needMount = true;
          plan.reasons.set(key, `${fs.fstype}: read through a mount`);
          continue;
        }
        let vol: Ext4Volume;
        try {
          vol = await Ext4Volume.open(at, p.size);
        } catch (err) {
          if (!(err instanceof RestorelabError) || (err.code !== 'EXT4_UNSUPPORTED' && err.code !== 'EXT4_CORRUPT')) throw err;
          plan.needMount = true;
          plan.reasons.set(key, err.message);
          continue;
        }
        plan.handled.add(key);
        plan.targets.push(readerTarget(d.name, p.number, p.offset, vol, visit, scratch, () => seq++));
      }
    }
    // Nothing readable at all: the mount path names the problem with its own error.
    if (plan.targets.every((t) => t.skipped) && !plan.needMount) {
      await plan.close();
      return undefined;
    }
    return plan;
  } catch (err) {
    await plan.close();
    throw err;
  }
}

function skippedTarget(disk: string, partition: number, fstype: string, skipped: string): ScanTarget {
  return {
    disk,
    partition,
    fstype,
    skipped,
    via: 'reader',
    files: async function* () {},
    extents: async () => [],
    read: () => Promise.reject(new Error('a skipped partition has no files')),
    hash: () => Promise.reject(new Error('a skipped partition has no files')),
  };
}

function readerTarget(
  disk: string,
  partition: number,
  offset: number,
  vol: Ext4Volume,
  visit: ByteVisitor,
  scratch: Scratch,
  next: () => number,
): ScanTarget {
  const fsExtents = async (f: ReaderFile): Promise<FsExtent[]> => (f.fsExtents ??= await vol.extents(f.inode));
  const t: ScanTarget<ReaderFile> = {
    disk,
    partition,
    offset,
    fstype: vol.fstype,
    via: 'reader',
    files: async function* () {
      for await (const e of vol.walk()) if (e.inode.type === 'file') yield { guestPath: e.path, size: e.inode.size, inode: e.inode };
    },
    extents: async (files) => {
      const out: (Extent[] | null)[] = [];
      for (const f of files) {
        const list = await fsExtents(f);
        // Uninitialized extents are not plain data at `physical`: such a file is read (as filefrag's "unwritten" is).
        out.push(list.some((e) => e.zero) ? null : list.map((e) => ({ logical: e.logical, physical: e.physical, length: e.length })));
      }
      return out;
    },
    hash: async (f) => {
      const list = await fsExtents(f);
      const h = createHash('sha256');
      await vol.visitFile(f.inode, list, 0, f.size, (piece) => void h.update(piece), visit);
      return h.digest('hex');
    },
    read: async (f): Promise<ReadFile> => {
      const list = await fsExtents(f);
      const out = await scratch.create(String(next()), f.size);
      try {
        const h = createHash('sha256');
        const now = out.writeNow;
        if (now) {
          // A memory copy: each piece is hashed and written straight from the chunk cache, with no buffer of its own.
          await vol.visitFile(
            f.inode,
            list,
            0,
            f.size,
            (piece) => {
              h.update(piece);
              now(piece);
            },
            visit,
          );
          await out.close();
          return { sha: h.digest('hex'), path: Buffer.from(out.path), release: () => out.remove() };
        }
        // The next piece is read while this one is hashed and written.
        const piece = (at: number): Promise<Buffer> => {
          const p = vol.readFile(f.inode, list, at, READ_BYTES);
          // Awaited below; a failure while the previous piece is written must not count as unhandled.
          p.catch(() => undefined);
          return p;
        };
        let ahead = piece(0);
        for (let at = 0; at < f.size; at += READ_BYTES) {
          const buf = await ahead;
          if (at + READ_BYTES < f.size) ahead = piece(at + READ_BYTES);
          h.update(buf);
          await out.write(buf);
        }
        await out.close();
        return { sha: h.digest('hex'), path: Buffer.from(out.path), release: () => out.remove() };
      } catch (err) {
        await out.close().catch(() => undefined);
        out.remove();
        throw err;
      }
    },
  };
  return t as unknown as ScanTarget;
}

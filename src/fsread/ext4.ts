/**
 * A strict, read-only ext2/ext3/ext4 reader over a random-access byte source:
 * no kernel, no mount, no loop device (issue 17: scanning a point without the
 * fixed costs of mounting it).
 *
 * Words (the kernel's, Documentation/filesystems/ext4/):
 * - *volume*: one ext filesystem, the bytes of one partition.
 * - *block*: the allocation unit (1, 2, 4 ... 64 KiB); block numbers are
 *   relative to the start of the volume.
 * - *inode*: a file's record (mode, size, where its bytes are); number 2 is
 *   the root directory.
 * - *extent*: `logical` (offset in the file), `physical` (offset on the
 *   volume) and `length`, all in bytes here; `zero` marks an uninitialized
 *   (preallocated) extent, which reads as zeros whatever the disk holds.
 *
 * Every on-disk value is hostile (the guest wrote it): each offset is checked
 * against the volume, each count against what its block can hold, extent
 * trees are depth-capped, extents per file are capped, the walk caps the
 * directory depth and refuses a directory reached twice, and nothing is
 * allocated from an on-disk length without a bound. A volume that breaks a
 * rule fails with EXT4_CORRUPT; one that uses a feature this reader does not
 * handle is refused up front with EXT4_UNSUPPORTED, so the caller can fall
 * back to the kernel (a mount).
 */
import { badInput, RestorelabError } from '../errors.js';

/** Reads `length` bytes at `offset` of the volume; fewer past its end. */
export type ByteSource = (offset: number, length: number) => Promise<Buffer>;
/**
 * Hands the bytes at `offset` to `use` in order, piece by piece, without
 * copying them (PublishedDisk.visit); resolves to how many were visited.
 */
export type ByteVisitor = (offset: number, length: number, use: (piece: Buffer) => void) => Promise<number>;

/** Zeros for holes and uninitialized extents in visitFile (handed out, never written). */
const ZEROS = Buffer.alloc(64 * 1024);

export interface Extent {
  logical: number;
  physical: number;
  length: number;
  /** Uninitialized: reads as zeros. */
  zero?: boolean;
}

export type FileType = 'file' | 'dir' | 'symlink' | 'other';

export interface Inode {
  ino: number;
  mode: number;
  type: FileType;
  size: number;
  flags: number;
  /** The 60 bytes of i_block: extent tree root, block map, or a short symlink's target. */
  block: Buffer;
}

export interface DirEntry {
  name: Buffer;
  ino: number;
}

export interface WalkedEntry {
  /** Path inside the volume, starting with "/". */
  path: Buffer;
  inode: Inode;
}

const SUPERBLOCK_OFFSET = 1024;
const SUPERBLOCK_BYTES = 1024;
const EXT_MAGIC = 0xef53;
const ROOT_INO = 2;
const EXTENT_MAGIC = 0xf30a;

/** INCOMPAT features read here (anything else is refused). */
const INCOMPAT = {
  FILETYPE: 0x2,
  /** Needs a journal replay: read as it is, like a `noload` mount. */
  RECOVER: 0x4,
  EXTENTS: 0x40,
  BIT64: 0x80,
  /** Multiple-mount protection: only matters to writers. */
  MMP: 0x100,
  FLEX_BG: 0x200,
  /** Large extended attributes in inodes: xattrs are not read. */
  EA_INODE: 0x400,
  CSUM_SEED: 0x2000,
  /** Three-level htree: directories are read as linear leaf blocks anyway. */
  LARGEDIR: 0x4000,
  /** Case-insensitive names: stored as given, read linearly. */
  CASEFOLD: 0x20000,
} as const;
const INCOMPAT_HANDLED = Object.values(INCOMPAT).reduce((a, b) => a | b, 0);
const INCOMPAT_NAMES: Record<number, string> = {
  0x1: 'compression',
  0x8: 'journal_dev',
  0x10: 'meta_bg',
  0x1000: 'dirdata',
  0x8000: 'inline_data',
  0x10000: 'encrypt',
};
/** RO_COMPAT features that change where data is (the others only matter to writers or fsck). */
const RO_COMPAT_BIGALLOC = 0x200;

/** Inode flags. */
const FL = {
  ENCRYPT: 0x800,
  INDEX: 0x1000,
  EXTENTS: 0x80000,
  INLINE_DATA: 0x10000000,
  VERITY: 0x100000,
} as const;

const S_IFMT = 0xf000;
const S_IFREG = 0x8000;
const S_IFDIR = 0x4000;
const S_IFLNK = 0xa000;

/** Bounds a hostile volume cannot push us past. */
export const LIMITS = {
  /** Extent tree depth (the kernel's own limit is 5). */
  treeDepth: 5,
  /** Extents of one file. */
  extentsPerFile: 1 << 20,
  /** Bytes of one directory. */
  dirBytes: 256 * 1024 * 1024,
  /** Directory depth of a walk. */
  walkDepth: 256,
  /** Bytes of a symlink target. */
  symlinkBytes: 4096,
};

export function corrupt(what: string): RestorelabError {
  return badInput(
    'EXT4_CORRUPT',
    `the ext filesystem is damaged or hostile: ${what}`,
    'the restore point may hold a damaged filesystem: run `restorelab verify --repo R <point>`, or pick an earlier point',
  );
}

function unsupported(what: string): RestorelabError {
  return new RestorelabError('EXT4_UNSUPPORTED', `the in-process ext reader does not handle ${what}`, {
    hint: 'scans and file-level restore fall back to mounting the partition with the kernel',
  });
}

export class Ext4Volume {
  private readonly descriptors = new Map<number, number>();

  private constructor(
    private readonly read: ByteSource,
    /** Bytes of the volume (the partition). */
    readonly size: number,
    readonly blockSize: number,
    readonly blocksCount: number,
    private readonly firstDataBlock: number,
    private readonly blocksPerGroup: number,
    private readonly inodesPerGroup: number,
    readonly inodesCount: number,
    private readonly inodeSize: number,
    private readonly descSize: number,
    private readonly groups: number,
    private readonly fileType: boolean,
    readonly fstype: 'ext2' | 'ext3' | 'ext4',
  ) {}

  /** Reads and checks the superblock; refuses features not handled here (EXT4_UNSUPPORTED). */
  static async open(read: ByteSource, size: number): Promise<Ext4Volume> {
    const sb = await read(SUPERBLOCK_OFFSET, SUPERBLOCK_BYTES);
    if (sb.length < SUPERBLOCK_BYTES || sb.readUInt16LE(56) !== EXT_MAGIC) throw corrupt('no ext superblock (magic 0xEF53 at byte 1080)');
    const rev = sb.readUInt32LE(76);
    const compat = sb.readUInt32LE(92);
    const incompat = rev >= 1 ? sb.readUInt32LE(96) : 0;
    const roCompat = rev >= 1 ? sb.readUInt32LE(100) : 0;
    const unknown = incompat & ~INCOMPAT_HANDLED;
    if (unknown !== 0) {
      const names = Object.entries(INCOMPAT_NAMES)
        .filter(([bit]) => unknown & Number(bit))
        .map(([, n]) => n);
      throw unsupported(`the incompatible feature(s) ${names.length > 0 ? names.join(', ') : `0x${unknown.toString(16)}`}`);
    }
    if (roCompat & RO_COMPAT_BIGALLOC) throw unsupported('the bigalloc feature');
    const logBlock = sb.readUInt32LE(24);
    if (logBlock > 6) throw corrupt(`block size 1024 << ${logBlock}`);
    const blockSize = 1024 << logBlock;
    const bit64 = (incompat & INCOMPAT.BIT64) !== 0;
    const blocksCount = sb.readUInt32LE(4) + (bit64 ? sb.readUInt32LE(0x150) * 2 ** 32 : 0);
    const firstDataBlock = sb.readUInt32LE(20);
    const blocksPerGroup = sb.readUInt32LE(32);
    const inodesPerGroup = sb.readUInt32LE(40);
    const inodesCount = sb.readUInt32LE(0);
    const inodeSize = rev >= 1 ? sb.readUInt16LE(88) : 128;
    const descSize = bit64 ? sb.readUInt16LE(0xfe) : 32;
    if (blocksCount * blockSize > size || blocksCount === 0)
      throw corrupt(`${blocksCount} blocks of ${blockSize} bytes do not fit the ${size}-byte partition`);
    if (firstDataBlock !== (blockSize === 1024 ? 1 : 0)) throw corrupt(`first data block ${firstDataBlock}`);
    if (blocksPerGroup === 0 || blocksPerGroup > blockSize * 8) throw corrupt(`${blocksPerGroup} blocks per group`);
    if (inodesPerGroup === 0 || inodesPerGroup > blockSize * 8) throw corrupt(`${inodesPerGroup} inodes per group`);
    if (inodeSize < 128 || inodeSize > blockSize || (inodeSize & (inodeSize - 1)) !== 0) throw corrupt(`inode size ${inodeSize}`);
    if (descSize < 32 || descSize > 1024 || (descSize & (descSize - 1)) !== 0 || (bit64 && descSize < 64))
      throw corrupt(`group descriptor size ${descSize}`);
    const groups = Math.ceil((blocksCount - firstDataBlock) / blocksPerGroup);
    if (groups * inodesPerGroup < inodesCount || inodesCount < ROOT_INO) throw corrupt(`${inodesCount} inodes in ${groups} groups`);
    const fstype = incompat & (INCOMPAT.EXTENTS | INCOMPAT.BIT64 | INCOMPAT.FLEX_BG) ? 'ext4' : compat & 0x4 ? 'ext3' : 'ext2';
    return new Ext4Volume(
      read,
      size,
      blockSize,
      blocksCount,
      firstDataBlock,
      blocksPerGroup,
      inodesPerGroup,
      inodesCount,
      inodeSize,
      descSize,
      groups,
      (incompat & INCOMPAT.FILETYPE) !== 0,
      fstype,
    );
  }

  /** Exactly `length` bytes at `offset` of the volume, or EXT4_CORRUPT. */
  private async bytes(offset: number, length: number, what: string): Promise<Buffer> {
    if (!Number.isSafeInteger(offset) || offset < 0 || offset + length > this.blocksCount * this.blockSize)
      throw corrupt(`${what} at byte ${offset} lies outside the filesystem`);
    const b = await this.read(offset, length);
    if (b.length < length) throw corrupt(`${what} at byte ${offset} lies past the end of the partition`);
    return b;
  }

  private checkBlock(block: number, count: number, what: string): void {
    if (!Number.isSafeInteger(block) || block < this.firstDataBlock || block + count > this.blocksCount || count < 0)
      throw corrupt(`${what}: blocks ${block}+${count} outside the filesystem`);
  }

  /** Block number of the inode table of `group`. */
  private async inodeTable(group: number): Promise<number> {
    const hit = this.descriptors.get(group);
    if (hit !== undefined) return hit;
    const gdt = (this.firstDataBlock + 1) * this.blockSize;
    const d = await this.bytes(gdt + group * this.descSize, this.descSize, `group descriptor ${group}`);
    const table = d.readUInt32LE(8) + (this.descSize >= 64 ? d.readUInt32LE(0x28) * 2 ** 32 : 0);
    const tableBlocks = Math.ceil((this.inodesPerGroup * this.inodeSize) / this.blockSize);
    this.checkBlock(table, tableBlocks, `inode table of group ${group}`);
    this.descriptors.set(group, table);
    return table;
  }

  async inode(ino: number): Promise<Inode> {
    if (!Number.isInteger(ino) || ino < 1 || ino > this.inodesCount) throw corrupt(`inode number ${ino}`);
    const group = Math.floor((ino - 1) / this.inodesPerGroup);
    const index = (ino - 1) % this.inodesPerGroup;
    const table = await this.inodeTable(group);
    const raw = await this.bytes(table * this.blockSize + index * this.inodeSize, 128, `inode ${ino}`);
    const mode = raw.readUInt16LE(0);
    const fmt = mode & S_IFMT;
    const type: FileType = fmt === S_IFREG ? 'file' : fmt === S_IFDIR ? 'dir' : fmt === S_IFLNK ? 'symlink' : 'other';
    const size = raw.readUInt32LE(4) + raw.readUInt32LE(108) * 2 ** 32;
    if (!Number.isSafeInteger(size)) throw corrupt(`inode ${ino} size`);
    return { ino, mode, type, size, flags: raw.readUInt32LE(32), block: Buffer.from(raw.subarray(40, 100)) };
  }

  /**
   * Where the file's bytes lie, sorted by `logical`; blocks not listed are
   * holes. Extent trees and ext2/3 block maps alike; refuses inline data and
   * encrypted or verity files (their bytes are not plain blocks).
   */
  async extents(inode: Inode): Promise<Extent[]> {
    if (inode.flags & FL.INLINE_DATA) throw unsupported(`inline data (inode ${inode.ino})`);
    if (inode.flags & FL.ENCRYPT) throw unsupported(`encrypted files (inode ${inode.ino})`);
    const out: Extent[] = [];
    if (inode.flags & FL.EXTENTS) await this.extentNode(inode, inode.block, LIMITS.treeDepth, out, { nodes: 0 });
    else await this.blockMap(inode, out);
    // Nothing past the file's size: a hostile extent may claim more.
    const sizeBlocks = Math.ceil(inode.size / this.blockSize);
    let prevEnd = 0;
    const kept: Extent[] = [];
    for (const e of out) {
      if (e.logical < prevEnd) throw corrupt(`inode ${inode.ino}: overlapping extents`);
      prevEnd = e.logical + e.length;
      const lb = e.logical / this.blockSize;
      if (lb >= sizeBlocks) continue;
      const blocks = Math.min(e.length / this.blockSize, sizeBlocks - lb);
      kept.push({ ...e, length: blocks * this.blockSize });
    }
    return kept;
  }

  private async extentNode(inode: Inode, node: Buffer, depthLeft: number, out: Extent[], seen: { nodes: number }): Promise<void> {
    if (node.length < 12 || node.readUInt16LE(0) !== EXTENT_MAGIC) throw corrupt(`inode ${inode.ino}: bad extent header`);
    const entries = node.readUInt16LE(2);
    const max = node.readUInt16LE(4);
    const depth = node.readUInt16LE(6);
    if (entries > max || 12 + max * 12 > node.length) throw corrupt(`inode ${inode.ino}: extent node claims ${entries}/${max} entries`);
    if (depth > depthLeft) throw corrupt(`inode ${inode.ino}: extent tree deeper than ${LIMITS.treeDepth}`);
    for (let i = 0; i < entries; i++) {
      const e = 12 + i * 12;
      const logical = node.readUInt32LE(e);
      if (depth === 0) {
        let len = node.readUInt16LE(e + 4);
        const zero = len > 32768;
        if (zero) len -= 32768;
        const start = node.readUInt16LE(e + 6) * 2 ** 32 + node.readUInt32LE(e + 8);
        if (len === 0) throw corrupt(`inode ${inode.ino}: empty extent`);
        this.checkBlock(start, len, `inode ${inode.ino} extent`);
        if (out.length >= LIMITS.extentsPerFile) throw corrupt(`inode ${inode.ino}: more than ${LIMITS.extentsPerFile} extents`);
        const ext: Extent = { logical: logical * this.blockSize, physical: start * this.blockSize, length: len * this.blockSize };
        if (zero) ext.zero = true;
        const last = out[out.length - 1];
        // Adjacent runs merge, as FIEMAP reports them (the file map compares lists).
        if (last && !zero && !last.zero && last.logical + last.length === ext.logical && last.physical + last.length === ext.physical)
          last.length += ext.length;
        else out.push(ext);
      } else {
        const leaf = node.readUInt16LE(e + 8) * 2 ** 32 + node.readUInt32LE(e + 4);
        this.checkBlock(leaf, 1, `inode ${inode.ino} extent index`);
        if (++seen.nodes > LIMITS.extentsPerFile) throw corrupt(`inode ${inode.ino}: too many extent nodes`);
        const child = await this.bytes(leaf * this.blockSize, this.blockSize, `inode ${inode.ino} extent node`);
        if (child.readUInt16LE(6) !== depth - 1)
          throw corrupt(`inode ${inode.ino}: extent node depth ${child.readUInt16LE(6)} under ${depth}`);
        await this.extentNode(inode, child, depth - 1, out, seen);
      }
    }
  }

  /** ext2/3 block map: 12 direct pointers, then single, double and triple indirect blocks. */
  private async blockMap(inode: Inode, out: Extent[]): Promise<void> {
    const bs = this.blockSize;
    const per = bs / 4;
    const sizeBlocks = Math.ceil(inode.size / bs);
    // A file cannot hold more blocks than the filesystem: bounds the work of pointers that repeat.
    let budget = this.blocksCount;
    const add = (logicalBlock: number, block: number): void => {
      if (block === 0 || logicalBlock >= sizeBlocks) return;
      this.checkBlock(block, 1, `inode ${inode.ino} block map`);
      const last = out[out.length - 1];
      if (last && last.logical + last.length === logicalBlock * bs && last.physical + last.length === block * bs) {
        last.length += bs;
        return;
      }
      if (out.length >= LIMITS.extentsPerFile) throw corrupt(`inode ${inode.ino}: more than ${LIMITS.extentsPerFile} extents`);
      out.push({ logical: logicalBlock * bs, physical: block * bs, length: bs });
    };
    const indirect = async (block: number, level: number, first: number): Promise<void> => {
      if (block === 0 || first >= sizeBlocks) return;
      this.checkBlock(block, 1, `inode ${inode.ino} indirect block`);
      if ((budget -= 1) < 0) throw corrupt(`inode ${inode.ino}: block map larger than the filesystem`);
      const b = await this.bytes(block * bs, bs, `inode ${inode.ino} indirect block`);
      const span = per ** (level - 1);
      for (let i = 0; i < per; i++) {
        const p = b.readUInt32LE(i * 4);
        if (level === 1) {
          if (p !== 0 && (budget -= 1) < 0) throw corrupt(`inode ${inode.ino}: block map larger than the filesystem`);
          add(first + i, p);
        } else await indirect(p, level - 1, first + i * span);
      }
    };
    for (let i = 0; i < 12; i++) add(i, inode.block.readUInt32LE(i * 4));
    await indirect(inode.block.readUInt32LE(48), 1, 12);
    await indirect(inode.block.readUInt32LE(52), 2, 12 + per);
    await indirect(inode.block.readUInt32LE(56), 3, 12 + per + per * per);
  }

  /**
   * Reads `length` bytes of the file at `offset` (clamped to its size):
   * holes and uninitialized extents read as zeros.
   */
  async readFile(inode: Inode, extents: readonly Extent[], offset: number, length: number): Promise<Buffer> {
    const end = Math.min(inode.size, offset + length);
    if (end <= offset) return Buffer.alloc(0);
    // The first extent that ends after `offset` (extents are sorted).
    let lo = 0;
    let hi = extents.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      const e = extents[mid]!;
      if (e.logical + e.length <= offset) lo = mid + 1;
      else hi = mid;
    }
    // One data extent holds the whole range (most reads): the disk's buffer (the caller's own) is the answer, with no
    // second buffer to zero and copy into; a scan spends its time on exactly these reads.
    const one = extents[lo];
    if (one && !one.zero && one.logical <= offset && one.logical + one.length >= end)
      return (await this.bytes(one.physical + (offset - one.logical), end - offset, `inode ${inode.ino} data`)).subarray(0, end - offset);
    const out = Buffer.alloc(end - offset);
    const reads: Promise<void>[] = [];
    for (let i = lo; i < extents.length; i++) {
      const e = extents[i]!;
      if (e.logical >= end) break;
      if (e.zero) continue;
      const from = Math.max(offset, e.logical);
      const to = Math.min(end, e.logical + e.length);
      reads.push(
        this.bytes(e.physical + (from - e.logical), to - from, `inode ${inode.ino} data`).then((b) => {
          b.copy(out, from - offset);
        }),
      );
    }
    await Promise.all(reads);
    return out;
  }

  /**
   * Hands the file's bytes [offset, offset + length) (clamped to its size)
   * to `use` in order, as readFile would return them (holes and
   * uninitialized extents as zeros), without copying them when `visit` reads
   * the volume (else through readFile's buffers). `use` runs synchronously
   * and must not keep a piece.
   */
  async visitFile(
    inode: Inode,
    extents: readonly Extent[],
    offset: number,
    length: number,
    use: (piece: Buffer) => void,
    visit?: ByteVisitor,
  ): Promise<void> {
    const end = Math.min(inode.size, offset + length);
    if (!visit) {
      if (end > offset) use(await this.readFile(inode, extents, offset, end - offset));
      return;
    }
    const zeros = (n: number): void => {
      for (let z = 0; z < n; z += ZEROS.length) use(ZEROS.subarray(0, Math.min(ZEROS.length, n - z)));
    };
    let at = offset;
    for (const e of extents) {
      if (at >= end) break;
      if (e.logical + e.length <= at) continue;
      const from = Math.max(at, e.logical);
      const to = Math.min(end, e.logical + e.length);
      if (from > at) zeros(from - at);
      if (e.zero) zeros(to - from);
      else {
        const physical = e.physical + (from - e.logical);
        const what = `inode ${inode.ino} data`;
        if (!Number.isSafeInteger(physical) || physical < 0 || physical + (to - from) > this.blocksCount * this.blockSize)
          throw corrupt(`${what} at byte ${physical} lies outside the filesystem`);
        if ((await visit(physical, to - from, use)) < to - from)
          throw corrupt(`${what} at byte ${physical} lies past the end of the partition`);
      }
      at = to;
    }
    if (at < end) zeros(end - at);
  }

  /** A symlink's target bytes (short ones live in the inode itself). */
  async readlink(inode: Inode): Promise<Buffer> {
    if (inode.type !== 'symlink') throw corrupt(`inode ${inode.ino} is not a symlink`);
    if (inode.size > LIMITS.symlinkBytes) throw corrupt(`inode ${inode.ino}: symlink of ${inode.size} bytes`);
    if (inode.size < 60 && !(inode.flags & (FL.EXTENTS | FL.INLINE_DATA))) return Buffer.from(inode.block.subarray(0, inode.size));
    return this.readFile(inode, await this.extents(inode), 0, inode.size);
  }

  /** The entries of a directory, `.` and `..` left out, in on-disk order. */
  async *readDir(inode: Inode): AsyncGenerator<DirEntry> {
    if (inode.type !== 'dir') throw corrupt(`inode ${inode.ino} is not a directory`);
    if (inode.size > LIMITS.dirBytes) throw corrupt(`directory inode ${inode.ino} of ${inode.size} bytes`);
    if (inode.size % this.blockSize !== 0) throw corrupt(`directory inode ${inode.ino} size ${inode.size} is not whole blocks`);
    const extents = await this.extents(inode);
    const bs = this.blockSize;
    const htree = (inode.flags & FL.INDEX) !== 0;
    for (let at = 0; at < inode.size; at += bs) {
      const block = await this.readFile(inode, extents, at, bs);
      let off = 0;
      let n = 0;
      while (off < bs) {
        if (off + 8 > bs) throw corrupt(`directory inode ${inode.ino}: entry header past its block`);
        const ino = block.readUInt32LE(off);
        let recLen = block.readUInt16LE(off + 4);
        if (bs >= 65536 && (recLen === 65535 || recLen === 0)) recLen = bs;
        const nameLen = this.fileType ? block[off + 6]! : block.readUInt16LE(off + 6);
        if (recLen < 12 || recLen % 4 !== 0 || off + recLen > bs || 8 + nameLen > recLen)
          throw corrupt(`directory inode ${inode.ino}: bad entry (length ${recLen}, name ${nameLen}) at byte ${at + off}`);
        n++;
        if (ino !== 0) {
          const name = block.subarray(off + 8, off + 8 + nameLen);
          const dot = (nameLen === 1 && name[0] === 0x2e) || (nameLen === 2 && name[0] === 0x2e && name[1] === 0x2e);
          if (!dot) {
            if (nameLen === 0 || name.includes(0x2f) || name.includes(0))
              throw corrupt(`directory inode ${inode.ino}: an entry name holds '/' or NUL, or is empty`);
            if (ino > this.inodesCount) throw corrupt(`directory inode ${inode.ino}: entry names inode ${ino}`);
            yield { name: Buffer.from(name), ino };
          }
        }
        off += recLen;
        // An htree root block holds `.` and `..`, then the index (not entries).
        if (htree && at === 0 && n === 2) break;
      }
    }
  }

  /**
   * Every entry below the root, depth first in directory order, directories
   * before what they hold. A directory reached twice (a hard-linked
   * directory loop) or deeper than LIMITS.walkDepth is EXT4_CORRUPT.
   */
  async *walk(): AsyncGenerator<WalkedEntry> {
    const root = await this.inode(ROOT_INO);
    if (root.type !== 'dir') throw corrupt('the root inode is not a directory');
    const dirs = new Set<number>([ROOT_INO]);
    const stack: { path: Buffer; inode: Inode; depth: number }[] = [{ path: Buffer.alloc(0), inode: root, depth: 0 }];
    while (stack.length > 0) {
      const dir = stack.pop()!;
      const subdirs: { path: Buffer; inode: Inode; depth: number }[] = [];
      for await (const e of this.readDir(dir.inode)) {
        const path = Buffer.concat([dir.path, Buffer.from('/'), e.name]);
        const inode = await this.inode(e.ino);
        if (inode.type === 'dir') {
          if (dirs.has(e.ino)) throw corrupt(`directory inode ${e.ino} is reached twice (a loop)`);
          if (dir.depth + 1 > LIMITS.walkDepth) throw corrupt(`directories nest deeper than ${LIMITS.walkDepth}`);
          dirs.add(e.ino);
          subdirs.push({ path, inode, depth: dir.depth + 1 });
        }
        yield { path, inode };
      }
      for (let i = subdirs.length - 1; i >= 0; i--) stack.push(subdirs[i]!);
    }
  }
}

/** Whether `head` (the first 2048 bytes of a partition or more) holds an ext superblock. */
export function isExtSuperblock(head: Buffer): boolean {
  return head.length >= SUPERBLOCK_OFFSET + 58 && head.readUInt16LE(SUPERBLOCK_OFFSET + 56) === EXT_MAGIC;
}

export { FL as INODE_FLAGS };

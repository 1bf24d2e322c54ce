/**
 * Partition tables of a guest disk, parsed in TypeScript from the first (and
 * for GPT, the last) sectors, so that file-level restore never asks the host
 * kernel to scan an untrusted table (partition scanning is also unavailable
 * on some hosts, so partitions are always attached by offset and size).
 *
 * Words: a *partition* is a byte range of the disk, numbered as Linux numbers
 * them (MBR primaries 1-4, logicals from 5; GPT entries from 1). A disk with
 * no table but a filesystem at offset 0 has one partition, number 0, that
 * covers the whole disk.
 *
 * Assumes 512-byte logical sectors, which is what virtual disks use.
 */
import { crc32 } from 'node:zlib';
import { badInput } from '../errors.js';

export const SECTOR_SIZE = 512;
/** Bounds that keep a hostile table from making us read or allocate much. */
const MAX_LOGICAL_PARTITIONS = 128;
const MAX_GPT_ENTRY_BYTES = 1024 * 1024;

/** Reads `length` bytes at `offset`; a short read past the end returns fewer bytes. */
export type ReadAt = (offset: number, length: number) => Promise<Buffer>;

export type PartitionScheme = 'mbr' | 'gpt' | 'none';

export interface Partition {
  /** Linux-style number; 0 for a whole-disk filesystem. */
  number: number;
  /** Byte offset of the first byte. */
  offset: number;
  /** Length in bytes. */
  size: number;
  /** MBR: the type byte as hex ("83"); GPT: the type GUID (upper case). */
  type: string;
  /** A readable name of the type when we know it ("linux", "efi-system", ...). */
  typeName?: string;
  /** GPT partition name. */
  label?: string;
}

export interface PartitionTable {
  scheme: PartitionScheme;
  partitions: Partition[];
  /** Things we recovered from, such as a bad primary GPT header with a good backup. */
  warnings: string[];
}

const MBR_EXTENDED_TYPES = new Set([0x05, 0x0f, 0x85]);
const MBR_PROTECTIVE = 0xee;
const MBR_TYPE_NAMES: Record<number, string> = {
  0x01: 'fat12',
  0x04: 'fat16',
  0x06: 'fat16',
  0x07: 'ntfs-exfat',
  0x0b: 'fat32',
  0x0c: 'fat32-lba',
  0x0e: 'fat16-lba',
  0x82: 'linux-swap',
  0x83: 'linux',
  0x8e: 'linux-lvm',
  0xef: 'efi-system',
  0xfd: 'linux-raid',
};
const GPT_TYPE_NAMES: Record<string, string> = {
  '0FC63DAF-8483-4772-8E79-3D69D8477DE4': 'linux',
  'C12A7328-F81F-11D2-BA4B-00A0C93EC93B': 'efi-system',
  'EBD0A0A2-B9E5-4433-87C0-68B6B72699C7': 'microsoft-basic-data',
  '0657FD6D-A4AB-43C4-84E5-0933C84B4F4F': 'linux-swap',
  '21686148-6449-6E6F-744E-656564454649': 'bios-boot',
  'E6D6D379-F507-44C2-A23C-238F2A3DF928': 'linux-lvm',
  '4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709': 'linux-root-x86-64',
  'BC13C2FF-59E6-4262-A352-B275FD6F7172': 'linux-extended-boot',
  'E3C9E316-0B5C-4DB8-817D-F92DF00215AE': 'microsoft-reserved',
};

function corrupt(what: string): Error {
  return badInput(
    'CORRUPT_PARTITION_TABLE',
    `the disk's partition table is corrupt: ${what}`,
    'the restore point may have been taken from a damaged disk; pick an earlier restore point, or restore the whole disk and repair it with fdisk/gdisk',
  );
}

async function readExactly(read: ReadAt, offset: number, length: number, what: string): Promise<Buffer> {
  const b = await read(offset, length);
  if (b.length < length) throw corrupt(`${what} at byte ${offset} lies past the end of the disk`);
  return b;
}

/** GPT stores GUIDs with the first three fields little-endian. */
export function formatGuid(b: Buffer): string {
  const hex = (x: Buffer): string => x.toString('hex').toUpperCase();
  const le = (s: number, n: number): string => hex(Buffer.from(b.subarray(s, s + n)).reverse());
  return `${le(0, 4)}-${le(4, 2)}-${le(6, 2)}-${hex(b.subarray(8, 10))}-${hex(b.subarray(10, 16))}`;
}

export function hasMbrSignature(sector0: Buffer): boolean {
  return sector0.length >= 512 && sector0[510] === 0x55 && sector0[511] === 0xaa;
}

interface MbrEntry {
  status: number;
  type: number;
  lbaStart: number;
  sectors: number;
}

function mbrEntries(sector: Buffer): MbrEntry[] {
  const out: MbrEntry[] = [];
  for (let i = 0; i < 4; i++) {
    const e = 446 + i * 16;
    out.push({ status: sector[e]!, type: sector[e + 4]!, lbaStart: sector.readUInt32LE(e + 8), sectors: sector.readUInt32LE(e + 12) });
  }
  return out;
}

/** True when sector 0 carries a protective MBR (an 0xEE entry), i.e. the disk claims to be GPT. */
export function isProtectiveMbr(sector0: Buffer): boolean {
  return hasMbrSignature(sector0) && mbrEntries(sector0).some((e) => e.type === MBR_PROTECTIVE);
}

function checkRange(p: Partition, diskSize: number): void {
  if (p.size <= 0) throw corrupt(`partition ${p.number} is empty`);
  if (p.offset < SECTOR_SIZE) throw corrupt(`partition ${p.number} starts inside the partition table (byte ${p.offset})`);
  if (p.offset + p.size > diskSize) {
    throw corrupt(`partition ${p.number} (bytes ${p.offset}..${p.offset + p.size}) extends past the end of the ${diskSize}-byte disk`);
  }
}

function checkNoOverlap(parts: Partition[]): void {
  const sorted = [...parts].sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1]!;
    const cur = sorted[i]!;
    if (cur.offset < prev.offset + prev.size) throw corrupt(`partitions ${prev.number} and ${cur.number} overlap`);
  }
}

/** Parses an MBR (sector 0 already read) including the chain of extended boot records. */
export async function parseMbr(read: ReadAt, sector0: Buffer, diskSize: number): Promise<Partition[]> {
  if (!hasMbrSignature(sector0)) throw corrupt('sector 0 has no 55AA boot signature');
  const parts: Partition[] = [];
  let extended: MbrEntry | undefined;
  mbrEntries(sector0).forEach((e, i) => {
    if (e.type === 0) return;
    if (e.status !== 0x00 && e.status !== 0x80)
      throw corrupt(`primary entry ${i + 1} has an invalid status byte 0x${e.status.toString(16)}`);
    if (MBR_EXTENDED_TYPES.has(e.type)) {
      if (extended) throw corrupt('more than one extended partition');
      extended = e;
      const span: Partition = { number: i + 1, offset: e.lbaStart * SECTOR_SIZE, size: e.sectors * SECTOR_SIZE, type: hex2(e.type) };
      checkRange(span, diskSize);
      return;
    }
    const p: Partition = {
      number: i + 1,
      offset: e.lbaStart * SECTOR_SIZE,
      size: e.sectors * SECTOR_SIZE,
      type: hex2(e.type),
      typeName: MBR_TYPE_NAMES[e.type],
    };
    checkRange(p, diskSize);
    parts.push(p);
  });
  if (extended) parts.push(...(await parseExtended(read, extended, diskSize)));
  checkNoOverlap(parts);
  return parts;
}

function hex2(n: number): string {
  return n.toString(16).padStart(2, '0');
}

/**
 * Walks the EBR chain: each EBR's first entry is a logical partition relative
 * to that EBR, its second entry links to the next EBR relative to the start
 * of the extended partition.
 */
async function parseExtended(read: ReadAt, ext: MbrEntry, diskSize: number): Promise<Partition[]> {
  const out: Partition[] = [];
  const extStart = ext.lbaStart;
  const extEnd = ext.lbaStart + ext.sectors;
  const seen = new Set<number>();
  let ebrLba = extStart;
  for (let n = 5; ; n++) {
    if (out.length >= MAX_LOGICAL_PARTITIONS) throw corrupt(`more than ${MAX_LOGICAL_PARTITIONS} logical partitions`);
    if (seen.has(ebrLba)) throw corrupt(`the extended boot record chain loops at sector ${ebrLba}`);
    seen.add(ebrLba);
    if (ebrLba < extStart || ebrLba >= extEnd)
      throw corrupt(`an extended boot record (sector ${ebrLba}) lies outside the extended partition`);
    const ebr = await readExactly(read, ebrLba * SECTOR_SIZE, SECTOR_SIZE, 'extended boot record');
    if (!hasMbrSignature(ebr)) throw corrupt(`the extended boot record at sector ${ebrLba} has no 55AA signature`);
    const [logical, link] = mbrEntries(ebr) as [MbrEntry, MbrEntry];
    if (logical.type !== 0 && logical.sectors > 0) {
      const start = ebrLba + logical.lbaStart;
      if (start + logical.sectors > extEnd) throw corrupt(`logical partition ${n} extends past its extended partition`);
      const p: Partition = {
        number: n,
        offset: start * SECTOR_SIZE,
        size: logical.sectors * SECTOR_SIZE,
        type: hex2(logical.type),
        typeName: MBR_TYPE_NAMES[logical.type],
      };
      checkRange(p, diskSize);
      out.push(p);
    }
    if (link.type === 0 || link.sectors === 0) break;
    if (!MBR_EXTENDED_TYPES.has(link.type))
      throw corrupt(`the extended boot record at sector ${ebrLba} links with type 0x${hex2(link.type)}`);
    ebrLba = extStart + link.lbaStart;
  }
  return out;
}

interface GptHeader {
  currentLba: bigint;
  backupLba: bigint;
  firstUsable: bigint;
  lastUsable: bigint;
  entriesLba: bigint;
  entryCount: number;
  entrySize: number;
  entriesCrc: number;
}

/** Returns the header, or a reason it cannot be trusted. */
function parseGptHeader(sector: Buffer, expectLba: bigint): GptHeader | string {
  if (sector.subarray(0, 8).toString('latin1') !== 'EFI PART') return 'no "EFI PART" signature';
  const headerSize = sector.readUInt32LE(12);
  if (headerSize < 92 || headerSize > SECTOR_SIZE) return `header size ${headerSize} is out of range`;
  const stored = sector.readUInt32LE(16);
  const copy = Buffer.from(sector.subarray(0, headerSize));
  copy.writeUInt32LE(0, 16);
  const actual = crc32(copy);
  if (actual !== stored) return `header CRC32 mismatch (stored ${hex8(stored)}, computed ${hex8(actual)})`;
  const h: GptHeader = {
    currentLba: sector.readBigUInt64LE(24),
    backupLba: sector.readBigUInt64LE(32),
    firstUsable: sector.readBigUInt64LE(40),
    lastUsable: sector.readBigUInt64LE(48),
    entriesLba: sector.readBigUInt64LE(72),
    entryCount: sector.readUInt32LE(80),
    entrySize: sector.readUInt32LE(84),
    entriesCrc: sector.readUInt32LE(88),
  };
  if (h.currentLba !== expectLba) return `header says it lives at sector ${h.currentLba}, found at ${expectLba}`;
  if (h.entrySize < 128 || h.entrySize % 8 !== 0) return `entry size ${h.entrySize} is invalid`;
  if (h.entryCount * h.entrySize > MAX_GPT_ENTRY_BYTES) return `entry array of ${h.entryCount} x ${h.entrySize} bytes is too large`;
  return h;
}

function hex8(n: number): string {
  return n.toString(16).padStart(8, '0');
}

async function gptPartitions(read: ReadAt, h: GptHeader, diskSize: number, which: string): Promise<Partition[] | string> {
  const bytes = h.entryCount * h.entrySize;
  const array = await read(Number(h.entriesLba) * SECTOR_SIZE, bytes);
  if (array.length < bytes) return `${which} entry array lies past the end of the disk`;
  const crc = crc32(array);
  if (crc !== h.entriesCrc) return `${which} entry array CRC32 mismatch (stored ${hex8(h.entriesCrc)}, computed ${hex8(crc)})`;
  const parts: Partition[] = [];
  for (let i = 0; i < h.entryCount; i++) {
    const e = array.subarray(i * h.entrySize, (i + 1) * h.entrySize);
    if (e.subarray(0, 16).every((b) => b === 0)) continue;
    const first = e.readBigUInt64LE(32);
    const last = e.readBigUInt64LE(40);
    if (last < first) throw corrupt(`GPT entry ${i + 1} ends (sector ${last}) before it starts (sector ${first})`);
    if (first < h.firstUsable || last > h.lastUsable)
      throw corrupt(`GPT entry ${i + 1} lies outside the usable sectors ${h.firstUsable}..${h.lastUsable}`);
    const type = formatGuid(e.subarray(0, 16));
    const label = e.subarray(56, 128).toString('utf16le').replace(/\0.*$/s, '');
    const p: Partition = {
      number: i + 1,
      offset: Number(first) * SECTOR_SIZE,
      size: Number(last - first + 1n) * SECTOR_SIZE,
      type,
      typeName: GPT_TYPE_NAMES[type],
      ...(label ? { label } : {}),
    };
    checkRange(p, diskSize);
    parts.push(p);
  }
  checkNoOverlap(parts);
  return parts;
}

/**
 * Parses a GPT. The primary header and entry array are checked with their
 * CRC32s; if either is bad, the backup copy at the end of the disk is used
 * instead (and a warning is returned), as gdisk would. Both bad: corrupt.
 */
export async function parseGpt(read: ReadAt, diskSize: number): Promise<{ partitions: Partition[]; warnings: string[] }> {
  const lastLba = BigInt(Math.floor(diskSize / SECTOR_SIZE) - 1);
  const primarySector = await readExactly(read, SECTOR_SIZE, SECTOR_SIZE, 'GPT header');
  const primary = parseGptHeader(primarySector, 1n);
  let primaryProblem: string;
  if (typeof primary === 'string') primaryProblem = `primary header: ${primary}`;
  else {
    const parts = await gptPartitions(read, primary, diskSize, 'primary');
    if (typeof parts !== 'string') return { partitions: parts, warnings: [] };
    primaryProblem = parts;
  }
  const backupLba = typeof primary === 'string' ? lastLba : primary.backupLba > lastLba ? lastLba : primary.backupLba;
  const backupSector = await read(Number(backupLba) * SECTOR_SIZE, SECTOR_SIZE);
  const backup = backupSector.length === SECTOR_SIZE ? parseGptHeader(backupSector, backupLba) : 'missing';
  if (typeof backup === 'string') throw corrupt(`GPT ${primaryProblem}; backup header: ${backup}`);
  const parts = await gptPartitions(read, backup, diskSize, 'backup');
  if (typeof parts === 'string') throw corrupt(`GPT ${primaryProblem}; ${parts}`);
  return { partitions: parts, warnings: [`GPT ${primaryProblem}; used the backup GPT at sector ${backupLba}`] };
}

/**
 * Reads the disk's partition table. `hasFilesystemAt0` lets the caller say a
 * filesystem starts at byte 0 (a FAT boot sector also ends in 55AA, so the
 * signature alone does not mean MBR).
 */
export async function readPartitionTable(
  read: ReadAt,
  diskSize: number,
  hasFilesystemAt0: (sector0: Buffer) => Promise<boolean>,
): Promise<PartitionTable> {
  if (diskSize < 2 * SECTOR_SIZE) throw badInput('DISK_TOO_SMALL', `the disk is only ${diskSize} bytes`, 'this is not a usable guest disk');
  const sector0 = await readExactly(read, 0, SECTOR_SIZE, 'sector 0');
  const sector1 = await readExactly(read, SECTOR_SIZE, SECTOR_SIZE, 'sector 1');
  const gptSignature = sector1.subarray(0, 8).toString('latin1') === 'EFI PART';
  if (isProtectiveMbr(sector0) || gptSignature) {
    const { partitions, warnings } = await parseGpt(read, diskSize);
    return { scheme: 'gpt', partitions, warnings };
  }
  if (await hasFilesystemAt0(sector0)) {
    return { scheme: 'none', partitions: [{ number: 0, offset: 0, size: diskSize, type: 'whole-disk' }], warnings: [] };
  }
  if (hasMbrSignature(sector0)) return { scheme: 'mbr', partitions: await parseMbr(read, sector0, diskSize), warnings: [] };
  return { scheme: 'none', partitions: [], warnings: [] };
}

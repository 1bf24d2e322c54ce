/**
 * LVM2 logical volumes on a physical volume, found from the PV's own label
 * and metadata, without device-mapper or the host's LVM: the host kernel may
 * have no device-mapper at all, activating a guest's volume group would put
 * its names next to the host's own (two "debian-vg" collide), and nothing
 * of a restore point may change the host's LVM state.
 *
 * A logical volume stored in one piece on this PV is a byte range of it,
 * which the file-level restore mounts like a partition (a loop device with
 * an offset). Volumes in several pieces, on several PVs, thin, RAID,
 * mirrored, cached or snapshot volumes need device-mapper: they are listed
 * with the reason they are not mounted.
 *
 * On-disk layout (LVM2's lib/format_text, "LVM2 001" labels):
 * - the label sector, one of the first four: "LABELONE", its sector number,
 *   a CRC, the offset of the PV header, "LVM2 001";
 * - the PV header: the PV's UUID (32 characters), its size, then two lists of
 *   (offset, size) pairs ending with a zero pair: data areas, metadata areas;
 * - a metadata area: a 512-byte header (CRC, magic, version, start, size,
 *   then slots of (offset, size, CRC, flags)); the first slot locates the
 *   current metadata text in the area's ring buffer, which wraps to just
 *   after the header.
 */
import type { ReadAt } from './partitions.js';
import { SECTOR_SIZE } from './partitions.js';

export interface LogicalVolume {
  vg: string;
  name: string;
  /** Byte offset on the physical volume; meaningful only when not skipped. */
  offset: number;
  size: number;
  /** Why it cannot be read as one byte range of this PV. */
  skipped?: string;
}

export interface PhysicalVolumeContents {
  vg: string;
  volumes: LogicalVolume[];
}

/** Bounds that keep hostile metadata from making us read, allocate or recurse much. */
const MAX_METADATA_BYTES = 4 * 1024 * 1024;
const MAX_NESTING = 32;
const MAX_TOKENS = 1_000_000;
const MAX_VOLUMES = 4096;
const MAX_SEGMENTS = 4096;

const LABEL_SCAN_SECTORS = 4;
const MDA_HEADER_SIZE = 512;
const MDA_MAGIC = Buffer.from(' LVM2 x[5A%r0N*>', 'latin1');
const INITIAL_CRC = 0xf597a6cf;

/** LVM and device-mapper names: what `lvcreate`/`vgcreate` accept, so never a path component like `..`. */
const NAME = /^[A-Za-z0-9+_][A-Za-z0-9+_.-]{0,127}$/;

/** LVM's CRC-32: the IEEE polynomial, reflected, from LVM's own seed and without the final inversion. */
export function lvmCrc(buf: Buffer, seed = INITIAL_CRC): number {
  let crc = seed;
  for (const b of buf) {
    crc ^= b;
    for (let k = 0; k < 8; k++) crc = crc & 1 ? (crc >>> 1) ^ 0xedb88320 : crc >>> 1;
  }
  return crc >>> 0;
}

function lvmError(message: string): Error {
  return new Error(`LVM metadata: ${message}`);
}

function u64(b: Buffer, at: number): number {
  const v = b.readBigUInt64LE(at);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw lvmError(`a 64-bit field at ${at} is out of range`);
  return Number(v);
}

/** Reads the label and PV header: the PV's UUID and its metadata areas (offset, size). */
async function readLabel(read: ReadAt): Promise<{ uuid: string; metadataAreas: { offset: number; size: number }[] }> {
  const head = await read(0, LABEL_SCAN_SECTORS * SECTOR_SIZE);
  for (let s = 0; s < LABEL_SCAN_SECTORS; s++) {
    const sector = head.subarray(s * SECTOR_SIZE, (s + 1) * SECTOR_SIZE);
    if (sector.length < SECTOR_SIZE || sector.toString('latin1', 0, 8) !== 'LABELONE') continue;
    if (sector.toString('latin1', 24, 32) !== 'LVM2 001') throw lvmError('the label is not an LVM2 label');
    if (lvmCrc(sector.subarray(20)) !== sector.readUInt32LE(16)) throw lvmError('the label sector fails its checksum');
    const at = sector.readUInt32LE(20);
    if (at < 32 || at + 32 + 8 + 16 > SECTOR_SIZE) throw lvmError('the PV header is outside the label sector');
    const uuid = sector.toString('latin1', at, at + 32);
    let p = at + 40;
    const list = (): { offset: number; size: number }[] => {
      const out: { offset: number; size: number }[] = [];
      for (;;) {
        if (p + 16 > SECTOR_SIZE) throw lvmError('the PV header runs past its sector');
        const offset = u64(sector, p);
        const size = u64(sector, p + 8);
        p += 16;
        if (offset === 0) return out;
        out.push({ offset, size });
      }
    };
    list(); // data areas: the extents' start comes from the metadata's pe_start
    return { uuid, metadataAreas: list() };
  }
  throw lvmError('no LVM2 label in the first four sectors');
}

/** The current metadata text of one metadata area, checked against the CRC its header keeps. */
async function readMetadataText(read: ReadAt, area: { offset: number; size: number }): Promise<string> {
  const header = await read(area.offset, MDA_HEADER_SIZE);
  if (header.length < MDA_HEADER_SIZE || !header.subarray(4, 20).equals(MDA_MAGIC)) throw lvmError('the metadata area has no LVM2 header');
  if (lvmCrc(header.subarray(4)) !== header.readUInt32LE(0)) throw lvmError('the metadata area header fails its checksum');
  const start = u64(header, 24);
  const size = u64(header, 32);
  const offset = u64(header, 40);
  const length = u64(header, 48);
  const crc = header.readUInt32LE(56);
  if (header.readUInt32LE(60) & 1) throw lvmError('the metadata area is marked to be ignored');
  if (start !== area.offset || size <= MDA_HEADER_SIZE) throw lvmError('the metadata area header does not match the PV header');
  if (length === 0) throw lvmError('the metadata area holds no metadata');
  if (length > MAX_METADATA_BYTES || length > size - MDA_HEADER_SIZE || offset < MDA_HEADER_SIZE || offset >= size)
    throw lvmError(`the metadata text (${length} bytes at ${offset}) does not fit its area`);
  // A ring buffer: what does not fit before the area's end continues just after its header.
  const first = Math.min(length, size - offset);
  const parts = [await read(start + offset, first)];
  if (first < length) parts.push(await read(start + MDA_HEADER_SIZE, length - first));
  const text = Buffer.concat(parts);
  if (text.length !== length) throw lvmError('the metadata text is cut short by the end of the disk');
  if (lvmCrc(text) !== crc) throw lvmError('the metadata text fails its checksum');
  // LVM counts the text's terminating NUL in its size.
  return text.toString('utf8').replace(/\0+$/, '');
}

type Value = string | number | Value[];
type Section = Map<string, Value | Section>;

/** Parses LVM's configuration syntax: `name { ... }` sections, `key = value`, values strings, numbers or lists. */
export function parseLvmConfig(text: string): Section {
  const tokens = tokenize(text);
  let i = 0;
  const next = (): string => {
    const t = tokens[i++];
    if (t === undefined) throw lvmError('the metadata ends in the middle of an entry');
    return t;
  };
  const value = (depth: number): Value => {
    const t = next();
    if (t === '[') {
      if (depth > MAX_NESTING) throw lvmError('lists are nested too deep');
      const list: Value[] = [];
      if (tokens[i] === ']') {
        i++;
        return list;
      }
      for (;;) {
        list.push(value(depth + 1));
        const sep = next();
        if (sep === ']') return list;
        if (sep !== ',') throw lvmError(`"${sep}" where a list goes on`);
      }
    }
    if (t.startsWith('"')) return t.slice(1, -1).replace(/\\(.)/g, '$1');
    const n = Number(t);
    if (!Number.isSafeInteger(n)) throw lvmError(`"${t.slice(0, 40)}" is not a value`);
    return n;
  };
  const section = (depth: number, closed: boolean): Section => {
    if (depth > MAX_NESTING) throw lvmError('sections are nested too deep');
    const out: Section = new Map();
    for (;;) {
      const key = tokens[i++];
      if (key === undefined) {
        if (closed) throw lvmError('a section is not closed');
        return out;
      }
      if (key === '}') {
        if (!closed) throw lvmError('a "}" closes no section');
        return out;
      }
      if (!/^[A-Za-z0-9_+.-]+$/.test(key)) throw lvmError(`"${key.slice(0, 40)}" is not a name`);
      const op = next();
      if (op === '{') out.set(key, section(depth + 1, true));
      else if (op === '=') out.set(key, value(depth));
      else throw lvmError(`"${op}" after ${key}`);
    }
  };
  return section(0, false);
}

function tokenize(text: string): string[] {
  const out: string[] = [];
  const re = /\s+|#[^\n]*|"(?:[^"\\]|\\.)*"|[{}[\]=,]|[^\s{}[\]=,"#]+|"/gy;
  let m: RegExpExecArray | null;
  while ((m = re.exec(text)) !== null) {
    const t = m[0];
    if (t === '"') throw lvmError('a string is not closed');
    if (/^\s/.test(t) || t.startsWith('#')) continue;
    out.push(t);
    if (out.length > MAX_TOKENS) throw lvmError('too many entries');
  }
  return out;
}

const isSection = (v: Value | Section | undefined): v is Section => v instanceof Map;
const num = (s: Section, key: string): number | undefined => {
  const v = s.get(key);
  return typeof v === 'number' ? v : undefined;
};
const str = (s: Section, key: string): string | undefined => {
  const v = s.get(key);
  return typeof v === 'string' ? v : undefined;
};

/** Where an LV's extents lie on this PV, or why they are not one range of it. */
function placeVolume(lv: Section, pvName: string): { firstExtent: number; extents: number } | { skipped: string } {
  const segments: { start: number; count: number; pv: string; pvExtent: number }[] = [];
  for (const [key, seg] of lv) {
    if (!key.startsWith('segment') || !isSection(seg)) continue;
    if (segments.length >= MAX_SEGMENTS) return { skipped: 'too many segments' };
    const type = str(seg, 'type');
    if (type !== 'striped') return { skipped: `a ${type ?? 'typeless'} volume needs device-mapper` };
    const stripes = seg.get('stripes');
    if (num(seg, 'stripe_count') !== 1 || !Array.isArray(stripes) || stripes.length !== 2)
      return { skipped: 'a striped volume needs device-mapper' };
    const [pv, pvExtent] = stripes;
    const start = num(seg, 'start_extent');
    const count = num(seg, 'extent_count');
    if (typeof pv !== 'string' || typeof pvExtent !== 'number' || start === undefined || count === undefined || count <= 0)
      return { skipped: 'a segment is incomplete' };
    segments.push({ start, count, pv, pvExtent });
  }
  if (segments.length === 0) return { skipped: 'no segments' };
  segments.sort((a, b) => a.start - b.start);
  if (segments.some((s) => s.pv !== pvName))
    return { skipped: 'stored on another physical volume (restore every disk of the volume group)' };
  let expected = 0;
  for (const s of segments) {
    if (s.start !== expected) return { skipped: 'its segments leave a gap' };
    expected += s.count;
  }
  // In several pieces that happen to follow each other on the PV it is still one range.
  for (let k = 1; k < segments.length; k++) {
    const prev = segments[k - 1]!;
    if (segments[k]!.pvExtent !== prev.pvExtent + prev.count)
      return { skipped: `stored in ${segments.length} pieces on the physical volume; device-mapper would join them` };
  }
  return { firstExtent: segments[0]!.pvExtent, extents: expected };
}

/**
 * The volume group and logical volumes a physical volume holds, with each
 * LV's byte range on it. Throws when the label or metadata is unreadable
 * (damaged, or not LVM2 text metadata); `pvSize` bounds every range.
 */
export async function readPhysicalVolume(read: ReadAt, pvSize: number): Promise<PhysicalVolumeContents> {
  const label = await readLabel(read);
  let text: string | undefined;
  let firstError: Error | undefined;
  for (const area of label.metadataAreas) {
    try {
      text = await readMetadataText(read, area);
      break;
    } catch (err) {
      firstError ??= err as Error;
    }
  }
  if (text === undefined)
    throw firstError ?? lvmError('the physical volume keeps no metadata (its volume group is described on another PV)');
  const top = parseLvmConfig(text);
  const vgEntry = [...top].find(([, v]) => isSection(v) && isSection(v.get('physical_volumes')));
  if (!vgEntry) throw lvmError('no volume group in the metadata');
  const [vg, vgSection] = vgEntry as [string, Section];
  if (!NAME.test(vg)) throw lvmError(`the volume group name "${vg.slice(0, 40)}" is not a valid name`);
  const extentSectors = num(vgSection, 'extent_size');
  if (extentSectors === undefined || extentSectors <= 0) throw lvmError('no extent size');
  const extentBytes = extentSectors * SECTOR_SIZE;
  // The metadata spells UUIDs with dashes; the label without.
  const pvs = vgSection.get('physical_volumes') as Section;
  const mine = [...pvs].find(([, pv]) => isSection(pv) && str(pv, 'id')?.replaceAll('-', '') === label.uuid);
  if (!mine) throw lvmError('the metadata does not list this physical volume');
  const [pvName, pv] = mine as [string, Section];
  const peStart = (num(pv, 'pe_start') ?? -1) * SECTOR_SIZE;
  if (peStart < 0 || peStart > pvSize) throw lvmError('the first extent is outside the physical volume');
  const volumes: LogicalVolume[] = [];
  const lvs = vgSection.get('logical_volumes');
  for (const [name, lv] of isSection(lvs) ? lvs : []) {
    if (!isSection(lv)) continue;
    if (volumes.length >= MAX_VOLUMES) throw lvmError('too many logical volumes');
    const status = lv.get('status');
    // Hidden volumes are the parts of thin pools, RAID and mirrors: their parent is what a user knows.
    if (!Array.isArray(status) || !status.includes('VISIBLE')) continue;
    const entry = { vg, name, offset: 0, size: 0 };
    if (!NAME.test(name)) {
      volumes.push({ ...entry, name: name.slice(0, 40), skipped: 'not a valid volume name' });
      continue;
    }
    const place = placeVolume(lv, pvName);
    if ('skipped' in place) {
      volumes.push({ ...entry, skipped: place.skipped });
      continue;
    }
    const offset = peStart + place.firstExtent * extentBytes;
    const size = place.extents * extentBytes;
    if (offset + size > pvSize) volumes.push({ ...entry, skipped: 'it runs past the end of the physical volume' });
    else volumes.push({ ...entry, offset, size });
  }
  return { vg, volumes };
}

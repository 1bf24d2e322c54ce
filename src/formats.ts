/**
 * The format registry: every byte layout restorelab writes to disk or hands
 * to a client that must still be read after an upgrade or a restart, in one
 * list (name, version, magic, layout). The constants themselves live beside
 * their codecs (src/repo/format.ts for the repository; the overlay and NFS
 * handle constants are here, as their modules are small); docs/formats.md
 * describes each byte by byte, and test/foundation/formats.test.ts checks
 * that every entry is documented there. Never change a magic.
 */
import {
  CHUNK_HEADER_SIZE,
  CHUNK_MAGIC,
  FIDX_HEADER_SIZE,
  FIDX_MAGIC,
  FIDX_VERSION,
  POINT_FORMAT,
  POINT_VERSION,
  SEAL_HEADER_SIZE,
  SEAL_MAGIC,
} from './repo/format.js';

/** Overlay bitmap snapshot `<disk>.map` magic, "RLOVMAP1". Do not modify. */
export const OVERLAY_MAP_MAGIC = 'RLOVMAP1';
/** magic(8) blockSize(4) reserved(4) blockCount(8) crc32(bitmap)(4) crc32(header bytes 0..27)(4). */
export const OVERLAY_MAP_HEADER_BYTES = 32;
/** Overlay journal record magic, "RLJ1" read as a little-endian u32. Do not modify. */
export const OVERLAY_JOURNAL_MAGIC = 0x524c4a31;
/** magic(4) reserved(4) start(8) count(4) crc32(bytes 0..19)(4). */
export const OVERLAY_JOURNAL_RECORD_BYTES = 24;

/** NFS file handle magic, "RLN1". Do not modify: handles given out must resolve after a restart. */
export const NFS_HANDLE_MAGIC = Buffer.from('RLN1', 'latin1');
/** The persistent server id inside every handle (`<stateDir>/nfs/server-id`, 32 hex digits). */
export const NFS_SERVER_ID_BYTES = 16;
/** magic(4) serverId(16) fileId(8, big-endian as XDR): 28 bytes, within nfs_fh3's 64. */
export const NFS_HANDLE_BYTES = 4 + NFS_SERVER_ID_BYTES + 8;

export interface FormatEntry {
  /** Short name, also the heading text docs/formats.md uses for it. */
  name: string;
  /** Format version; a layout without a version field is at version 1 until its magic changes. */
  version: number;
  /** The magic or format string that identifies it, as it appears on disk or on the wire. */
  magic: string;
  /** One line: where it lives and its layout. */
  layout: string;
}

/** Every format, in pipeline order: repository, publication (overlay), frontend (NFS). */
export const FORMATS: readonly FormatEntry[] = [
  {
    name: 'Blob',
    version: 1,
    magic: CHUNK_MAGIC.toString('latin1'),
    layout: `chunks/<2 hex>/<digest>: ${CHUNK_HEADER_SIZE}-byte header (magic, flags, crc32, plain length), then zstd and/or AES-256-GCM payload`,
  },
  {
    name: 'Fixed index',
    version: FIDX_VERSION,
    magic: FIDX_MAGIC.toString('latin1'),
    layout: `indexes/<sha256>.fidx: ${FIDX_HEADER_SIZE}-byte header (magic, version, chunk size, size, count, checksum), then 32-byte digests`,
  },
  {
    name: 'Sealed files',
    version: 1,
    magic: SEAL_MAGIC.toString('latin1'),
    layout: `a manifest or index of an encrypted repository: ${SEAL_HEADER_SIZE}-byte header (magic, purpose), nonce, ciphertext, tag`,
  },
  {
    name: 'Restore point manifest',
    version: POINT_VERSION,
    magic: POINT_FORMAT,
    layout: 'points/<id>.json: JSON with "format" and "version", the VM definition and one index digest per disk',
  },
  {
    name: 'Overlay',
    version: 1,
    magic: OVERLAY_MAP_MAGIC,
    layout: `<overlayDir>/<id>/<disk>.{data,map,journal}: sparse data file; map = ${OVERLAY_MAP_HEADER_BYTES}-byte header + bitmap; journal = ${OVERLAY_JOURNAL_RECORD_BYTES}-byte records (magic RLJ1)`,
  },
  {
    name: 'NFS file handle',
    version: 1,
    magic: NFS_HANDLE_MAGIC.toString('latin1'),
    layout: `${NFS_HANDLE_BYTES} bytes: magic(4), server id(${NFS_SERVER_ID_BYTES}), file id(8, big-endian)`,
  },
];

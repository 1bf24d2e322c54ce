/**
 * Every on-disk constant of repository format v1, in one place (after
 * Proxmox's file_formats.rs). docs/formats.md describes each file byte by
 * byte; change both together, and never change a magic: old repositories
 * must keep opening.
 *
 * All multi-byte integers on disk are little-endian.
 */

/** Chunk blob magic, "RLCHUNK1". Do not modify. */
export const CHUNK_MAGIC = Buffer.from('RLCHUNK1', 'latin1');
/** magic(8) flags(1) reserved(3) crc32(4) plainLength(4) reserved(4). */
export const CHUNK_HEADER_SIZE = 24;
export const CHUNK_FLAG_COMPRESSED = 0x01;
export const CHUNK_FLAG_ENCRYPTED = 0x02;
export const CHUNK_KNOWN_FLAGS = CHUNK_FLAG_COMPRESSED | CHUNK_FLAG_ENCRYPTED;
/** AES-256-GCM nonce, random per chunk. */
export const GCM_NONCE_SIZE = 12;
export const GCM_TAG_SIZE = 16;
/** The longest valid blob of a chunk: incompressible, so stored raw, and sealed. */
export function maxBlobSize(chunkSize: number): number {
  return CHUNK_HEADER_SIZE + GCM_NONCE_SIZE + chunkSize + GCM_TAG_SIZE;
}
/** zstd level: 1 keeps ingest near disk speed; higher levels gain little on disk images. */
export const ZSTD_LEVEL = 1;

/** Fixed index magic, "RLFIDX01". Do not modify. */
export const FIDX_MAGIC = Buffer.from('RLFIDX01', 'latin1');
export const FIDX_VERSION = 1;
/** magic(8) version(4) chunkSize(4) size(8) count(8) checksum(32): 64 bytes. */
export const FIDX_HEADER_SIZE = 64;
export const FIDX_CHECKSUM_OFFSET = 32;
export const DIGEST_SIZE = 32;
/** An all-zero digest slot in a fixed index is a hole (an all-zero chunk, not stored). */
export const HOLE_DIGEST = Buffer.alloc(DIGEST_SIZE);

/** Manifest "format" field of a restore point. Do not modify. */
export const POINT_FORMAT = 'restorelab-point';
export const POINT_VERSION = 1;

/** Key file: 64 hex digits (a 256-bit master key), optional trailing newline. */
export const KEY_SIZE = 32;
/** HKDF-SHA-256 info strings deriving sub-keys from the master key (salt: repository id). Do not modify. */
export const KDF_INFO_ENCRYPT = 'restorelab v1 chunk encryption';
export const KDF_INFO_DIGEST = 'restorelab v1 chunk digest';
export const KDF_INFO_CHECK = 'restorelab v1 key check';
/**
 * Format v2 (encrypted repositories): manifests and indexes are sealed with
 * AES-256-GCM under their own sub-keys, and an index is named by an HMAC of
 * its plaintext under a third one. Do not modify.
 */
export const KDF_INFO_MANIFEST = 'restorelab v2 manifest encryption';
export const KDF_INFO_INDEX = 'restorelab v2 index encryption';
export const KDF_INFO_INDEX_NAME = 'restorelab v2 index name';
/** The key check value in config.json is HMAC-SHA-256(checkKey, this). Do not modify. */
export const KEY_CHECK_MESSAGE = 'restorelab key check';

/**
 * Sealed metadata file (manifest or index of an encrypted repository):
 * magic(8) purpose(1) reserved(3) nonce(12) ciphertext tag(16). The 12-byte
 * header is the GCM additional data. Magic "RLSEAL01": do not modify.
 */
export const SEAL_MAGIC = Buffer.from('RLSEAL01', 'latin1');
export const SEAL_HEADER_SIZE = 12;
export const SEAL_PURPOSE_MANIFEST = 1;
export const SEAL_PURPOSE_INDEX = 2;

/** Layout below the repository directory. */
export const CONFIG_FILE = 'config.json';
export const CHUNKS_DIR = 'chunks';
export const INDEXES_DIR = 'indexes';
export const POINTS_DIR = 'points';
export const LOCKS_DIR = 'locks';
export const INDEX_SUFFIX = '.fidx';
export const POINT_SUFFIX = '.json';
export const LOCK_SUFFIX = '.lock';
/** Object storage only: sweep markers, `gc/<host>-<pid>-<8 hex>.sweep` (s3-sweep.ts). */
export const SWEEPS_DIR = 'gc';
export const SWEEP_SUFFIX = '.sweep';
export const QUARANTINE_SUFFIX = '.bad';
/** Temp files are written under this prefix and renamed into place; readers ignore them (defined by src/host/atomic-file.ts). */
export { TEMP_PREFIX } from '../host/atomic-file.js';

/** 1 MiB: see docs/formats.md for why. */
export const DEFAULT_CHUNK_SIZE = 1024 * 1024;
/**
 * 4 MiB for a new repository on object storage (s3://): every chunk is a request, and on a gateway a
 * request costs more than its bytes; docs/formats.md ("Chunk size on object storage") has the figures.
 */
export const DEFAULT_OBJECT_STORAGE_CHUNK_SIZE = 4 * 1024 * 1024;
/**
 * gc keeps chunks touched less than this before its cutoff: file system
 * timestamps come from a coarse clock that can lag Date.now() by a tick.
 */
export const GC_SAFETY_MARGIN_MS = 5_000;

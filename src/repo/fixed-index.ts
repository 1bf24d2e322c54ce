/**
 * Fixed index files: a 64-byte header, then one 32-byte digest per chunk of
 * the disk (all zeros for a hole). The header checksum is SHA-256 over the
 * header (checksum field zeroed) and all digests; the file is named after the
 * SHA-256 of its whole content, so a restore point pins exact index bytes.
 */
import { createHash } from 'node:crypto';
import type { FixedIndex } from './api.js';
import { RestorelabError } from '../errors.js';
import { DIGEST_SIZE, FIDX_CHECKSUM_OFFSET, FIDX_HEADER_SIZE, FIDX_MAGIC, FIDX_VERSION, HOLE_DIGEST } from './format.js';
import { assertDigest } from './chunk-store.js';

export function chunkCountFor(size: number, chunkSize: number): number {
  return Math.ceil(size / chunkSize);
}

export function encodeFixedIndex(index: FixedIndex): Buffer {
  const { size, chunkSize, digests } = index;
  if (!Number.isSafeInteger(size) || size < 0) throw new RestorelabError('INDEX_CORRUPT', `index size ${size} is not a byte count`);
  if (!Number.isInteger(chunkSize) || chunkSize <= 0)
    throw new RestorelabError('INDEX_CORRUPT', `index chunk size ${chunkSize} is invalid`);
  const count = chunkCountFor(size, chunkSize);
  if (digests.length !== count) {
    throw new RestorelabError(
      'INDEX_CORRUPT',
      `an index of ${size} bytes in ${chunkSize}-byte chunks needs ${count} digests, got ${digests.length}`,
    );
  }
  const buf = Buffer.alloc(FIDX_HEADER_SIZE + count * DIGEST_SIZE);
  FIDX_MAGIC.copy(buf, 0);
  buf.writeUInt32LE(FIDX_VERSION, 8);
  buf.writeUInt32LE(chunkSize, 12);
  buf.writeBigUInt64LE(BigInt(size), 16);
  buf.writeBigUInt64LE(BigInt(count), 24);
  digests.forEach((d, i) => {
    if (d === null) return;
    assertDigest(d, `index entry ${i}`);
    if (/^0+$/.test(d)) throw new RestorelabError('INDEX_CORRUPT', `index entry ${i}: the all-zero digest is reserved for holes`);
    buf.write(d, FIDX_HEADER_SIZE + i * DIGEST_SIZE, DIGEST_SIZE, 'hex');
  });
  checksum(buf).copy(buf, FIDX_CHECKSUM_OFFSET);
  return buf;
}

function checksum(buf: Buffer): Buffer {
  const h = createHash('sha256');
  h.update(buf.subarray(0, FIDX_CHECKSUM_OFFSET));
  h.update(Buffer.alloc(DIGEST_SIZE));
  h.update(buf.subarray(FIDX_CHECKSUM_OFFSET + DIGEST_SIZE));
  return h.digest();
}

function corrupt(name: string, why: string): RestorelabError {
  return new RestorelabError('INDEX_CORRUPT', `fixed index ${name} is corrupt: ${why}`, {
    hint: 'run restorelab verify; the restore points using this index cannot be restored',
  });
}

/** Decodes and checks an index file; `name` is used in errors. Magic and size are checked before any field is trusted. */
export function decodeFixedIndex(buf: Buffer, name: string): FixedIndex {
  if (buf.length < FIDX_HEADER_SIZE) throw corrupt(name, `file is ${buf.length} bytes, shorter than the ${FIDX_HEADER_SIZE}-byte header`);
  if (!buf.subarray(0, FIDX_MAGIC.length).equals(FIDX_MAGIC)) throw corrupt(name, 'bad magic');
  const version = buf.readUInt32LE(8);
  if (version !== FIDX_VERSION) throw corrupt(name, `unknown index version ${version}`);
  const chunkSize = buf.readUInt32LE(12);
  const size = Number(buf.readBigUInt64LE(16));
  const count = Number(buf.readBigUInt64LE(24));
  if ((buf.length - FIDX_HEADER_SIZE) % DIGEST_SIZE !== 0 || (buf.length - FIDX_HEADER_SIZE) / DIGEST_SIZE !== count) {
    throw corrupt(name, `file is ${buf.length} bytes but the header announces ${count} digests`);
  }
  if (chunkSize === 0 || !Number.isSafeInteger(size) || chunkCountFor(size, chunkSize) !== count) {
    throw corrupt(name, `header fields disagree (size ${size}, chunk size ${chunkSize}, count ${count})`);
  }
  if (!checksum(buf).equals(buf.subarray(FIDX_CHECKSUM_OFFSET, FIDX_CHECKSUM_OFFSET + DIGEST_SIZE)))
    throw corrupt(name, 'checksum mismatch');
  const digests: (string | null)[] = new Array(count);
  for (let i = 0; i < count; i++) {
    const slot = buf.subarray(FIDX_HEADER_SIZE + i * DIGEST_SIZE, FIDX_HEADER_SIZE + (i + 1) * DIGEST_SIZE);
    digests[i] = slot.equals(HOLE_DIGEST) ? null : slot.toString('hex');
  }
  return { size, chunkSize, digests };
}

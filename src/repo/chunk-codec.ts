/**
 * Chunk encoding: plaintext ⇄ blob, and the digest that names a chunk.
 *
 * Blob = 24-byte header (format.ts) + payload. The payload is the zstd frame,
 * or the raw bytes when zstd would not shrink them, and when encrypted it is
 * nonce ‖ AES-256-GCM(ciphertext) ‖ tag, with the header as additional data.
 * The CRC covers the payload so a flipped bit is caught before any
 * decompression or decryption work, and the digest check after decoding
 * proves the bytes are the ones the index asked for.
 *
 * Pure: it holds only the config and derived keys, so workers can build their
 * own codec from (config, key) and use it without touching the repository.
 */
import { createCipheriv, createDecipheriv, createHash, createHmac, hkdfSync, randomBytes, timingSafeEqual } from 'node:crypto';
import { crc32 } from 'node:zlib';
import { compress, decompress } from 'zstd-napi';
import zstdBinding from 'zstd-napi/binding.js';
import type { ChunkCodec, RepoConfig } from './api.js';
import { CorruptChunkError } from './contract.js';
import { badInput } from '../errors.js';
import {
  CHUNK_FLAG_COMPRESSED,
  CHUNK_FLAG_ENCRYPTED,
  CHUNK_HEADER_SIZE,
  CHUNK_KNOWN_FLAGS,
  CHUNK_MAGIC,
  GCM_NONCE_SIZE,
  GCM_TAG_SIZE,
  KDF_INFO_CHECK,
  KDF_INFO_DIGEST,
  KDF_INFO_ENCRYPT,
  KEY_CHECK_MESSAGE,
  KEY_SIZE,
  maxBlobSize,
  ZSTD_LEVEL,
} from './format.js';

export interface DerivedKeys {
  encrypt: Buffer;
  digest: Buffer;
  check: Buffer;
}

/** One sub-key of the master key (HKDF-SHA-256); the repository id salts it so two repositories sharing a key file differ. */
export function deriveSubkey(masterKey: Buffer, repoId: string, info: string): Buffer {
  if (masterKey.length !== KEY_SIZE)
    throw badInput('KEY_FILE_INVALID', `a repository key must be ${KEY_SIZE} bytes, got ${masterKey.length}`);
  return Buffer.from(hkdfSync('sha256', masterKey, Buffer.from(repoId), info, KEY_SIZE));
}

/** The chunk sub-keys (metadata-seal.ts derives the manifest and index ones). */
export function deriveKeys(masterKey: Buffer, repoId: string): DerivedKeys {
  const derive = (info: string): Buffer => deriveSubkey(masterKey, repoId, info);
  return { encrypt: derive(KDF_INFO_ENCRYPT), digest: derive(KDF_INFO_DIGEST), check: derive(KDF_INFO_CHECK) };
}

export function keyCheckValue(masterKey: Buffer, repoId: string): string {
  return createHmac('sha256', deriveKeys(masterKey, repoId).check).update(KEY_CHECK_MESSAGE).digest('hex');
}

/** Constant-time comparison of a key against the config's key check value. */
export function keyMatches(masterKey: Buffer, config: RepoConfig): boolean {
  if (!config.keyCheck) return false;
  const want = Buffer.from(config.keyCheck, 'hex');
  const got = Buffer.from(keyCheckValue(masterKey, config.id), 'hex');
  return want.length === got.length && timingSafeEqual(want, got);
}

/** Reads the fields of a blob header; throws CorruptChunkError when it cannot be trusted. */
export function parseChunkHeader(digest: string, blob: Buffer): { flags: number; crc: number; plainLength: number } {
  if (blob.length < CHUNK_HEADER_SIZE)
    throw new CorruptChunkError(digest, `blob is ${blob.length} bytes, shorter than its ${CHUNK_HEADER_SIZE}-byte header`);
  if (!blob.subarray(0, CHUNK_MAGIC.length).equals(CHUNK_MAGIC)) throw new CorruptChunkError(digest, 'bad magic');
  const flags = blob.readUInt8(8);
  if ((flags & ~CHUNK_KNOWN_FLAGS) !== 0) throw new CorruptChunkError(digest, `unknown flags 0x${flags.toString(16)}`);
  return { flags, crc: blob.readUInt32LE(12), plainLength: blob.readUInt32LE(16) };
}

/** Whether the CRC field of a blob matches its payload (the header must parse). */
export function crcMatches(digest: string, blob: Buffer): boolean {
  return crc32(blob.subarray(CHUNK_HEADER_SIZE)) === parseChunkHeader(digest, blob).crc;
}

/**
 * The blob with its CRC field recomputed over its payload, in place. Only for
 * a blob whose payload decoding proved (digest, GCM tag): the CRC is outside
 * the GCM additional data, so this never touches what the tag covers.
 */
export function withCorrectCrc(blob: Buffer): Buffer {
  blob.writeUInt32LE(crc32(blob.subarray(CHUNK_HEADER_SIZE)), 12);
  return blob;
}

export function createCodec(config: RepoConfig, masterKey?: Buffer): ChunkCodec {
  const encrypted = config.encryption === 'aes-256-gcm';
  if (encrypted && !masterKey)
    throw badInput(
      'KEY_REQUIRED',
      'an encrypted repository needs its key to encode or decode chunks',
      'pass --key-file, set RESTORELAB_KEY_FILE, or set repositoryKeyFile in the config',
    );
  const keys = encrypted && masterKey ? deriveKeys(masterKey, config.id) : undefined;
  const maxPlain = config.chunkSize;

  const digestOf = (plain: Buffer): string =>
    keys ? createHmac('sha256', keys.digest).update(plain).digest('hex') : createHash('sha256').update(plain).digest('hex');

  let dctx: zstdBinding.DCtx | undefined;
  let cctx: zstdBinding.CCtx | undefined;

  /**
   * Checks a blob and returns its plaintext: in a fresh buffer, or, given
   * `out`, decompressed into `out` (or as a view of the blob when it was
   * stored uncompressed), so a hot loop allocates nothing per chunk.
   */
  const open = (digest: string, blob: Buffer, out?: Buffer): Buffer => {
    const { flags, crc, plainLength } = parseChunkHeader(digest, blob);
    if (plainLength > maxPlain) throw new CorruptChunkError(digest, `plaintext length ${plainLength} exceeds the chunk size ${maxPlain}`);
    const stored = blob.subarray(CHUNK_HEADER_SIZE);
    const crcMismatch = (): CorruptChunkError | undefined =>
      crc32(stored) !== crc ? new CorruptChunkError(digest, 'CRC mismatch') : undefined;
    // decode() checks the CRC first: a damaged frame header could make zstd allocate whatever size it
    // claims. decodeInto() decompresses into a bounded buffer, and every byte it returns is proven by
    // the digest (and the GCM tag) anyway, so there the CRC is computed only when a later check fails,
    // to name damaged storage as such: a tenth less work on the restore and publish paths.
    if (!out) {
      const bad = crcMismatch();
      if (bad) throw bad;
      return unseal(digest, blob, flags, plainLength);
    }
    try {
      return unseal(digest, blob, flags, plainLength, out);
    } catch (err) {
      throw (err instanceof CorruptChunkError && crcMismatch()) || err;
    }
  };

  /** The plaintext of a chunk stored as is (neither compressed nor encrypted), checked where it lies: the same proof as unseal()'s. */
  const checkStored = (digest: string, plain: Buffer, crc: number, plainLength: number): Buffer => {
    if (plainLength > maxPlain) throw new CorruptChunkError(digest, `plaintext length ${plainLength} exceeds the chunk size ${maxPlain}`);
    const bad =
      plain.length !== plainLength
        ? `decoded ${plain.length} bytes, header says ${plainLength}`
        : digestOf(plain) !== digest
          ? 'digest mismatch'
          : undefined;
    if (bad) throw new CorruptChunkError(digest, crc32(plain) !== crc ? 'CRC mismatch' : bad);
    return plain;
  };

  /** Decrypts, decompresses and verifies the payload of a blob whose header was read. */
  const unseal = (digest: string, blob: Buffer, flags: number, plainLength: number, out?: Buffer): Buffer => {
    let payload = blob.subarray(CHUNK_HEADER_SIZE);
    if (((flags & CHUNK_FLAG_ENCRYPTED) !== 0) !== encrypted) {
      throw new CorruptChunkError(
        digest,
        encrypted ? 'chunk is not encrypted in an encrypted repository' : 'chunk is encrypted in an unencrypted repository',
      );
    }
    if (keys) {
      if (payload.length < GCM_NONCE_SIZE + GCM_TAG_SIZE) throw new CorruptChunkError(digest, 'encrypted payload too short');
      const aad = Buffer.from(blob.subarray(0, CHUNK_HEADER_SIZE));
      aad.writeUInt32LE(0, 12);
      const decipher = createDecipheriv('aes-256-gcm', keys.encrypt, payload.subarray(0, GCM_NONCE_SIZE));
      decipher.setAAD(aad);
      decipher.setAuthTag(payload.subarray(payload.length - GCM_TAG_SIZE));
      try {
        payload = Buffer.concat([decipher.update(payload.subarray(GCM_NONCE_SIZE, payload.length - GCM_TAG_SIZE)), decipher.final()]);
      } catch {
        throw new CorruptChunkError(digest, 'authentication tag mismatch (corrupt, or encrypted with another key)');
      }
    }
    let plain: Buffer;
    if ((flags & CHUNK_FLAG_COMPRESSED) !== 0) {
      try {
        if (out) {
          dctx ??= new zstdBinding.DCtx();
          plain = out.subarray(0, dctx.decompress(out, payload));
        } else {
          plain = decompress(payload);
        }
      } catch (err) {
        throw new CorruptChunkError(digest, `zstd: ${(err as Error).message}`);
      }
    } else {
      plain = out ? payload : Buffer.from(payload);
    }
    if (plain.length !== plainLength) throw new CorruptChunkError(digest, `decoded ${plain.length} bytes, header says ${plainLength}`);
    if (digestOf(plain) !== digest) throw new CorruptChunkError(digest, 'digest mismatch');
    return plain;
  };

  return {
    digest: digestOf,

    encode(plain: Buffer): Buffer {
      if (plain.length > maxPlain)
        throw badInput('CHUNK_TOO_LARGE', `chunk of ${plain.length} bytes exceeds the repository chunk size ${maxPlain}`);
      const packed = compress(plain, { compressionLevel: ZSTD_LEVEL });
      const compressed = packed.length < plain.length;
      let payload = compressed ? packed : plain;
      const header = Buffer.alloc(CHUNK_HEADER_SIZE);
      CHUNK_MAGIC.copy(header, 0);
      header.writeUInt8((compressed ? CHUNK_FLAG_COMPRESSED : 0) | (keys ? CHUNK_FLAG_ENCRYPTED : 0), 8);
      header.writeUInt32LE(plain.length, 16);
      if (keys) {
        const nonce = randomBytes(GCM_NONCE_SIZE);
        const cipher = createCipheriv('aes-256-gcm', keys.encrypt, nonce);
        // The CRC field is still zero here: the AAD binds magic, flags and length, which are known before sealing.
        cipher.setAAD(header);
        const sealed = Buffer.concat([nonce, cipher.update(payload), cipher.final(), cipher.getAuthTag()]);
        payload = sealed;
      }
      header.writeUInt32LE(crc32(payload), 12);
      return Buffer.concat([header, payload]);
    },

    encodeInto(plain: Buffer, out: Buffer): Buffer {
      if (plain.length > maxPlain)
        throw badInput('CHUNK_TOO_LARGE', `chunk of ${plain.length} bytes exceeds the repository chunk size ${maxPlain}`);
      if (out.length < maxBlobSize(maxPlain))
        throw new RangeError(`an encode buffer of ${out.length} bytes cannot hold a blob of this repository`);
      if (keys) {
        // Sealing allocates anyway (nonce, cipher output); this path is not the hot one.
        const blob = this.encode(plain);
        blob.copy(out);
        return out.subarray(0, blob.length);
      }
      // The same blob as encode(): compressed only when zstd shrinks it. zstd is given room for one byte less
      // than the plaintext, so data that does not shrink fails fast with "destination too small" instead of
      // being framed and then thrown away; one context per codec (per thread) instead of one per chunk.
      cctx ??= new zstdBinding.CCtx();
      let packed: number;
      try {
        packed = cctx.compress(out.subarray(CHUNK_HEADER_SIZE, CHUNK_HEADER_SIZE + plain.length - 1), plain, ZSTD_LEVEL);
      } catch {
        packed = 0;
      }
      const compressed = packed > 0;
      const payloadLength = compressed ? packed : plain.length;
      if (!compressed) plain.copy(out, CHUNK_HEADER_SIZE);
      out.fill(0, 0, CHUNK_HEADER_SIZE);
      CHUNK_MAGIC.copy(out, 0);
      out.writeUInt8(compressed ? CHUNK_FLAG_COMPRESSED : 0, 8);
      out.writeUInt32LE(plain.length, 16);
      const payload = out.subarray(CHUNK_HEADER_SIZE, CHUNK_HEADER_SIZE + payloadLength);
      out.writeUInt32LE(crc32(payload), 12);
      return out.subarray(0, CHUNK_HEADER_SIZE + payloadLength);
    },

    decode(digest: string, blob: Buffer): Buffer {
      return open(digest, blob);
    },

    decodeInto(digest: string, blob: Buffer, out: Buffer): Buffer {
      return open(digest, blob, out);
    },

    decodeAround(digest: string, blob: Buffer, out: Buffer): Buffer {
      const { flags, crc, plainLength } = parseChunkHeader(digest, blob);
      const payloadLength = blob.length - CHUNK_HEADER_SIZE;
      if (flags === 0 && !encrypted && payloadLength <= out.length) {
        // Stored as is: the payload is the plaintext, already in place.
        return checkStored(digest, out.subarray(0, payloadLength), crc, plainLength);
      }
      out.copy(blob, CHUNK_HEADER_SIZE, 0, Math.min(out.length, payloadLength));
      const plain = open(digest, blob, out);
      if (plain.buffer === out.buffer) return plain;
      // A chunk stored as is comes back as a view of the blob; the caller asked for `out`, and all of it.
      if (plain.length > out.length)
        throw new CorruptChunkError(digest, `decoded ${plain.length} bytes, more than the ${out.length} asked for`);
      return out.subarray(0, plain.copy(out));
    },

    decodeInPlace(digest: string, blob: Buffer, scratch: Buffer, out: Buffer): Buffer {
      const { flags, crc, plainLength } = parseChunkHeader(digest, blob);
      if (flags === 0 && !encrypted && blob.length - CHUNK_HEADER_SIZE <= out.length)
        return checkStored(digest, blob.subarray(CHUNK_HEADER_SIZE), crc, plainLength);
      // Decoding writes `out`, which the blob shares: it moves out of the way first.
      if (scratch.length < blob.length)
        throw new RangeError(`a scratch buffer of ${scratch.length} bytes cannot hold a blob of ${blob.length}`);
      const moved = scratch.subarray(0, blob.copy(scratch));
      const plain = open(digest, moved, out);
      if (plain.buffer === out.buffer) return plain;
      if (plain.length > out.length)
        throw new CorruptChunkError(digest, `decoded ${plain.length} bytes, more than the ${out.length} asked for`);
      return out.subarray(0, plain.copy(out));
    },
  };
}

/**
 * Sealing of an encrypted repository's metadata (format v2): restore point
 * manifests name the VM, its addresses and image paths, and indexes give the
 * shape of every disk, so neither may sit in clear beside encrypted chunks.
 *
 * A sealed file is SEAL_MAGIC, a purpose byte, 3 reserved bytes, then
 * nonce ‖ AES-256-GCM(plaintext) ‖ tag with those 12 header bytes as the
 * additional data: a manifest cannot be passed off as an index, and a flipped
 * bit anywhere fails the tag. Each purpose has its own sub-key, and so does
 * the HMAC that names an index (it keeps an index's name deterministic, so
 * writing the same index twice stores it once, without revealing a hash of
 * the plaintext).
 */
import { createCipheriv, createDecipheriv, createHmac, randomBytes } from 'node:crypto';
import { deriveSubkey } from './chunk-codec.js';
import {
  GCM_NONCE_SIZE,
  GCM_TAG_SIZE,
  KDF_INFO_INDEX,
  KDF_INFO_INDEX_NAME,
  KDF_INFO_MANIFEST,
  SEAL_HEADER_SIZE,
  SEAL_MAGIC,
  SEAL_PURPOSE_INDEX,
  SEAL_PURPOSE_MANIFEST,
} from './format.js';

export type SealPurpose = 'manifest' | 'index';

const PURPOSE_BYTE: Record<SealPurpose, number> = { manifest: SEAL_PURPOSE_MANIFEST, index: SEAL_PURPOSE_INDEX };

/** Whether a file's bytes are a sealed metadata file (as opposed to a format v1 plaintext one). */
export function isSealed(buf: Buffer): boolean {
  return buf.length >= SEAL_MAGIC.length && buf.subarray(0, SEAL_MAGIC.length).equals(SEAL_MAGIC);
}

export interface MetadataSeal {
  seal(purpose: SealPurpose, plain: Buffer): Buffer;
  /** The plaintext; throws an Error saying why when the file is not a sealed `purpose` file under this key. */
  open(purpose: SealPurpose, sealed: Buffer): Buffer;
  /** The name of an index file: HMAC-SHA-256 of its plaintext, hex. */
  indexName(plainIndex: Buffer): string;
}

export function createMetadataSeal(masterKey: Buffer, repoId: string): MetadataSeal {
  const keys: Record<SealPurpose, Buffer> = {
    manifest: deriveSubkey(masterKey, repoId, KDF_INFO_MANIFEST),
    index: deriveSubkey(masterKey, repoId, KDF_INFO_INDEX),
  };
  const nameKey = deriveSubkey(masterKey, repoId, KDF_INFO_INDEX_NAME);
  const headerFor = (purpose: SealPurpose): Buffer => {
    const h = Buffer.alloc(SEAL_HEADER_SIZE);
    SEAL_MAGIC.copy(h, 0);
    h.writeUInt8(PURPOSE_BYTE[purpose], SEAL_MAGIC.length);
    return h;
  };
  return {
    seal(purpose, plain) {
      const header = headerFor(purpose);
      const nonce = randomBytes(GCM_NONCE_SIZE);
      const cipher = createCipheriv('aes-256-gcm', keys[purpose], nonce);
      cipher.setAAD(header);
      return Buffer.concat([header, nonce, cipher.update(plain), cipher.final(), cipher.getAuthTag()]);
    },
    open(purpose, sealed) {
      if (!isSealed(sealed)) throw new Error('not a sealed file (bad magic)');
      if (sealed.length < SEAL_HEADER_SIZE + GCM_NONCE_SIZE + GCM_TAG_SIZE)
        throw new Error(`sealed file of ${sealed.length} bytes is too short`);
      const header = sealed.subarray(0, SEAL_HEADER_SIZE);
      if (!header.equals(headerFor(purpose)))
        throw new Error(`sealed file is not a ${purpose} (purpose ${header.readUInt8(SEAL_MAGIC.length)})`);
      const nonce = sealed.subarray(SEAL_HEADER_SIZE, SEAL_HEADER_SIZE + GCM_NONCE_SIZE);
      const decipher = createDecipheriv('aes-256-gcm', keys[purpose], nonce);
      decipher.setAAD(header);
      decipher.setAuthTag(sealed.subarray(sealed.length - GCM_TAG_SIZE));
      try {
        return Buffer.concat([
          decipher.update(sealed.subarray(SEAL_HEADER_SIZE + GCM_NONCE_SIZE, sealed.length - GCM_TAG_SIZE)),
          decipher.final(),
        ]);
      } catch {
        throw new Error('authentication tag mismatch (damaged, or sealed with another key)');
      }
    },
    indexName(plainIndex) {
      return createHmac('sha256', nameKey).update(plainIndex).digest('hex');
    },
  };
}

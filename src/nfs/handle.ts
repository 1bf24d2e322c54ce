/**
 * File handles (nfs_fh3, at most 64 bytes): magic, the persistent server id
 * and the datastore's stable file id. Nothing in-memory, so a handle given
 * out before a restart still resolves after it.
 */
import type { FileId } from '../datastore/types.js';
import { NFS_HANDLE_BYTES, NFS_HANDLE_MAGIC, NFS_SERVER_ID_BYTES } from '../formats.js';

// The layout is registered in src/formats.ts (and docs/formats.md, "NFS file handle").
const MAGIC = NFS_HANDLE_MAGIC;
export const SERVER_ID_BYTES = NFS_SERVER_ID_BYTES;
export const HANDLE_BYTES = NFS_HANDLE_BYTES;

export type HandleCheck = { ok: true; fileid: FileId } | { ok: false; reason: 'bad' | 'stale' };

export class HandleCodec {
  constructor(private readonly serverId: Buffer) {
    if (serverId.length !== SERVER_ID_BYTES) throw new RangeError(`server id must be ${SERVER_ID_BYTES} bytes`);
  }

  encode(fileid: FileId): Buffer {
    const b = Buffer.alloc(HANDLE_BYTES);
    MAGIC.copy(b, 0);
    this.serverId.copy(b, 4);
    b.writeBigUInt64BE(BigInt(fileid), 4 + SERVER_ID_BYTES);
    return b;
  }

  /** 'bad' = not one of our handles at all; 'stale' = ours in shape but from another server instance. */
  decode(fh: Buffer): HandleCheck {
    if (fh.length !== HANDLE_BYTES || !fh.subarray(0, 4).equals(MAGIC)) return { ok: false, reason: 'bad' };
    if (!fh.subarray(4, 4 + SERVER_ID_BYTES).equals(this.serverId)) return { ok: false, reason: 'stale' };
    const id = fh.readBigUInt64BE(4 + SERVER_ID_BYTES);
    if (id === 0n || id > BigInt(Number.MAX_SAFE_INTEGER)) return { ok: false, reason: 'bad' };
    return { ok: true, fileid: Number(id) };
  }
}

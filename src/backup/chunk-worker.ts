/**
 * One thread of the ChunkPool (see chunk-pool.ts for the protocol). The codec
 * is pure, so each worker builds its own from the repository config and key;
 * no file handle crosses the thread boundary, only the shared slot memory.
 */
import { closeSync, fsyncSync, openSync, renameSync, writeSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import type { PlacedBlob, RepoConfig } from '../repo/api.js';
import { crcMatches, createCodec } from '../repo/chunk-codec.js';
import { readBlobFrom, type BlobSource } from '../repo/chunk-store.js';
import { CorruptChunkError } from '../repo/contract.js';
import { maxBlobSize } from '../repo/format.js';
import { compressedPayload } from './signals.js';

export interface CodecInit {
  config: RepoConfig;
  /** The repository master key when encrypted. */
  key?: Uint8Array;
}

export type ChunkRequest =
  | { op: 'digest' | 'encode'; id: number; slot: number; length: number }
  | { op: 'stored'; id: number; slot: number; length: number; digest: string; source: BlobSource }
  | ({ op: 'place'; id: number; slot: number; length: number } & PlacedBlob);

const init = workerData as CodecInit & { memory: SharedArrayBuffer };
const codec = createCodec(init.config, init.key ? Buffer.from(init.key) : undefined);
const slotSize = init.config.chunkSize;
const zeros = Buffer.alloc(slotSize);
// Scratch for checking a stored blob, allocated on the first reuse (a first backup never needs it).
let blobScratch: Buffer | undefined;
let plainScratch: Buffer | undefined;
let encodeScratch: Buffer | undefined;

/**
 * Why the stored blob of a chunk we are about to reuse cannot be trusted, or
 * undefined when it is sound: its CRC matches and it decodes (GCM tag, zstd)
 * to exactly the bytes in the slot. Comparing with the slot proves what a
 * digest check would (the slot's bytes hash to `digest`) at a fraction of
 * the cost, so a reused chunk costs a read and a decompression, no hash.
 * `dataOk` tells a blob whose data is right but whose CRC field is not.
 */
function storedDamage(digest: string, source: BlobSource, plain: Buffer): { reason: string; dataOk: boolean } | undefined {
  blobScratch ??= Buffer.allocUnsafeSlow(maxBlobSize(slotSize) + 1);
  plainScratch ??= Buffer.allocUnsafeSlow(slotSize);
  let blob: Buffer;
  try {
    blob = readBlobFrom(digest, source, blobScratch);
  } catch (err) {
    return { reason: err instanceof CorruptChunkError ? err.reason : `unreadable: ${(err as Error).message}`, dataOk: false };
  }
  let dataOk: boolean;
  try {
    dataOk = codec.decodeInto(digest, blob, plainScratch).equals(plain);
  } catch (err) {
    if (!(err instanceof CorruptChunkError)) throw err;
    return { reason: err.reason, dataOk: false };
  }
  if (!dataOk) return { reason: 'decodes to other bytes than the chunk', dataOk };
  return crcMatches(digest, blob) ? undefined : { reason: 'CRC mismatch', dataOk };
}

/**
 * Encodes the slot and writes the blob to `p.tmp`, then renames it onto
 * `p.target` (ChunkStore.insertPlaced): the blob stays in this thread, so
 * the main thread neither receives nor collects it, and the file calls cost
 * no hop through libuv's pool. Returns what SignalsRecorder.newChunk needs.
 */
function place(plain: Buffer, p: PlacedBlob): { size: number; stored: number; incompressible: boolean } {
  // Reused for every chunk: a fresh megabyte per blob costs page faults and a collection, in every backup.
  encodeScratch ??= Buffer.allocUnsafeSlow(maxBlobSize(slotSize));
  const blob = codec.encodeInto(plain, encodeScratch);
  const fd = openSync(p.tmp, 'wx', p.mode);
  try {
    for (let n = 0; n < blob.length;) n += writeSync(fd, blob, n, blob.length - n);
    if (p.fsync) fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(p.tmp, p.target);
  return { size: blob.length, ...compressedPayload(blob, plain.length) };
}

/**
 * The blob of a chunk for the main thread (a store without files: object storage), in a buffer of its
 * own that is transferred, not copied. Encoded into the thread's scratch first: encode() allocated a
 * compression bound (4 MiB of fresh pages per chunk), copied the frame out of it and then again behind
 * the header, and compressed incompressible chunks in full before storing them as they are.
 */
function encodeOwned(plain: Buffer): Buffer {
  encodeScratch ??= Buffer.allocUnsafeSlow(maxBlobSize(slotSize));
  const blob = codec.encodeInto(plain, encodeScratch);
  const out = Buffer.allocUnsafeSlow(blob.length);
  blob.copy(out);
  return out;
}

const port = parentPort;
if (!port) throw new Error('chunk-worker must run as a worker thread');

/** Hands a buffer back without copying when it owns its memory. */
function reply(id: number, data: Buffer): void {
  const whole = data.byteOffset === 0 && data.byteLength === data.buffer.byteLength && data.buffer instanceof ArrayBuffer;
  const out = whole ? data : Buffer.allocUnsafeSlow(data.length);
  if (!whole) data.copy(out);
  port?.postMessage({ id, data: out }, [out.buffer as ArrayBuffer]);
}

port.on('message', (m: ChunkRequest) => {
  try {
    const plain = Buffer.from(init.memory, m.slot * slotSize, m.length);
    if (m.op === 'digest') {
      port.postMessage({ id: m.id, digest: plain.equals(zeros.subarray(0, m.length)) ? null : codec.digest(plain) });
    } else if (m.op === 'stored') {
      port.postMessage({ id: m.id, damage: storedDamage(m.digest, m.source, plain) ?? null });
    } else if (m.op === 'place') {
      port.postMessage({ id: m.id, placed: place(plain, m) });
    } else {
      reply(m.id, encodeOwned(plain));
    }
  } catch (err) {
    // The errno code travels too: the store tells a full file system (ENOSPC) from other failures by it.
    port.postMessage({ id: m.id, error: (err as Error).message, code: (err as NodeJS.ErrnoException).code });
  }
});

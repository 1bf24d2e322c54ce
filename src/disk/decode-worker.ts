/**
 * Worker thread for DecodePool: opens the repository itself (through the
 * public RepositoryReader contract) and answers "decode chunk i of disk d of
 * point p" with the plaintext: written into the shared memory the request
 * names, or else transferred, not copied.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { openRepository } from '../repo/repository.js';
import { CorruptChunkError, type DiskSource, type RepositoryReader } from '../repo/contract.js';
import { maxBlobSize } from '../repo/format.js';

export interface DecodeRequest {
  id: number;
  point: string;
  disk: string;
  index: number;
  /** Shared memory to decode into; without it the plaintext is transferred back. */
  into?: Uint8Array;
}

export type DecodeReply =
  | { id: number; ok: true; data: Uint8Array | null }
  | { id: number; ok: true; length: number | null; offset?: number }
  | { id: number; ok: false; corrupt?: { digest: string; reason: string; store?: string }; message: string };

const { repo, keyFile } = workerData as { repo: string; keyFile?: string };
let repository: Promise<RepositoryReader> | undefined;
const disks = new Map<string, Promise<DiskSource>>();

function disk(point: string, name: string): Promise<DiskSource> {
  const key = `${point}/${name}`;
  let d = disks.get(key);
  if (!d) {
    repository ??= openRepository(repo, keyFile ? { keyFile } : {});
    d = repository.then((r) => r.openDisk(point, name));
    disks.set(key, d);
  }
  return d;
}

/** The blob buffer reused by every synchronous read (sized for the largest chunk size); one byte past the largest blob. */
let scratch: Buffer | undefined;

/**
 * One chunk at a time, with blocking reads into the reused scratch buffer when
 * the source offers them: this thread has nothing else to do meanwhile. With
 * `into` (a cache slot) a chunk costs no allocation at all.
 */
function decode(d: DiskSource, index: number, into: Buffer | undefined): Promise<Buffer | null> | Buffer | null {
  if (!d.readChunkSync) return into && d.readChunkInto ? d.readChunkInto(index, into) : d.readChunk(index);
  if (!scratch || scratch.length < maxBlobSize(d.chunkSize) + 1) scratch = Buffer.allocUnsafeSlow(maxBlobSize(d.chunkSize) + 1);
  return d.readChunkSync(index, scratch, into);
}

parentPort?.on('message', (req: DecodeRequest) => {
  const into = req.into ? Buffer.from(req.into.buffer, req.into.byteOffset, req.into.byteLength) : undefined;
  disk(req.point, req.disk)
    .then((d) => decode(d, req.index, into))
    .then(
      (buf) => {
        if (into) {
          // The bytes are in shared memory already: only where they lie goes back (a direct read puts them past an aligned start).
          const inPlace = buf !== null && buf.buffer === into.buffer;
          if (buf && !inPlace) buf.copy(into);
          const offset = inPlace ? buf.byteOffset - into.byteOffset : 0;
          parentPort?.postMessage({ id: req.id, ok: true, length: buf ? buf.length : null, offset } satisfies DecodeReply);
          return;
        }
        if (!buf) {
          parentPort?.postMessage({ id: req.id, ok: true, data: null } satisfies DecodeReply);
          return;
        }
        // Transfer when the buffer owns its memory; otherwise copy once.
        const own = buf.byteOffset === 0 && buf.byteLength === buf.buffer.byteLength && buf.buffer instanceof ArrayBuffer;
        const data = own ? new Uint8Array(buf.buffer, 0, buf.byteLength) : new Uint8Array(buf);
        parentPort?.postMessage({ id: req.id, ok: true, data } satisfies DecodeReply, [data.buffer as ArrayBuffer]);
      },
      (err: unknown) => {
        const corrupt =
          err instanceof CorruptChunkError
            ? { digest: err.digest, reason: err.reason, ...(err.store ? { store: err.store } : {}) }
            : undefined;
        parentPort?.postMessage({
          id: req.id,
          ok: false,
          message: (err as Error).message,
          ...(corrupt ? { corrupt } : {}),
        } satisfies DecodeReply);
      },
    );
});

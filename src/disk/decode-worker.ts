/**
 * Worker thread for DecodePool: opens the repository itself (through the
 * public RepositoryReader contract) and answers "decode chunk i of disk d of
 * point p" with the plaintext, transferred, not copied.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { openRepository } from '../repo/repository.js';
import { CorruptChunkError, type DiskSource, type RepositoryReader } from '../repo/contract.js';

export interface DecodeRequest {
  id: number;
  point: string;
  disk: string;
  index: number;
}

export type DecodeReply =
  | { id: number; ok: true; data: Uint8Array | null }
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

parentPort?.on('message', (req: DecodeRequest) => {
  disk(req.point, req.disk).then((d) => d.readChunk(req.index)).then(
    (buf) => {
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
      const corrupt = err instanceof CorruptChunkError ? { digest: err.digest, reason: err.reason, ...(err.store ? { store: err.store } : {}) } : undefined;
      parentPort?.postMessage({ id: req.id, ok: false, message: (err as Error).message, ...(corrupt ? { corrupt } : {}) } satisfies DecodeReply);
    },
  );
});

/**
 * One thread of the ChunkPool (see chunk-pool.ts for the protocol). The codec
 * is pure, so each worker builds its own from the repository config and key;
 * no file handle crosses the thread boundary, only the shared slot memory.
 */
import { parentPort, workerData } from 'node:worker_threads';
import type { RepoConfig } from '../repo/api.js';
import { createCodec } from '../repo/chunk-codec.js';

export interface CodecInit {
  config: RepoConfig;
  /** The repository master key when encrypted. */
  key?: Uint8Array;
}

type Request = { op: 'digest' | 'encode'; id: number; slot: number; length: number };

const init = workerData as CodecInit & { memory: SharedArrayBuffer };
const codec = createCodec(init.config, init.key ? Buffer.from(init.key) : undefined);
const slotSize = init.config.chunkSize;
const zeros = Buffer.alloc(slotSize);

const port = parentPort;
if (!port) throw new Error('chunk-worker must run as a worker thread');

/** Hands a buffer back without copying when it owns its memory. */
function reply(id: number, data: Buffer): void {
  const whole = data.byteOffset === 0 && data.byteLength === data.buffer.byteLength && data.buffer instanceof ArrayBuffer;
  const out = whole ? data : Buffer.allocUnsafeSlow(data.length);
  if (!whole) data.copy(out);
  port?.postMessage({ id, data: out }, [out.buffer as ArrayBuffer]);
}

port.on('message', (m: Request) => {
  try {
    const plain = Buffer.from(init.memory, m.slot * slotSize, m.length);
    if (m.op === 'digest') {
      port.postMessage({ id: m.id, digest: plain.equals(zeros.subarray(0, m.length)) ? null : codec.digest(plain) });
    } else {
      reply(m.id, codec.encode(plain));
    }
  } catch (err) {
    port.postMessage({ id: m.id, error: (err as Error).message });
  }
});

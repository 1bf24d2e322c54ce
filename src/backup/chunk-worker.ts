/**
 * One hashing/compressing thread of the ChunkPool (see chunk-pool.ts for the
 * protocol). The codec is pure, so each worker builds its own from the
 * repository config and key; no file handle crosses the thread boundary.
 */
import { parentPort, workerData } from 'node:worker_threads';
import type { RepoConfig } from '../repo/api.js';
import { createCodec } from '../repo/chunk-codec.js';

export interface CodecInit {
  config: RepoConfig;
  /** The repository master key when encrypted. */
  key?: Uint8Array;
}

type Request = { op: 'digest'; id: number; plain: Uint8Array } | { op: 'encode'; id: number } | { op: 'drop'; id: number };

const init = workerData as CodecInit;
const codec = createCodec(init.config, init.key ? Buffer.from(init.key) : undefined);
const held = new Map<number, Buffer>();
const zeros = new Map<number, Buffer>();

function isZero(b: Buffer): boolean {
  let z = zeros.get(b.length);
  if (!z) {
    z = Buffer.alloc(b.length);
    zeros.set(b.length, z);
  }
  return b.equals(z);
}

const port = parentPort;
if (!port) throw new Error('chunk-worker must run as a worker thread');

port.on('message', (m: Request) => {
  try {
    if (m.op === 'digest') {
      const plain = Buffer.from(m.plain.buffer, m.plain.byteOffset, m.plain.byteLength);
      if (isZero(plain)) {
        port.postMessage({ id: m.id, digest: null });
        return;
      }
      const digest = codec.digest(plain);
      held.set(m.id, plain);
      port.postMessage({ id: m.id, digest });
    } else if (m.op === 'encode') {
      const plain = held.get(m.id);
      held.delete(m.id);
      if (!plain) throw new Error(`chunk ${m.id} is not held by this worker`);
      const blob = codec.encode(plain);
      const whole = blob.byteOffset === 0 && blob.byteLength === blob.buffer.byteLength;
      // Only a buffer that owns its whole ArrayBuffer may be transferred (small ones share Node's pool).
      const out = whole ? blob : Buffer.allocUnsafeSlow(blob.length);
      if (!whole) blob.copy(out);
      port.postMessage({ op: 'encode', id: m.id, blob: out }, [out.buffer as ArrayBuffer]);
    } else {
      held.delete(m.id);
    }
  } catch (err) {
    port.postMessage({ op: m.op, id: m.id, error: (err as Error).message });
  }
});

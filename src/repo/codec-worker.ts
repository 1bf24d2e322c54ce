/**
 * Worker side of CodecPool: builds its own codec from (config, key) and
 * encodes or checks chunks off the main thread (zstd-napi and hashing are
 * synchronous, so this is how both cores get used).
 */
import { parentPort, workerData } from 'node:worker_threads';
import type { RepoConfig } from './api.js';
import { createCodec, crcMatches, withCorrectCrc } from './chunk-codec.js';
import { CorruptChunkError } from './contract.js';

interface Data {
  config: RepoConfig;
  key?: Uint8Array;
}
export type CodecRequest =
  { id: number; op: 'check'; digest: string; blob: Uint8Array; expectedLength?: number } | { id: number; op: 'encode'; plain: Uint8Array };
export type CodecReply =
  /** For check: `blob` is set when only the CRC field was wrong; it holds the blob with a correct one. */
  | { id: number; ok: true; digest?: string; blob?: Uint8Array; length?: number }
  | { id: number; ok: false; corrupt: boolean; reason: string };

const { config, key } = workerData as Data;
const codec = createCodec(config, key ? Buffer.from(key) : undefined);
const port = parentPort;
if (!port) throw new Error('codec-worker must run in a worker thread');

let plainScratch: Buffer | undefined;

/**
 * Decodes a blob whose CRC does not match without trusting the CRC: into a
 * bounded buffer (a damaged zstd frame cannot make it allocate), with the
 * digest (and GCM tag) proving every byte. Throws the CorruptChunkError of
 * decode() when the data is wrong too.
 */
function decodeDespiteCrc(digest: string, blob: Buffer): Buffer {
  plainScratch ??= Buffer.allocUnsafeSlow(config.chunkSize);
  return codec.decodeInto(digest, blob, plainScratch);
}

port.on('message', (req: CodecRequest) => {
  try {
    if (req.op === 'check') {
      const blob = Buffer.from(req.blob.buffer, req.blob.byteOffset, req.blob.byteLength);
      const crcOk = crcMatches(req.digest, blob);
      const plain = crcOk ? codec.decode(req.digest, blob) : decodeDespiteCrc(req.digest, blob);
      if (req.expectedLength !== undefined && plain.length !== req.expectedLength) {
        port.postMessage({
          id: req.id,
          ok: false,
          corrupt: true,
          reason: `decoded ${plain.length} bytes, the index needs ${req.expectedLength}`,
        });
        return;
      }
      if (crcOk) {
        port.postMessage({ id: req.id, ok: true, length: plain.length } satisfies CodecReply);
      } else {
        const fixed = new Uint8Array(withCorrectCrc(blob));
        port.postMessage({ id: req.id, ok: true, length: plain.length, blob: fixed } satisfies CodecReply, [fixed.buffer]);
      }
    } else {
      const plain = Buffer.from(req.plain.buffer, req.plain.byteOffset, req.plain.byteLength);
      const digest = codec.digest(plain);
      const blob = codec.encode(plain);
      const out = new Uint8Array(blob);
      port.postMessage({ id: req.id, ok: true, digest, blob: out } satisfies CodecReply, [out.buffer]);
    }
  } catch (err) {
    const corrupt = err instanceof CorruptChunkError;
    port.postMessage({ id: req.id, ok: false, corrupt, reason: corrupt ? err.reason : (err as Error).message } satisfies CodecReply);
  }
});

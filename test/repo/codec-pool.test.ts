import t from 'tap';
import { randomBytes } from 'node:crypto';
import { CodecPool } from '../../src/repo/codec-pool.js';
import { createCodec, keyCheckValue } from '../../src/repo/chunk-codec.js';
import { CorruptChunkError } from '../../src/repo/contract.js';
import type { RepoConfig } from '../../src/repo/api.js';
import { chunkBytes } from './fixtures/points.js';

const key = randomBytes(32);
const config: RepoConfig = {
  format: 'restorelab-repository',
  version: 1,
  id: 'pool-test',
  chunkSize: 1024 * 1024,
  hash: 'hmac-sha256',
  compression: 'zstd',
  encryption: 'aes-256-gcm',
  created: '2026-01-01T00:00:00Z',
  keyCheck: keyCheckValue(key, 'pool-test'),
};

t.test('workers encode and check exactly like the in-thread codec', async (t) => {
  const pool = new CodecPool(config, key, 2);
  t.teardown(() => pool.close());
  const local = createCodec(config, key);
  const plains = Array.from({ length: 12 }, (_, i) => chunkBytes(i + 1, 1024 * 1024));
  const encoded = await Promise.all(plains.map((p) => pool.encode(Buffer.from(p))));
  encoded.forEach(({ digest, blob }, i) => {
    const plain = plains[i] as Buffer;
    t.equal(digest, local.digest(plain));
    t.ok(local.decode(digest, blob).equals(plain), `chunk ${i} decodes in this thread`);
  });
  const lengths = await Promise.all(encoded.map(({ digest, blob }) => pool.check(digest, Buffer.from(blob), 1024 * 1024)));
  t.same(
    lengths,
    plains.map((p) => ({ length: p.length })),
    'sound blobs: lengths, nothing to repair',
  );
});

t.test('check rejects corrupt blobs and wrong lengths with CorruptChunkError; the pool keeps working', async (t) => {
  const pool = new CodecPool(config, key, 2);
  t.teardown(() => pool.close());
  const { digest, blob } = await pool.encode(chunkBytes(99, 4096));
  const bad = Buffer.from(blob);
  bad.writeUInt8(bad.readUInt8(40) ^ 1, 40);
  const err = await pool.check(digest, bad).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.ok(err instanceof CorruptChunkError);
  t.equal((err as CorruptChunkError).reason, 'CRC mismatch');
  await t.rejects(pool.check(digest, Buffer.from(blob), 8192), { name: 'CorruptChunkError', reason: /the index needs 8192/ });
  t.same(await pool.check(digest, Buffer.from(blob)), { length: 4096 });
  // Only the CRC field damaged: the data is proven by the digest, and the blob comes back with a correct CRC.
  const crcOnly = Buffer.from(blob);
  crcOnly.writeUInt8(crcOnly.readUInt8(13) ^ 0x10, 13);
  const r = await pool.check(digest, crcOnly, 4096);
  t.equal(r.length, 4096);
  t.ok(r.crcFixed?.equals(blob), 'the repaired blob is the original, byte for byte');
});

import t from 'tap';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createCodec, keyCheckValue } from '../../src/repo/chunk-codec.js';
import { CorruptChunkError } from '../../src/repo/contract.js';
import type { RepoConfig } from '../../src/repo/api.js';
import { CHUNK_HEADER_SIZE, CHUNK_MAGIC, maxBlobSize } from '../../src/repo/format.js';
import { readBlobAroundSync } from '../../src/repo/chunk-store.js';
import { chunkBytes } from './fixtures/points.js';

const plainConfig: RepoConfig = {
  format: 'restorelab-repository',
  version: 1,
  id: 'test-repo',
  chunkSize: 1024 * 1024,
  hash: 'sha256',
  compression: 'zstd',
  encryption: 'none',
  created: '2026-01-01T00:00:00Z',
};
const key = randomBytes(32);
const encConfig: RepoConfig = { ...plainConfig, hash: 'hmac-sha256', encryption: 'aes-256-gcm', keyCheck: keyCheckValue(key, 'test-repo') };

function corruptReason(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    if (err instanceof CorruptChunkError) return err.reason;
    throw err;
  }
  throw new Error('expected a CorruptChunkError');
}

t.test('plain: round trip, compressed, digest is sha256', async (t) => {
  const codec = createCodec(plainConfig);
  const plain = chunkBytes(1, 1024 * 1024);
  const digest = codec.digest(plain);
  t.equal(digest, (await import('node:crypto')).createHash('sha256').update(plain).digest('hex'));
  const blob = codec.encode(plain);
  t.ok(blob.subarray(0, 8).equals(CHUNK_MAGIC));
  t.equal(blob.readUInt8(8) & 1, 1, 'compressed flag set');
  t.ok(blob.length < plain.length * 0.8, `compressed ${plain.length} → ${blob.length}`);
  t.ok(codec.decode(digest, blob).equals(plain));
});

t.test('incompressible data is stored raw and still round-trips', async (t) => {
  const codec = createCodec(plainConfig);
  const plain = randomBytes(300_000);
  const blob = codec.encode(plain);
  t.equal(blob.readUInt8(8) & 1, 0);
  t.equal(blob.length, plain.length + CHUNK_HEADER_SIZE);
  t.ok(codec.decode(codec.digest(plain), blob).equals(plain));
});

t.test('a flipped payload byte fails the CRC; a fixed-up CRC fails later checks', async (t) => {
  const codec = createCodec(plainConfig);
  const plain = chunkBytes(2, 500_000);
  const digest = codec.digest(plain);
  const blob = codec.encode(plain);
  const bad = Buffer.from(blob);
  bad.writeUInt8(bad.readUInt8(CHUNK_HEADER_SIZE + 100) ^ 0x40, CHUNK_HEADER_SIZE + 100);
  t.equal(
    corruptReason(() => codec.decode(digest, bad)),
    'CRC mismatch',
  );
  // Someone who also rewrites the CRC still cannot make it serve wrong data.
  const { crc32 } = await import('node:zlib');
  bad.writeUInt32LE(crc32(bad.subarray(CHUNK_HEADER_SIZE)), 12);
  t.match(
    corruptReason(() => codec.decode(digest, bad)),
    /zstd|digest mismatch|decoded/,
  );
});

t.test('bad magic, unknown flags, truncation and wrong digest are rejected', async (t) => {
  const codec = createCodec(plainConfig);
  const plain = chunkBytes(3, 4096);
  const digest = codec.digest(plain);
  const blob = codec.encode(plain);
  const badMagic = Buffer.from(blob);
  badMagic.writeUInt8(0, 0);
  t.equal(
    corruptReason(() => codec.decode(digest, badMagic)),
    'bad magic',
  );
  const badFlags = Buffer.from(blob);
  badFlags.writeUInt8(badFlags.readUInt8(8) | 0x80, 8);
  t.match(
    corruptReason(() => codec.decode(digest, badFlags)),
    /unknown flags/,
  );
  t.match(
    corruptReason(() => codec.decode(digest, blob.subarray(0, 10))),
    /shorter than its/,
  );
  t.equal(
    corruptReason(() => codec.decode('0'.repeat(63) + '1', blob)),
    'digest mismatch',
  );
  const err = t.throws(() => codec.decode(digest, badMagic)) as unknown as CorruptChunkError;
  t.match(err.message, new RegExp(`chunk ${digest}`));
});

t.test('encrypted: keyed digest, no plaintext leak, tag checks, wrong key fails', async (t) => {
  const codec = createCodec(encConfig, key);
  const plain = chunkBytes(4, 1024 * 1024);
  const digest = codec.digest(plain);
  t.not(digest, createCodec(plainConfig).digest(plain), 'digest is keyed, not the plain sha256');
  const blob = codec.encode(plain);
  t.equal(blob.readUInt8(8), 3, 'compressed + encrypted');
  t.not(blob.toString('hex').indexOf(plain.subarray(0, 32).toString('hex')), 0);
  t.ok(codec.decode(digest, blob).equals(plain));
  t.not(
    codec
      .encode(plain)
      .subarray(CHUNK_HEADER_SIZE, CHUNK_HEADER_SIZE + 12)
      .toString('hex'),
    blob.subarray(CHUNK_HEADER_SIZE, CHUNK_HEADER_SIZE + 12).toString('hex'),
    'fresh nonce per encode',
  );

  const bad = Buffer.from(blob);
  bad.writeUInt8(bad.readUInt8(blob.length - 3) ^ 1, blob.length - 3);
  const { crc32 } = await import('node:zlib');
  bad.writeUInt32LE(crc32(bad.subarray(CHUNK_HEADER_SIZE)), 12);
  t.match(
    corruptReason(() => codec.decode(digest, bad)),
    /authentication tag mismatch/,
  );

  const other = createCodec({ ...encConfig }, randomBytes(32));
  t.match(
    corruptReason(() => other.decode(digest, blob)),
    /authentication tag mismatch/,
  );
  t.match(
    corruptReason(() => createCodec(plainConfig).decode(digest, blob)),
    /encrypted in an unencrypted repository/,
  );
  t.throws(() => createCodec(encConfig), /needs its key/);
});

t.test('a chunk larger than the chunk size is refused', async (t) => {
  const codec = createCodec({ ...plainConfig, chunkSize: 256 * 1024 });
  t.throws(() => codec.encode(Buffer.alloc(256 * 1024 + 1)), /exceeds the repository chunk size/);
});

t.test("encodeInto: the same blob as encode, in the caller's buffer, reused from chunk to chunk", async (t) => {
  const codec = createCodec(plainConfig);
  const out = Buffer.alloc(maxBlobSize(plainConfig.chunkSize));
  const cases: [string, Buffer][] = [
    ['random (stored raw)', randomBytes(plainConfig.chunkSize)],
    ['one byte repeated (compressed)', Buffer.alloc(plainConfig.chunkSize, 7)],
    ['half random, half zeros (compressed)', Buffer.concat([randomBytes(512 * 1024), Buffer.alloc(512 * 1024)])],
    ['empty', Buffer.alloc(0)],
    ['short text', Buffer.from('hello hello hello hello hello hello')],
    ['one byte', Buffer.from([1])],
  ];
  for (const [what, plain] of cases) {
    const blob = codec.encodeInto(plain, out);
    t.ok(blob.buffer === out.buffer && blob.byteOffset === out.byteOffset, `${what}: a view of the caller's buffer`);
    t.ok(blob.equals(codec.encode(plain)), `${what}: byte for byte what encode() makes`);
    t.ok(codec.decode(codec.digest(plain), Buffer.from(blob)).equals(plain), `${what}: decodes back`);
  }
  t.throws(() => codec.encodeInto(Buffer.alloc(plainConfig.chunkSize + 1), out), /exceeds the repository chunk size/);
  t.throws(() => codec.encodeInto(Buffer.alloc(10), Buffer.alloc(100)), /cannot hold a blob/);
});

t.test('encodeInto, encrypted: a sealed blob that decodes with the key', async (t) => {
  const codec = createCodec(encConfig, key);
  const out = Buffer.alloc(maxBlobSize(encConfig.chunkSize));
  const plain = Buffer.concat([randomBytes(1000), Buffer.alloc(100_000, 3)]);
  const blob = codec.encodeInto(plain, out);
  t.ok(blob.buffer === out.buffer, "in the caller's buffer");
  t.notOk(blob.includes(plain.subarray(0, 64)), 'no plaintext in the blob');
  t.ok(codec.decode(codec.digest(plain), Buffer.from(blob)).equals(plain));
});

t.test("decodeInto: the same plaintext as decode, in the caller's buffer, with the same checks", async (t) => {
  for (const [name, codec] of [
    ['plain', createCodec(plainConfig)],
    ['encrypted', createCodec(encConfig, key)],
  ] as const) {
    const out = Buffer.alloc(plainConfig.chunkSize);
    const text = chunkBytes(7, 700_000);
    const textBlob = codec.encode(text);
    const got = codec.decodeInto(codec.digest(text), textBlob, out);
    t.ok(got.equals(text), `${name}: compressed chunk decodes`);
    if (name === 'plain') t.equal(got.buffer, out.buffer, 'into the given buffer');
    const noise = randomBytes(200_000);
    t.ok(codec.decodeInto(codec.digest(noise), codec.encode(noise), out).equals(noise), `${name}: stored-raw chunk decodes`);
    const bad = Buffer.from(textBlob);
    bad.writeUInt8(bad.readUInt8(CHUNK_HEADER_SIZE + 3) ^ 1, CHUNK_HEADER_SIZE + 3);
    t.equal(
      corruptReason(() => codec.decodeInto(codec.digest(text), bad, out)),
      'CRC mismatch',
      `${name}: CRC checked`,
    );
    t.equal(
      corruptReason(() => codec.decodeInto('0'.repeat(64), textBlob, out)),
      'digest mismatch',
      `${name}: digest checked`,
    );
  }
  const codec = createCodec(plainConfig);
  const plain = chunkBytes(8, 500_000);
  t.match(
    corruptReason(() => codec.decodeInto(codec.digest(plain), codec.encode(plain), Buffer.alloc(1000))),
    /zstd/,
    'a frame larger than the buffer is corrupt, not an overflow',
  );
});

t.test('decodeInto checks the CRC only when another check fails; decode (verify) checks it first', async (t) => {
  const codec = createCodec(plainConfig);
  const plain = chunkBytes(9, 400_000);
  const digest = codec.digest(plain);
  const blob = codec.encode(plain);
  const badCrcField = Buffer.from(blob);
  badCrcField.writeUInt32LE((badCrcField.readUInt32LE(12) ^ 1) >>> 0, 12);
  t.equal(
    corruptReason(() => codec.decode(digest, badCrcField)),
    'CRC mismatch',
    'verify reports a damaged CRC field',
  );
  t.ok(
    codec.decodeInto(digest, badCrcField, Buffer.alloc(plainConfig.chunkSize)).equals(plain),
    'the payload its digest proves is still served',
  );
  const badPayload = Buffer.from(blob);
  badPayload.writeUInt8(badPayload.readUInt8(CHUNK_HEADER_SIZE + 50) ^ 4, CHUNK_HEADER_SIZE + 50);
  t.equal(
    corruptReason(() => codec.decodeInto(digest, badPayload, Buffer.alloc(plainConfig.chunkSize))),
    'CRC mismatch',
    'damaged storage is named as such',
  );
});

t.test('decodeAround: a blob read around a gap (payload head straight into the slot) decodes as decodeInto does', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rl-around-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  let n = 0;
  /** The blob as a chunk-store file, read back the way a decode worker reads it. */
  const readAround = (blob: Buffer, out: Buffer): Buffer => {
    const file = path.join(dir, `blob-${n++}`);
    fs.writeFileSync(file, blob);
    const scratch = Buffer.alloc(maxBlobSize(plainConfig.chunkSize) + 1, 0xee);
    return readBlobAroundSync('x', file, scratch, out);
  };
  for (const [name, codec] of [
    ['plain', createCodec(plainConfig)],
    ['encrypted', createCodec(encConfig, key)],
  ] as const) {
    for (const [kind, plain] of [
      ['compressed', chunkBytes(11, 700_000)],
      ['stored as is', randomBytes(plainConfig.chunkSize)],
      ['short, stored as is', randomBytes(3000)],
    ] as const) {
      const out = Buffer.alloc(plain.length, 0xaa);
      const got = codec.decodeAround(codec.digest(plain), readAround(codec.encode(plain), out), out);
      t.ok(got.equals(plain), `${name}, ${kind}: the plaintext`);
      t.equal(got.buffer, out.buffer, `${name}, ${kind}: in the caller's buffer`);
    }
  }
  const codec = createCodec(plainConfig);
  const noise = randomBytes(plainConfig.chunkSize);
  const digest = codec.digest(noise);
  const blob = codec.encode(noise);
  const flipped = Buffer.from(blob);
  flipped.writeUInt8(flipped.readUInt8(CHUNK_HEADER_SIZE + 1000) ^ 1, CHUNK_HEADER_SIZE + 1000);
  const out = Buffer.alloc(noise.length);
  t.equal(
    corruptReason(() => codec.decodeAround(digest, readAround(flipped, out), out)),
    'CRC mismatch',
    'a flipped byte of a chunk stored as is fails where it lies, and is named damaged storage',
  );
  const wrongCrcField = Buffer.from(blob);
  wrongCrcField.writeUInt32LE((wrongCrcField.readUInt32LE(12) ^ 1) >>> 0, 12);
  t.ok(codec.decodeAround(digest, readAround(wrongCrcField, out), out).equals(noise), 'the payload its digest proves is still served');
  t.equal(
    corruptReason(() => codec.decodeAround('0'.repeat(64), readAround(blob, out), out)),
    'digest mismatch',
    'the digest is checked on the bytes in place',
  );
  // The stored chunk is longer than the chunk it is read for: the digest proves a longer plaintext, which is not this chunk.
  const small = Buffer.alloc(4096);
  t.match(
    corruptReason(() => codec.decodeAround(digest, readAround(blob, small), small)),
    /decoded|header says/,
    'a blob longer than the chunk is refused, not cut to fit',
  );
  const text = chunkBytes(12, 600_000);
  const textBlob = codec.encode(text);
  textBlob.writeUInt8(textBlob.readUInt8(CHUNK_HEADER_SIZE + 40) ^ 4, CHUNK_HEADER_SIZE + 40);
  const textOut = Buffer.alloc(text.length);
  t.equal(
    corruptReason(() => codec.decodeAround(codec.digest(text), readAround(textBlob, textOut), textOut)),
    'CRC mismatch',
  );
});

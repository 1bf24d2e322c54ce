import t from 'tap';
import { decodeFixedIndex, encodeFixedIndex } from '../../src/repo/fixed-index.js';
import { FIDX_HEADER_SIZE, FIDX_MAGIC } from '../../src/repo/format.js';
import { RestorelabError } from '../../src/errors.js';

const d = (c: string): string => c.repeat(64);
const index = { size: 3 * 1024 * 1024 + 5, chunkSize: 1024 * 1024, digests: [d('a'), null, d('b'), d('a')] };

function corruptCode(buf: Buffer): string {
  try {
    decodeFixedIndex(buf, 'test.fidx');
  } catch (err) {
    if (err instanceof RestorelabError) return `${err.code}: ${err.message}`;
    throw err;
  }
  throw new Error('expected the index to be rejected');
}

t.test('round trip keeps size, chunk size, digests and holes', async (t) => {
  const buf = encodeFixedIndex(index);
  t.equal(buf.length, FIDX_HEADER_SIZE + 4 * 32);
  t.ok(buf.subarray(0, 8).equals(FIDX_MAGIC));
  t.same(decodeFixedIndex(buf, 'x'), index);
  t.ok(buf.subarray(FIDX_HEADER_SIZE + 32, FIDX_HEADER_SIZE + 64).equals(Buffer.alloc(32)), 'a hole is 32 zero bytes');
});

t.test('an empty disk has an index with no digests', async (t) => {
  t.same(decodeFixedIndex(encodeFixedIndex({ size: 0, chunkSize: 1024, digests: [] }), 'x'), { size: 0, chunkSize: 1024, digests: [] });
});

t.test('the digest count must match size / chunk size', async (t) => {
  t.throws(() => encodeFixedIndex({ ...index, digests: [d('a')] }), /needs 4 digests, got 1/);
  t.throws(() => encodeFixedIndex({ ...index, digests: [d('0'), null, null, null] }), /reserved for holes/);
});

t.test('corrupt headers and bodies are rejected before anything is trusted', async (t) => {
  const good = encodeFixedIndex(index);
  const badMagic = Buffer.from(good);
  badMagic.write('XXXX', 0);
  t.match(corruptCode(badMagic), /INDEX_CORRUPT: fixed index test.fidx is corrupt: bad magic/);
  t.match(corruptCode(good.subarray(0, 20)), /shorter than the 64-byte header/);
  t.match(corruptCode(good.subarray(0, good.length - 32)), /announces 4 digests/);
  const hugeCount = Buffer.from(good);
  hugeCount.writeBigUInt64LE(1n << 40n, 24);
  t.match(corruptCode(hugeCount), /announces/);
  const badVersion = Buffer.from(good);
  badVersion.writeUInt32LE(9, 8);
  t.match(corruptCode(badVersion), /unknown index version 9/);
  const flipped = Buffer.from(good);
  flipped.writeUInt8(flipped.readUInt8(FIDX_HEADER_SIZE + 70) ^ 1, FIDX_HEADER_SIZE + 70);
  t.match(corruptCode(flipped), /checksum mismatch/);
  const badSize = Buffer.from(good);
  badSize.writeBigUInt64LE(BigInt(10 * 1024 * 1024), 16);
  t.match(corruptCode(badSize), /header fields disagree/);
});

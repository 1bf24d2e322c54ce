import t from 'tap';
import { XdrError, XdrReader, XdrWriter } from '../../src/nfs/xdr.js';
import {
  EmptyFragmentError,
  POOLED_RECORD_MIN,
  RecordBufferPool,
  RecordFramer,
  RecordTooLargeError,
  TooManyFragmentsError,
} from '../../src/nfs/record.js';
import { cat, hyper, mark, opaque, words } from './fixtures/bytes.js';

t.test('XdrWriter encodes big-endian with padding', async (t) => {
  const w = new XdrWriter(4)
    .u32(1)
    .i32(-2)
    .u64(2 ** 40 + 5)
    .bool(true)
    .opaque(Buffer.from('abcde'))
    .string('xy');
  t.same(w.bytes(), cat(words(1, 0xfffffffe), hyper(2 ** 40 + 5), words(1), opaque('abcde'), opaque('xy')));
  const big = Buffer.alloc(5000, 7);
  t.same(new XdrWriter().opaque(big).u32(9).bytes(), cat(opaque(big), words(9)), 'large opaque by reference');
});

t.test('XdrReader decodes and bounds-checks', async (t) => {
  const r = new XdrReader(cat(words(7), hyper(123456789012), words(1), opaque('hello'), words(2, 5, 6)));
  t.equal(r.u32(), 7);
  t.equal(r.u64(), 123456789012);
  t.equal(r.bool(), true);
  t.equal(r.string(10), 'hello');
  t.same(
    r.array(4, (x) => x.u32()),
    [5, 6],
  );
  t.throws(() => r.u32(), XdrError, 'truncated');
  t.throws(() => new XdrReader(words(2)).bool(), XdrError, 'bad bool');
  t.throws(() => new XdrReader(words(9)).enum([0, 1, 2]), XdrError, 'unknown enum');
  t.throws(() => new XdrReader(words(100)).opaque(10), XdrError, 'opaque over max');
  t.throws(() => new XdrReader(words(5, 1)).opaque(10), XdrError, 'opaque past end');
  t.throws(() => new XdrReader(words(0xffffffff)).array(1000, (x) => x.u32()), XdrError, 'huge array');
  t.throws(() => new XdrReader(hyper(2 ** 53 + 2)).u64(), XdrError, 'hyper beyond safe');
});

t.test('record marking at every split point', async (t) => {
  const rec1 = Buffer.from('0123456789ab');
  const rec2a = Buffer.from('wxyz');
  const rec2b = Buffer.from('ABCDEFGH');
  const stream = cat(mark(rec1.length), rec1, mark(rec2a.length, false), rec2a, mark(rec2b.length), rec2b, mark(0));
  for (let i = 0; i <= stream.length; i++) {
    for (let j = i; j <= stream.length; j++) {
      const f = new RecordFramer(1024);
      const got = [...f.push(stream.subarray(0, i)), ...f.push(stream.subarray(i, j)), ...f.push(stream.subarray(j))];
      if (got.length !== 3 || !got[0]!.equals(rec1) || !got[1]!.equals(cat(rec2a, rec2b)) || got[2]!.length !== 0) {
        t.fail(`split ${i},${j}`);
        return;
      }
    }
  }
  const f = new RecordFramer(1024);
  const one: Buffer[] = [];
  for (const b of stream) one.push(...f.push(Buffer.from([b])));
  t.equal(one.length, 3, 'byte-at-a-time');
  t.equal(f.buffered, 0);
});

t.test('huge record length is rejected without allocating', async (t) => {
  const f = new RecordFramer(1 << 20);
  t.throws(() => f.push(mark(1 << 30)), RecordTooLargeError);
  const g = new RecordFramer(100);
  t.throws(
    () => {
      g.push(cat(mark(60, false), Buffer.alloc(60)));
      g.push(mark(60));
    },
    RecordTooLargeError,
    'total across fragments',
  );
});

t.test('large records spanning socket chunks are assembled in pooled buffers, reused only once released', async (t) => {
  const size = POOLED_RECORD_MIN + 4096;
  const pool = new RecordBufferPool(size, 2);
  const f = new RecordFramer(size, pool);
  const record = (fill: number): Buffer => Buffer.alloc(size, fill);
  // Split into socket-sized chunks, as TCP delivers them.
  const feed = (...recs: Buffer[]): Buffer[] => {
    const stream = cat(...recs.flatMap((r) => [mark(r.length), r]));
    const out: Buffer[] = [];
    for (let at = 0; at < stream.length; at += 65536) out.push(...f.push(stream.subarray(at, at + 65536)));
    return out;
  };
  const [a, b] = feed(record(1), record(2));
  t.ok(a!.equals(record(1)) && b!.equals(record(2)), 'two records in flight keep their own bytes');
  t.not(a!.buffer, b!.buffer, 'in separate buffers');
  pool.release(a!);
  const [c] = feed(record(3));
  t.equal(c!.buffer, a!.buffer, 'a released buffer is reused');
  t.ok(c!.equals(record(3)) && b!.equals(record(2)), 'and the record still in flight is untouched');
  pool.release(c!);
  pool.release(c!);
  const [d, e] = feed(record(4), record(5));
  t.not(d!.buffer, e!.buffer, 'a double release does not hand one buffer out twice');
  t.ok(d!.equals(record(4)) && e!.equals(record(5)));

  const small = Buffer.alloc(1000, 9);
  const [s1] = feed(small);
  pool.release(s1!);
  t.ok(s1!.equals(small), 'small records are not pooled, and releasing one is harmless');
  const frag = new RecordFramer(2 * size, pool);
  const half = POOLED_RECORD_MIN;
  const [whole] = frag.push(cat(mark(half, false), Buffer.alloc(half, 6), mark(half), Buffer.alloc(half, 7)));
  t.ok(whole!.equals(cat(Buffer.alloc(half, 6), Buffer.alloc(half, 7))), 'a multi-fragment record is concatenated');
});

t.test('a zero-length fragment that is not the last is refused at its header, at every split point', async (t) => {
  const rec = Buffer.from('abcd');
  // One good record, then the empty non-last fragment, then bytes that must never be looked at.
  const stream = cat(mark(rec.length), rec, mark(0, false), mark(0, false), Buffer.alloc(64, 0xee));
  for (let i = 0; i <= stream.length; i++) {
    const f = new RecordFramer(1024);
    const got: Buffer[] = [];
    let thrown: unknown;
    try {
      got.push(...f.push(stream.subarray(0, i)));
      got.push(...f.push(stream.subarray(i)));
    } catch (e) {
      thrown = e;
    }
    // The connection closes on the error, so a good record in the same push may be dropped with it; never anything after it.
    if (!(thrown instanceof EmptyFragmentError) || got.length > 1 || (got.length === 1 && !got[0]!.equals(rec))) {
      t.fail(`split ${i}: ${String(thrown)} after ${got.length} records`);
      return;
    }
  }
  t.pass('thrown at every split, and nothing past the bad header is delivered');
  const g = new RecordFramer(1024);
  t.throws(() => g.push(cat(mark(3, false), Buffer.from('xyz'), mark(0, false))), EmptyFragmentError, 'also after a non-empty fragment');
  // A zero-length LAST fragment is legal: it ends a record (or is an empty record).
  const h = new RecordFramer(1024);
  const out = h.push(cat(mark(3, false), Buffer.from('xyz'), mark(0), mark(0)));
  t.same(
    out.map((b) => b.toString()),
    ['xyz', ''],
    'an empty last fragment ends the record; alone, it is an empty record',
  );
});

t.test('fragments per record are bounded, so 1-byte fragments cannot cost an object per byte', async (t) => {
  const oneByteFrags = (n: number, last: boolean): Buffer =>
    cat(...Array.from({ length: n }, (_, i) => cat(mark(1, last && i === n - 1), Buffer.from([0x41 + (i % 26)]))));
  const f = new RecordFramer(1 << 20, undefined, 8);
  const [r] = f.push(oneByteFrags(8, true));
  t.equal(r!.toString(), 'ABCDEFGH', 'exactly the limit is one record');
  t.equal(f.inRecord, false, 'and nothing is owed after it');
  const g = new RecordFramer(1 << 20, undefined, 8);
  g.push(oneByteFrags(8, false));
  t.equal(g.inRecord, true, 'a record half-sent is owed');
  t.throws(() => g.push(mark(1)), TooManyFragmentsError, 'the ninth fragment header is refused before its body');
  // Byte at a time: the refusal comes at the 4th byte of the ninth header, not later.
  const stream = oneByteFrags(9, true);
  const h = new RecordFramer(1 << 20, undefined, 8);
  let at = -1;
  for (let i = 0; i < stream.length; i++) {
    try {
      h.push(stream.subarray(i, i + 1));
    } catch (e) {
      if (e instanceof TooManyFragmentsError) {
        at = i;
        break;
      }
      throw e;
    }
  }
  t.equal(at, 8 * 5 + 3, 'refused at the last byte of the ninth header');
  const d = new RecordFramer(1 << 20);
  t.throws(() => d.push(oneByteFrags(1025, false)), TooManyFragmentsError, 'default limit: 1024 fragments');
});

t.test('a record of many fragments still respects the byte limit', async (t) => {
  const f = new RecordFramer(10, undefined, 100);
  t.throws(() => f.push(cat(mark(6, false), Buffer.alloc(6), mark(5, false))), RecordTooLargeError);
});

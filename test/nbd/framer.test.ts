import t from 'tap';
import { ByteQueue, ReplyFramer, type ReplyEvent } from '../../src/nbd/framer.js';
import { NbdProtocolError } from '../../src/nbd/errors.js';
import { bytes, chunk, simpleReply } from './fixtures/vectors.js';

const data = Buffer.from('0123456789abcdefghij');
const stream = Buffer.concat([
  simpleReply(0, 1),
  simpleReply(0, 2, data.subarray(0, 10)),
  simpleReply(5, 3),
  chunk(0, 1, 4, bytes({ u64: 1000 }, { raw: data })),
  chunk(0, 2, 4, bytes({ u64: 1020 }, { u32: 4096 })),
  chunk(1, 0, 4, Buffer.alloc(0)),
  chunk(0, 5, 5, bytes({ u32: 0 }, { u32: 512 }, { u32: 3 })),
  chunk(1, 0x8001, 5, bytes({ u32: 5 }, { u16: 2 }, { ascii: 'no' })),
  chunk(1, 1, 6, bytes({ u64: 7 }, { ascii: 'z' })),
]);

/** Simple replies to cookie 2 carry 10 bytes (it was a read of 10). */
const simplePayload = (cookie: bigint, error: number): number => (cookie === 2n && error === 0 ? 10 : 0);

interface Norm {
  kind: string;
  cookie: string;
  rest: string;
}

/** Events with adjacent data pieces merged, so any split gives the same list. */
function run(pieces: Buffer[]): Norm[] {
  const out: Norm[] = [];
  let dataRun: { kind: string; cookie: string; start: number; parts: Buffer[] } | undefined;
  const flush = (): void => {
    if (dataRun)
      out.push({ kind: dataRun.kind, cookie: dataRun.cookie, rest: `${dataRun.start}:${Buffer.concat(dataRun.parts).toString('hex')}` });
    dataRun = undefined;
  };
  const framer = new ReplyFramer((e: ReplyEvent) => {
    if (e.kind === 'simple-data' || e.kind === 'chunk-data') {
      const start = e.kind === 'simple-data' ? e.at : e.offset;
      if (!dataRun) dataRun = { kind: e.kind, cookie: String(e.cookie), start, parts: [] };
      dataRun.parts.push(Buffer.from(e.data));
      return;
    }
    flush();
    const rest =
      e.kind === 'chunk' ? `${e.flags}/${e.type}/${e.payload.toString('hex')}` : e.kind === 'simple' ? `${e.error}/${e.payload}` : '';
    out.push({ kind: e.kind, cookie: String(e.cookie), rest });
  }, simplePayload);
  for (const p of pieces) framer.push(p);
  flush();
  if (!framer.idle) out.push({ kind: 'incomplete', cookie: '', rest: '' });
  return out;
}

t.test('the whole stream at once gives the expected replies', async (t) => {
  t.same(run([stream]), [
    { kind: 'simple', cookie: '1', rest: '0/0' },
    { kind: 'simple', cookie: '2', rest: '0/10' },
    { kind: 'simple-data', cookie: '2', rest: `0:${data.subarray(0, 10).toString('hex')}` },
    { kind: 'simple-end', cookie: '2', rest: '' },
    { kind: 'simple', cookie: '3', rest: '5/0' },
    { kind: 'chunk-data', cookie: '4', rest: `1000:${data.toString('hex')}` },
    { kind: 'chunk', cookie: '4', rest: '0/1/' },
    { kind: 'chunk', cookie: '4', rest: `0/2/${bytes({ u64: 1020 }, { u32: 4096 }).toString('hex')}` },
    { kind: 'chunk', cookie: '4', rest: '1/0/' },
    { kind: 'chunk', cookie: '5', rest: `0/5/${bytes({ u32: 0 }, { u32: 512 }, { u32: 3 }).toString('hex')}` },
    { kind: 'chunk', cookie: '5', rest: `1/32769/${bytes({ u32: 5 }, { u16: 2 }, { ascii: 'no' }).toString('hex')}` },
    { kind: 'chunk-data', cookie: '6', rest: `7:${Buffer.from('z').toString('hex')}` },
    { kind: 'chunk', cookie: '6', rest: '1/1/' },
  ]);
});

t.test('every split point gives the same replies', async (t) => {
  const whole = run([stream]);
  let bad = 0;
  for (let i = 1; i < stream.length; i++) {
    const got = run([stream.subarray(0, i), stream.subarray(i)]);
    if (JSON.stringify(got) !== JSON.stringify(whole)) {
      bad++;
      t.same(got, whole, `split at ${i}`);
    }
  }
  t.equal(bad, 0, `all ${stream.length - 1} two-piece splits agree`);
  t.same(run([...stream].map((b) => Buffer.from([b]))), whole, 'one byte at a time');
  for (let i = 1; i + 7 < stream.length; i += 7) {
    t.same(run([stream.subarray(0, i), stream.subarray(i, i + 7), stream.subarray(i + 7)]), whole, `three pieces at ${i}`);
  }
});

t.test('a truncated stream is not idle, garbage is a protocol error', async (t) => {
  t.same(run([stream.subarray(0, stream.length - 1)]).at(-1), { kind: 'incomplete', cookie: '', rest: '' });
  const framer = new ReplyFramer(
    () => {},
    () => 0,
  );
  t.throws(() => framer.push(bytes({ ascii: 'HTTP/1.1 400' })), NbdProtocolError);
  const f2 = new ReplyFramer(
    () => {},
    () => 0,
  );
  t.throws(() => f2.push(chunk(0, 1, 1, bytes({ u32: 0 }))), /at least 9/);
});

t.test('ByteQueue takes across buffers and peeks without consuming', async (t) => {
  const q = new ByteQueue();
  q.push(Buffer.from('ab'));
  q.push(Buffer.from('cde'));
  t.equal(q.peek(3).toString(), 'abc');
  t.equal(q.take(1).toString(), 'a');
  t.equal(q.take(3).toString(), 'bcd');
  t.equal(q.available, 1);
  t.equal(q.drain().toString(), 'e');
});

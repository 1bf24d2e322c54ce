// Client behaviour a real qemu-nbd will not show on demand: out-of-order and
// fragmented replies, error chunks, short replies, silence, garbage. The
// same paths run against a real qemu-nbd in qemu-nbd.test.ts.
import t from 'tap';
import { createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { NbdClient } from '../../src/nbd/client.js';
import { NbdProtocolError, NbdServerError, NbdTimeoutError } from '../../src/nbd/errors.js';
import { IHAVEOPT, NBDMAGIC, bytes, chunk, optionReply } from './fixtures/vectors.js';
import { tempDir } from './fixtures/helpers.js';

const SIZE = 1 << 20;
const content = Buffer.alloc(SIZE);
for (let i = 0; i < SIZE; i++) content[i] = (i * 7 + (i >> 9)) & 0xff;

interface Req {
  type: number;
  cookie: bigint;
  offset: number;
  length: number;
}

/** Client bytes before the first request: flags, STRUCTURED_REPLY, SET_META_CONTEXT(base:allocation), GO. */
const HANDSHAKE_CLIENT_BYTES = 4 + 16 + (16 + 4 + 4 + 4 + 15) + (16 + 4 + 2 + 2);

async function fakeServer(t: Parameters<typeof tempDir>[0], onRequest: (r: Req, sock: Socket, seen: Req[]) => void): Promise<string> {
  const path = join(tempDir(t), 'fake.sock');
  const server = createServer((sock) => {
    sock.write(
      Buffer.concat([
        bytes(NBDMAGIC, IHAVEOPT, { hex: '0003' }),
        optionReply(8, 1),
        optionReply(10, 4, bytes({ u32: 0 }, { ascii: 'base:allocation' })),
        optionReply(10, 1),
        optionReply(7, 3, bytes({ u16: 0 }, { u64: SIZE }, { u16: 0x8b })),
        optionReply(7, 3, bytes({ u16: 3 }, { u32: 1 }, { u32: 4096 }, { u32: 256 * 1024 })),
        optionReply(7, 1),
      ]),
    );
    let buf = Buffer.alloc(0);
    let skipped = false;
    const seen: Req[] = [];
    sock.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (!skipped) {
        if (buf.length < HANDSHAKE_CLIENT_BYTES) return;
        buf = buf.subarray(HANDSHAKE_CLIENT_BYTES);
        skipped = true;
      }
      while (buf.length >= 28) {
        const r = {
          type: buf.readUInt16BE(6),
          cookie: buf.readBigUInt64BE(8),
          offset: Number(buf.readBigUInt64BE(16)),
          length: buf.readUInt32BE(24),
        };
        buf = buf.subarray(28);
        seen.push(r);
        onRequest(r, sock, seen);
      }
    });
    sock.on('error', () => {});
  });
  await new Promise<void>((r) => server.listen(path, r));
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  return path;
}

function dataChunk(r: Req, flags = 1): Buffer {
  return chunk(flags, 1, Number(r.cookie), bytes({ u64: r.offset }, { raw: content.subarray(r.offset, r.offset + r.length) }));
}

t.test('pipelined reads answered out of order, in data and hole pieces', async (t) => {
  const held: Req[] = [];
  const path = await fakeServer(t, (r, sock) => {
    if (r.type === 2) return sock.end();
    held.push(r);
    if (held.length < 4) return;
    // Answer the last request first; split each into data + hole + data + NONE.
    for (const q of held.reverse()) {
      const a = q.length / 4;
      const c = Number(q.cookie);
      sock.write(chunk(0, 1, c, bytes({ u64: q.offset + 3 * a }, { raw: content.subarray(q.offset + 3 * a, q.offset + 4 * a) })));
      sock.write(chunk(0, 2, c, bytes({ u64: q.offset + a }, { u32: a })));
      sock.write(chunk(0, 1, c, bytes({ u64: q.offset }, { raw: content.subarray(q.offset, q.offset + a) })));
      sock.write(chunk(0, 1, c, bytes({ u64: q.offset + 2 * a }, { raw: content.subarray(q.offset + 2 * a, q.offset + 3 * a) })));
      sock.write(chunk(1, 0, c, Buffer.alloc(0)));
    }
    held.length = 0;
  });
  const client = await NbdClient.connect({ socketPath: path });
  t.equal(client.maxRequestBytes, 256 * 1024, 'honours the server maximum block size');
  const got = await client.read(0, SIZE); // 4 requests of 256 KiB
  const expected = Buffer.from(content);
  for (let q = 0; q < 4; q++) expected.fill(0, q * 262144 + 65536, q * 262144 + 131072);
  t.ok(got.equals(expected), 'reassembled in order with holes zeroed');
  await client.close();
});

t.test('an error chunk fails that request only; the connection stays usable', async (t) => {
  const path = await fakeServer(t, (r, sock) => {
    if (r.type === 2) return sock.end();
    if (r.offset === 4096)
      sock.write(chunk(1, 0x8002, Number(r.cookie), bytes({ u32: 5 }, { u16: 9 }, { ascii: 'bad block' }, { u64: 4096 + 512 })));
    else sock.write(dataChunk(r));
  });
  const client = await NbdClient.connect({ socketPath: path });
  const err = await client.read(4096, 4096).catch((e: unknown) => e);
  t.ok(err instanceof NbdServerError);
  t.match((err as NbdServerError).message, /read of 4096 bytes at offset 4096 with EIO \(5\) at offset 4608: bad block/);
  t.equal((err as NbdServerError).errorOffset, 4608);
  t.ok((await client.read(0, 4096)).equals(content.subarray(0, 4096)), 'next read works');
  await client.close();
});

t.test('a reply that does not cover the request is refused, never zero-filled', async (t) => {
  const path = await fakeServer(t, (r, sock) => {
    sock.write(chunk(1, 1, Number(r.cookie), bytes({ u64: r.offset }, { raw: content.subarray(r.offset, r.offset + r.length / 2) })));
  });
  const client = await NbdClient.connect({ socketPath: path });
  await t.rejects(client.read(0, 8192), NbdProtocolError);
  await t.rejects(client.read(0, 8192), NbdProtocolError, 'the connection is dropped afterwards');
  await client.close();
});

t.test('a silent server times out; garbage and unknown cookies are protocol errors', async (t) => {
  const silent = await fakeServer(t, () => {});
  const c1 = await NbdClient.connect({ socketPath: silent, timeoutMs: 300 });
  const started = Date.now();
  await t.rejects(c1.read(0, 512), NbdTimeoutError);
  t.ok(Date.now() - started < 3000, 'within the timeout');
  await c1.close();

  const garbage = await fakeServer(t, (_r, sock) => sock.write(Buffer.from('this is not nbd at all, not at all')));
  const c2 = await NbdClient.connect({ socketPath: garbage });
  await t.rejects(c2.read(0, 512), /neither simple nor structured/);
  await c2.close();

  const stranger = await fakeServer(t, (r, sock) => sock.write(dataChunk({ ...r, cookie: r.cookie + 1000n })));
  const c3 = await NbdClient.connect({ socketPath: stranger });
  await t.rejects(c3.read(0, 512), /unknown cookie/);
  await c3.close();
});

t.test('block status: extents clipped to the request, loop covers the disk', async (t) => {
  const path = await fakeServer(t, (r, sock) => {
    if (r.type === 2) return sock.end();
    // Report at most 64 KiB per answer, alternating data and hole, the last descriptor too long.
    const first = Math.min(r.length, 32768);
    const descs = [bytes({ u32: first }, { u32: (r.offset / 32768) % 2 ? 3 : 0 })];
    if (r.length > first) descs.push(bytes({ u32: 10 << 20 }, { u32: (r.offset / 32768) % 2 ? 0 : 3 }));
    sock.write(chunk(1, 5, Number(r.cookie), Buffer.concat([bytes({ u32: 0 }), ...descs])));
  });
  const client = await NbdClient.connect({ socketPath: path });
  const one = await client.blockStatus(0, 100_000);
  t.same(one, [
    { offset: 0, length: 32768, flags: 0 },
    { offset: 32768, length: 100_000 - 32768, flags: 3 },
  ]);
  let covered = 0;
  for await (const e of client.extents()) {
    t.equal(e.offset, covered, 'contiguous');
    covered += e.length;
  }
  t.equal(covered, SIZE);
  await t.rejects(client.blockStatus(0, 512, 'qemu:dirty-bitmap:x'), /no extents for context/);
  await client.close();
});

t.test('replies trickling in a few bytes per read: the reused read buffer never corrupts a partial header or payload', async (t) => {
  // The client reads into one buffer it reuses (connect's onread): whatever a read leaves half-parsed must be
  // copied before the next read overwrites it. Here every read ends inside a header, an offset or a block-status payload.
  const path = await fakeServer(t, (r, sock) => {
    const reply =
      r.type === 7
        ? chunk(1, 5, Number(r.cookie), bytes({ u32: 0 }, { u32: 65536 }, { u32: 0 }, { u32: SIZE - 65536 }, { u32: 3 }))
        : dataChunk(r);
    void (async () => {
      for (let at = 0, n = 5; at < reply.length; at += n, n = at < 64 ? 5 : 4099) {
        sock.write(reply.subarray(at, at + n));
        // A write per macrotask turn, so that the client receives them as separate reads.
        await new Promise((go) => setTimeout(go, 1));
      }
    })();
  });
  const c = await NbdClient.connect({ socketPath: path });
  t.teardown(() => c.close());
  const got = Buffer.alloc(3 * 4096);
  await c.readInto(got, 8192);
  t.ok(got.equals(content.subarray(8192, 8192 + got.length)), 'the data arrived intact');
  t.same(await c.blockStatus(0, SIZE), [
    { offset: 0, length: 65536, flags: 0 },
    { offset: 65536, length: SIZE - 65536, flags: 3 },
  ]);
});

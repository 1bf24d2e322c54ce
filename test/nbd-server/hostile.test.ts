/**
 * Bad NBD clients against a real publication: random bytes, fuzzed options
 * and requests, lengths past the end and huge ones, unknown commands, 200
 * connections at once, clients that vanish mid-reply or never read their
 * replies, and one that never finishes the handshake. After each, the server
 * is alive and a well-behaved client reads the right bytes.
 */
import t, { type Test } from 'tap';
import net from 'node:net';
import { NbdClient } from '../../src/nbd/client.js';
import { IHAVEOPT, bytes } from '../nbd/fixtures/vectors.js';
import { chunkFingerprint } from '../helpers/repository.js';
import { IMAGE_SIZE, MiB, requireTool, run, servedPoint, type ServedPoint } from './fixtures/served-point.js';

requireTool('nbdinfo');

/** A seeded generator (mulberry32), so a failing run can be replayed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = Math.imul(a ^ (a >>> 15), 1 | a);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}
const SEED = Number(process.env.NBD_FUZZ_SEED ?? 20261202);

const option = (opt: number, data: Buffer = Buffer.alloc(0)): Buffer => bytes(IHAVEOPT, { u32: opt }, { u32: data.length }, { raw: data });
const request = (flags: number, type: number, cookie: number, offset: bigint | number, length: number, data?: Buffer): Buffer =>
  Buffer.concat([
    bytes({ hex: '25609513' }, { u16: flags }, { u16: type }, { u64: cookie }, { u64: offset }, { u32: length }),
    data ?? Buffer.alloc(0),
  ]);
const GO_ROOT = option(7, bytes({ u32: 4 }, { ascii: 'root' }, { u16: 0 }));

interface Raw {
  socket: net.Socket;
  received(): Buffer;
  /** Waits until at least n bytes arrived (or the server closed). */
  atLeast(n: number, ms?: number): Promise<Buffer>;
  closed: Promise<void>;
}

function raw(s: ServedPoint): Promise<Raw> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(s.socket);
    const parts: Buffer[] = [];
    let size = 0;
    let wake: (() => void) | undefined;
    const closed = new Promise<void>((r) => socket.once('close', () => r()));
    void closed.then(() => wake?.());
    socket.on('data', (b: Buffer) => {
      parts.push(b);
      size += b.length;
      wake?.();
    });
    socket.on('error', () => undefined);
    socket.once('connect', () =>
      resolve({
        socket,
        received: () => Buffer.concat(parts),
        closed,
        atLeast: async (n, ms = 10_000) => {
          const end = Date.now() + ms;
          while (size < n && !socket.destroyed && Date.now() < end) {
            await Promise.race([new Promise<void>((r) => (wake = r)), new Promise((r) => setTimeout(r, 50))]);
          }
          return Buffer.concat(parts);
        },
      }),
    );
    socket.once('error', reject);
  });
}

/** Connects, negotiates structured replies and GO root; resolves once the GO's ACK arrived. */
async function negotiated(s: ServedPoint): Promise<Raw> {
  const c = await raw(s);
  c.socket.write(Buffer.concat([bytes({ u32: 3 }), option(8), GO_ROOT]));
  // greeting 18, STRUCTURED ACK 20, INFO_EXPORT 32, BLOCK_SIZE 34, ACK 20
  const got = await c.atLeast(18 + 20 + 32 + 34 + 20);
  if (got.length !== 124) throw new Error(`negotiation answered ${got.length} bytes`);
  return c;
}

/**
 * The check after every abuse: the server still serves a good client the
 * whole disk as the datastore holds it (the image, plus whatever fuzzed
 * writes put in the overlay).
 */
async function stillServes(t: Test, s: ServedPoint): Promise<void> {
  const client = await NbdClient.connect({ socketPath: s.socket, exportName: 'root', timeoutMs: 20_000 });
  const data = await client.read(0, IMAGE_SIZE);
  await client.close();
  const truth = (await s.datastore.read(s.fileId, 0, IMAGE_SIZE)).data;
  t.ok(data.equals(truth), 'a good client still reads the right bytes');
}

t.test('random bytes, fuzzed options and fuzzed requests', async (t) => {
  const s = await servedPoint({ server: { handshakeTimeoutMs: 2000 } });
  t.teardown(() => s.close());
  const before = chunkFingerprint(s.repository.path);
  const rnd = prng(SEED);
  const randBytes = (n: number): Buffer => Buffer.from(Array.from({ length: n }, () => Math.floor(rnd() * 256)));
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)] as T;

  // 1. Random bytes right after the greeting.
  for (let i = 0; i < 40; i++) {
    const c = await raw(s);
    c.socket.write(randBytes(1 + Math.floor(rnd() * 300)));
    await Promise.race([c.closed, new Promise((r) => setTimeout(r, 20))]);
    c.socket.destroy();
  }
  // 2. Valid flags, then options with random numbers, random data and lying lengths.
  for (let i = 0; i < 40; i++) {
    const c = await raw(s);
    const opts: Buffer[] = [bytes({ u32: pick([1, 3, 0]) })];
    for (let k = 0; k < 5; k++) {
      const data = randBytes(Math.floor(rnd() * 64));
      const opt = pick([1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 0xffffffff, Math.floor(rnd() * 2 ** 32)]);
      const lie = pick([data.length, data.length + 7, 0xffffffff, 65 * 1024]);
      opts.push(bytes(IHAVEOPT, { u32: opt }, { u32: lie }, { raw: data }));
    }
    c.socket.write(Buffer.concat(opts));
    await Promise.race([c.closed, new Promise((r) => setTimeout(r, 30))]);
    c.socket.destroy();
  }
  // 3. Negotiated, then requests of every kind: random types, flags, offsets past the end, huge lengths.
  for (let i = 0; i < 20; i++) {
    const c = await negotiated(s);
    const reqs: Buffer[] = [];
    for (let k = 0; k < 20; k++) {
      const type = pick([0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 99, 0xffff]);
      const length = pick([0, 1, 512, 4096, 65536, IMAGE_SIZE, 33 * MiB, 0xffffffff]);
      const offset = pick<bigint | number>([0, 4096, IMAGE_SIZE - 1, IMAGE_SIZE, IMAGE_SIZE + 4096, 2n ** 63n, 2n ** 64n - 1n]);
      const flags = pick([0, 1, 2, 4, 8, 0x10, 0xffff]);
      // A write carries its payload only when small enough to send here; otherwise the lie is that it has none.
      const payload = type === 1 && length <= 65536 ? randBytes(length) : undefined;
      reqs.push(request(flags, type, k, offset, length, payload));
    }
    c.socket.write(Buffer.concat(reqs));
    await Promise.race([c.closed, new Promise((r) => setTimeout(r, 50))]);
    c.socket.destroy();
  }
  await stillServes(t, s);
  t.equal(chunkFingerprint(s.repository.path), before, 'no fuzzed write reached the repository');
  const info = await run('nbdinfo', ['--map', s.uri]);
  t.equal(info.code, 0, `nbdinfo still talks to it: ${info.stderr}`);
});

t.test('bad requests are answered with errors and the connection goes on', async (t) => {
  const s = await servedPoint();
  t.teardown(() => s.close());
  const c = await negotiated(s);
  t.teardown(() => c.socket.destroy());
  const errnoOfChunk = (b: Buffer): number => b.readUInt32BE(20);
  const cases: Array<[string, Buffer, number]> = [
    ['read past the end', request(0, 0, 1, IMAGE_SIZE - 10, 20), 22],
    ['read at an offset past 2^63', request(0, 0, 2, 2n ** 63n, 512), 22],
    ['read of 64 MiB (over the 32 MiB maximum)', request(0, 0, 3, 0, 64 * MiB), 22],
    ['the same with DF (one chunk asked for)', request(4, 0, 3, 0, 64 * MiB), 75],
    ['block status without a context', request(0, 7, 4, 0, 4096), 22],
    ['unknown command flags', request(0x40, 0, 5, 0, 4096), 22],
  ];
  let seen = 124;
  for (const [what, req, errno] of cases) {
    c.socket.write(req);
    const got = await c.atLeast(seen + 26);
    const reply = got.subarray(seen);
    t.equal(reply.readUInt32BE(0), 0x668e33ef, `${what}: a structured reply`);
    t.equal(errnoOfChunk(reply), errno, `${what}: errno ${errno}`);
    seen += 20 + reply.readUInt32BE(16);
  }
  c.socket.write(request(0, 99, 6, 0, 0));
  let got = await c.atLeast(seen + 16);
  t.equal(got.readUInt32BE(seen + 4), 22, 'unknown command: EINVAL');
  seen += 16;
  c.socket.write(request(0, 1, 7, IMAGE_SIZE - 2, 4, Buffer.from('abcd')));
  got = await c.atLeast(seen + 16);
  t.equal(got.readUInt32BE(seen + 4), 22, 'write past the end: EINVAL, its payload consumed');
  seen += 16;
  c.socket.write(request(0, 0, 8, 0, 16));
  got = await c.atLeast(seen + 28 + 16);
  t.ok(got.subarray(seen + 28, seen + 44).equals(s.imageBytes.subarray(0, 16)), 'the next read on the same connection is right');
  c.socket.write(request(0, 1, 9, 0, 0xffffffff));
  await Promise.race([c.closed, new Promise((r) => setTimeout(r, 5000))]);
  t.ok(c.socket.destroyed, 'a write announcing 4 GiB of payload: disconnected (it cannot be skipped safely)');
  await stillServes(t, s);
});

t.test('200 connections at once: the first 64 are served, the rest refused, then all is well', async (t) => {
  const s = await servedPoint();
  t.teardown(() => s.close());
  const conns = await Promise.all(Array.from({ length: 200 }, () => raw(s).catch(() => undefined)));
  await new Promise((r) => setTimeout(r, 500));
  const greeted = conns.filter((c) => c && c.received().length >= 18 && !c.socket.destroyed).length;
  t.ok(greeted <= 64, `at most 64 connections are served at once (${greeted} greeted and open)`);
  t.ok(greeted >= 32, 'and the server did serve many of them');
  t.ok(s.server.connectionCount <= 64, 'the server counts no more than its bound');
  for (const c of conns) c?.socket.destroy();
  const end = Date.now() + 10_000;
  while (s.server.connectionCount > 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
  t.equal(s.server.connectionCount, 0, 'every connection is gone once the clients are');
  await stillServes(t, s);
});

t.test('clients that vanish mid-reply or never read their replies', async (t) => {
  const s = await servedPoint();
  t.teardown(() => s.close());
  for (let i = 0; i < 10; i++) {
    const c = await negotiated(s);
    const reqs = Array.from({ length: 8 }, (_, k) => request(0, 0, k, 0, IMAGE_SIZE));
    c.socket.write(Buffer.concat(reqs));
    await c.atLeast(124 + 1000);
    c.socket.destroy();
  }
  await stillServes(t, s);

  // A client that sends 2,000 reads of 8 MiB (16 GiB of replies) and reads nothing.
  global.gc?.();
  const before = process.memoryUsage();
  const c = await negotiated(s);
  c.socket.pause();
  const reqs = Buffer.concat(Array.from({ length: 2000 }, (_, k) => request(0, 0, k, 0, IMAGE_SIZE)));
  c.socket.write(reqs);
  await new Promise((r) => setTimeout(r, 3000));
  const after = process.memoryUsage();
  const grown = after.arrayBuffers + after.heapUsed - (before.arrayBuffers + before.heapUsed);
  t.ok(grown < 256 * MiB, `memory grew by ${(grown / MiB).toFixed(0)} MiB, bounded (the server stopped reading)`);
  await stillServes(t, s);
  c.socket.destroy();
});

t.test('a client that never finishes the handshake is dropped', async (t) => {
  const s = await servedPoint({ server: { handshakeTimeoutMs: 300 } });
  t.teardown(() => s.close());
  const c = await raw(s);
  c.socket.write(bytes({ u32: 3 }));
  const t0 = Date.now();
  await Promise.race([c.closed, new Promise((r) => setTimeout(r, 5000))]);
  t.ok(c.socket.destroyed, 'closed by the server');
  t.ok(Date.now() - t0 < 4000, 'after the handshake timeout');
  await stillServes(t, s);
});

t.test('close() commits writes in flight and closes every connection', async (t) => {
  const s = await servedPoint();
  let closed = false;
  t.teardown(() => (closed ? undefined : s.close()));
  const c = await negotiated(s);
  const payload = Buffer.alloc(MiB, 0x5a);
  c.socket.write(request(0, 1, 1, MiB, payload.length, payload));
  await c.atLeast(124 + 16);
  t.equal(c.received().readUInt32BE(124 + 4), 0, 'the write was acknowledged');
  await s.server.close();
  await Promise.race([c.closed, new Promise((r) => setTimeout(r, 5000))]);
  t.ok(c.socket.destroyed, 'the client was disconnected');
  const back = (await s.datastore.read(s.fileId, MiB, MiB)).data;
  t.ok(back.equals(payload), 'the written bytes are in the datastore');
  closed = true;
  await s.close();
});

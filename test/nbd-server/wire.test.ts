/**
 * The server's bytes against vectors written out by hand
 * (test/nbd/fixtures/vectors.ts builds them field by field, independently of
 * src/nbd-server/wire.ts), the client framer at every split point, and whole
 * handshakes over a real socket compared byte for byte.
 */
import t from 'tap';
import net from 'node:net';
import {
  ClientFramer,
  encodeBlockStatusChunk,
  encodeDataChunkHeader,
  encodeErrorChunk,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoString,
  encodeMetaContext,
  encodeOptionReply,
  encodeServerEntry,
  encodeSimpleReply,
  type ClientFrame,
  type Phase,
} from '../../src/nbd-server/wire.js';
import { NbdServer } from '../../src/nbd-server/server.js';
import { ROOT_ID } from '../../src/datastore/types.js';
import { MemoryDatastore } from '../nfs/fixtures/memory-datastore.js';
import {
  IHAVEOPT,
  NBDMAGIC,
  REP_MAGIC,
  REQUEST_MAGIC,
  SIMPLE_MAGIC,
  STRUCTURED_MAGIC,
  bytes,
  chunk,
  optionReply,
  simpleReply,
} from '../nbd/fixtures/vectors.js';

const ERR = 2 ** 31;

t.test('handshake encodings', async (t) => {
  t.same(encodeGreeting(3), bytes(NBDMAGIC, IHAVEOPT, { u16: 3 }), 'greeting: NBDMAGIC IHAVEOPT flags');
  t.same(encodeOptionReply(7, 1), bytes(REP_MAGIC, { u32: 7 }, { u32: 1 }, { u32: 0 }), 'ACK to GO');
  t.same(encodeOptionReply(7, ERR + 6, Buffer.from('no')), optionReply(7, ERR + 6, Buffer.from('no')), 'error reply, bit 31 set');
  t.same(
    encodeServerEntry('sda', 'disk'),
    bytes({ u32: 3 }, { ascii: 'sda' }, { ascii: 'disk' }),
    'REP_SERVER: name length, name, details',
  );
  t.same(encodeInfoExport(2 ** 40 + 5, 0x1ad), bytes({ u16: 0 }, { u64: 2 ** 40 + 5 }, { u16: 0x1ad }), 'INFO_EXPORT: 64-bit size');
  t.same(encodeInfoString(1, 'root'), bytes({ u16: 1 }, { ascii: 'root' }), 'INFO_NAME');
  t.same(encodeInfoString(2, 'about'), bytes({ u16: 2 }, { ascii: 'about' }), 'INFO_DESCRIPTION');
  t.same(encodeInfoBlockSize(1, 4096, 32 << 20), bytes({ u16: 3 }, { u32: 1 }, { u32: 4096 }, { u32: 32 << 20 }), 'INFO_BLOCK_SIZE');
  t.same(encodeMetaContext(1, 'base:allocation'), bytes({ u32: 1 }, { ascii: 'base:allocation' }), 'META_CONTEXT: id, name');
  t.same(encodeExportNameReply(512, 3, true), bytes({ u64: 512 }, { u16: 3 }), 'EXPORT_NAME reply with NO_ZEROES');
  t.same(encodeExportNameReply(512, 3, false), bytes({ u64: 512 }, { u16: 3 }, { raw: Buffer.alloc(124) }), 'and with 124 zeroes');
});

t.test('transmission encodings', async (t) => {
  t.same(encodeSimpleReply(5, 0x0102030405060708n), bytes(SIMPLE_MAGIC, { u32: 5 }, { hex: '0102030405060708' }), 'simple reply');
  t.same(simpleReply(0, 9), encodeSimpleReply(0, 9n), 'the client test vectors agree');
  const data = Buffer.from('abcd');
  t.same(Buffer.concat([encodeDataChunkHeader(1, 9n, 4096, 4), data]), chunk(1, 1, 9, bytes({ u64: 4096 }, { raw: data })), 'OFFSET_DATA');
  t.same(
    encodeBlockStatusChunk(1, 3n, 1, [
      { length: 4096, flags: 0 },
      { length: 8192, flags: 3 },
    ]),
    bytes(
      STRUCTURED_MAGIC,
      { u16: 1 },
      { u16: 5 },
      { u64: 3 },
      { u32: 20 },
      { u32: 1 },
      { u32: 4096 },
      { u32: 0 },
      { u32: 8192 },
      { u32: 3 },
    ),
    'BLOCK_STATUS: context id, (length, flags) pairs',
  );
  t.same(
    encodeErrorChunk(1, 0x8002, 4n, 5, 'bad', 65536),
    chunk(1, 0x8002, 4, bytes({ u32: 5 }, { u16: 3 }, { ascii: 'bad' }, { u64: 65536 })),
    'ERROR_OFFSET: errno, message, offset',
  );
  t.same(encodeErrorChunk(1, 0x8001, 4n, 22, ''), chunk(1, 0x8001, 4, bytes({ u32: 22 }, { u16: 0 })), 'ERROR without message');
});

// ---- The framer ----

const option = (opt: number, data: Buffer = Buffer.alloc(0)): Buffer => bytes(IHAVEOPT, { u32: opt }, { u32: data.length }, { raw: data });
const request = (flags: number, type: number, cookie: number, offset: number, length: number, data?: Buffer): Buffer =>
  bytes(REQUEST_MAGIC, { u16: flags }, { u16: type }, { u64: cookie }, { u64: offset }, { u32: length }, { raw: data ?? Buffer.alloc(0) });

const payload = Buffer.from('twelve bytes');
const conversation: Array<[Phase, Buffer]> = [
  ['client-flags', bytes({ u32: 3 })],
  ['options', option(8)],
  ['options', option(7, bytes({ u32: 4 }, { ascii: 'root' }, { u16: 0 }))],
  ['transmission', request(0, 0, 1, 0, 4096)],
  ['transmission', request(1, 1, 2, 512, payload.length, payload)],
  ['transmission', request(0, 7, 3, 0, 65536)],
  ['transmission', request(0, 2, 4, 0, 0)],
];
const expected: ClientFrame[] = [
  { kind: 'client-flags', flags: 3 },
  { kind: 'option', option: 8, data: Buffer.alloc(0) },
  { kind: 'option', option: 7, data: bytes({ u32: 4 }, { ascii: 'root' }, { u16: 0 }) },
  { kind: 'request', flags: 0, type: 0, cookie: 1n, offset: 0n, length: 4096 },
  { kind: 'request', flags: 1, type: 1, cookie: 2n, offset: 512n, length: payload.length, data: payload },
  { kind: 'request', flags: 0, type: 7, cookie: 3n, offset: 0n, length: 65536 },
  { kind: 'request', flags: 0, type: 2, cookie: 4n, offset: 0n, length: 0 },
];

/** Feeds `pieces`, asking for frames of the phase each expected frame is in. */
function frames(pieces: Buffer[]): ClientFrame[] {
  const f = new ClientFramer();
  const out: ClientFrame[] = [];
  for (const p of pieces) {
    f.push(p);
    for (;;) {
      const phase = conversation[out.length]?.[0];
      if (!phase) break;
      const frame = f.next(phase);
      if (!frame) break;
      out.push(frame);
    }
  }
  return out;
}

t.test('the framer gives the same frames at every split point', async (t) => {
  const all = Buffer.concat(conversation.map(([, b]) => b));
  t.same(frames([all]), expected, 'in one piece');
  let bad = 0;
  for (let i = 0; i <= all.length; i++) {
    for (const j of [i, Math.min(all.length, i + 1), Math.min(all.length, i + 29)]) {
      const got = frames([all.subarray(0, i), all.subarray(i, j), all.subarray(j)]);
      if (
        JSON.stringify(got, (_, v: unknown) => (typeof v === 'bigint' ? `${v}n` : v)) !==
        JSON.stringify(expected, (_, v: unknown) => (typeof v === 'bigint' ? `${v}n` : v))
      )
        bad++;
    }
  }
  t.equal(bad, 0, `every split of ${all.length} bytes in three pieces gives the same frames`);
  t.same(frames([...all].map((b) => Buffer.from([b]))), expected, 'a byte at a time');
});

t.test('the framer refuses what it must not buffer', async (t) => {
  const f = new ClientFramer();
  f.push(bytes(IHAVEOPT, { u32: 7 }, { u32: 65 * 1024 }));
  t.same(f.next('options'), { kind: 'option-too-big', option: 7, length: 65 * 1024 }, 'option data over 64 KiB');
  const g = new ClientFramer();
  g.push(request(0, 1, 5, 0, 33 << 20));
  t.same(g.next('transmission'), { kind: 'request-too-big', cookie: 5n, length: 33 << 20 }, 'a write over 32 MiB');
  const h = new ClientFramer();
  h.push(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
  t.same(h.next('options'), { kind: 'bad-magic', what: 'option' }, 'not an option');
  const k = new ClientFramer();
  k.push(Buffer.alloc(28, 0xff));
  t.same(k.next('transmission'), { kind: 'bad-magic', what: 'request' }, 'not a request');
  const r = new ClientFramer();
  r.push(request(0, 0, 6, 0, 0xffffffff));
  t.same(
    r.next('transmission'),
    { kind: 'request', flags: 0, type: 0, cookie: 6n, offset: 0n, length: 0xffffffff },
    'a huge read is framed (and refused by the connection)',
  );
});

// ---- Whole conversations over a socket ----

interface Conversation {
  send(b: Buffer): void;
  /** Exactly n more bytes from the server. */
  recv(n: number): Promise<Buffer>;
  /** Resolves when the server closed the connection, with whatever it sent before. */
  closed(): Promise<Buffer>;
  end(): void;
}

function talk(path: string): Promise<Conversation> {
  return new Promise((resolve, reject) => {
    const s = net.connect(path);
    let buf = Buffer.alloc(0);
    let waiter: (() => void) | undefined;
    let ended = false;
    s.on('data', (b: Buffer) => {
      buf = Buffer.concat([buf, b]);
      waiter?.();
    });
    s.on('close', () => {
      ended = true;
      waiter?.();
    });
    s.on('error', () => undefined);
    s.once('connect', () =>
      resolve({
        send: (b) => s.write(b),
        recv: async (n) => {
          while (buf.length < n) {
            if (ended) throw new Error(`connection closed after ${buf.length} of ${n} bytes`);
            await new Promise<void>((r) => (waiter = r));
          }
          const out = buf.subarray(0, n);
          buf = buf.subarray(n);
          return out;
        },
        closed: async () => {
          while (!ended) await new Promise<void>((r) => (waiter = r));
          return buf;
        },
        end: () => s.destroy(),
      }),
    );
    s.once('error', reject);
  });
}

t.test('handshakes and requests byte for byte', async (t) => {
  const ds = new MemoryDatastore();
  const content = Buffer.alloc(8192);
  for (let i = 0; i < content.length; i++) content[i] = (i * 7) % 251;
  const fileId = ds.putFile(ROOT_ID, 'disk', content);
  const server = new NbdServer({ datastore: ds, exports: () => [{ name: 'disk', fileId, readOnly: false, description: 'eight KiB' }] });
  const dir = (await import('node:fs')).mkdtempSync('/tmp/rl-nbd-wire-');
  const sock = `${dir}/s`;
  await server.listenUnix(sock);
  t.teardown(async () => {
    await server.close();
    (await import('node:fs')).rmSync(dir, { recursive: true, force: true });
  });
  const flags = 0x1 | 0x4 | 0x8 | 0x80 | 0x100 | 0x20 | 0x40; // HAS_FLAGS FLUSH FUA DF MULTI_CONN TRIM WRITE_ZEROES

  t.test('LIST, INFO, STARTTLS, unknown option and export, GO, then reads and block status', async (t) => {
    const c = await talk(sock);
    t.teardown(() => c.end());
    t.same(await c.recv(18), bytes(NBDMAGIC, IHAVEOPT, { u16: 3 }), 'greeting: FIXED_NEWSTYLE | NO_ZEROES');
    c.send(bytes({ u32: 3 }));
    c.send(option(3));
    const list = [optionReply(3, 2, bytes({ u32: 4 }, { ascii: 'disk' }, { ascii: 'eight KiB' })), optionReply(3, 1)];
    t.same(await c.recv(Buffer.concat(list).length), Buffer.concat(list), 'LIST: one REP_SERVER, then ACK');
    c.send(option(5));
    const tls = optionReply(5, ERR + 2, Buffer.from('no TLS on a unix socket: its file mode is the access control'));
    t.same(await c.recv(tls.length), tls, 'STARTTLS on a unix socket: ERR_POLICY');
    c.send(option(42, Buffer.from('xyz')));
    const unsup = optionReply(42, ERR + 1, Buffer.from('option 42 is not supported'));
    t.same(await c.recv(unsup.length), unsup, 'unknown option: ERR_UNSUP, and the connection goes on');
    c.send(option(6, bytes({ u32: 4 }, { ascii: 'nope' }, { u16: 0 })));
    const unknown = optionReply(6, ERR + 6, Buffer.from('no export named "nope"'));
    t.same(await c.recv(unknown.length), unknown, 'INFO of an unknown export: ERR_UNKNOWN');
    c.send(option(6, bytes({ u32: 4 }, { ascii: 'disk' })));
    const invalid = optionReply(6, ERR + 3, Buffer.from('malformed request'));
    t.same(await c.recv(invalid.length), invalid, 'INFO without its info count: ERR_INVALID');
    c.send(option(8));
    t.same(await c.recv(20), optionReply(8, 1), 'STRUCTURED_REPLY: ACK');
    c.send(
      option(
        10,
        bytes({ u32: 4 }, { ascii: 'disk' }, { u32: 2 }, { u32: 15 }, { ascii: 'base:allocation' }, { u32: 5 }, { ascii: 'qemu:' }),
      ),
    );
    const meta = Buffer.concat([optionReply(10, 4, bytes({ u32: 1 }, { ascii: 'base:allocation' })), optionReply(10, 1)]);
    t.same(await c.recv(meta.length), meta, 'SET_META_CONTEXT: base:allocation only, then ACK');
    c.send(option(7, bytes({ u32: 4 }, { ascii: 'disk' }, { u16: 2 }, { u16: 1 }, { u16: 2 })));
    const go = Buffer.concat([
      optionReply(7, 3, bytes({ u16: 0 }, { u64: 8192 }, { u16: flags })),
      optionReply(7, 3, bytes({ u16: 1 }, { ascii: 'disk' })),
      optionReply(7, 3, bytes({ u16: 2 }, { ascii: 'eight KiB' })),
      optionReply(7, 3, bytes({ u16: 3 }, { u32: 1 }, { u32: 4096 }, { u32: 32 << 20 })),
      optionReply(7, 1),
    ]);
    t.same(await c.recv(go.length), go, 'GO: INFO_EXPORT, NAME, DESCRIPTION, BLOCK_SIZE, ACK');
    c.send(request(0, 0, 11, 100, 50));
    const read = chunk(1, 1, 11, bytes({ u64: 100 }, { raw: content.subarray(100, 150) }));
    t.same(await c.recv(read.length), read, 'READ: one OFFSET_DATA chunk with DONE');
    c.send(request(0, 0, 12, 8000, 500));
    const past = chunk(1, 0x8001, 12, bytes({ u32: 22 }, { u16: 34 }, { ascii: 'request past the end of the export' }));
    t.same(await c.recv(past.length), past, 'READ past the end: an EINVAL error chunk');
    c.send(request(0, 7, 13, 0, 8192));
    const status = chunk(1, 5, 13, bytes({ u32: 1 }, { u32: 8192 }, { u32: 0 }));
    t.same(await c.recv(status.length), status, 'BLOCK_STATUS: one data extent (the memory datastore has no map)');
    c.send(request(0, 99, 14, 0, 0));
    t.same(await c.recv(16), simpleReply(22, 14), 'unknown command: EINVAL');
    c.send(request(0, 1, 15, 8, 4, Buffer.from('WXYZ')));
    t.same(await c.recv(16), simpleReply(0, 15), 'WRITE: simple reply');
    t.same(ds.fileData(fileId).subarray(8, 12), Buffer.from('WXYZ'), 'the write reached the datastore');
    c.send(request(0, 3, 16, 0, 0));
    t.same(await c.recv(16), simpleReply(0, 16), 'FLUSH');
    c.send(request(0, 2, 17, 0, 0));
    t.same(await c.closed(), Buffer.alloc(0), 'DISC: the server closes without a reply');
  });

  t.test('EXPORT_NAME with and without NO_ZEROES, simple replies', async (t) => {
    const c = await talk(sock);
    t.teardown(() => c.end());
    await c.recv(18);
    c.send(bytes({ u32: 1 }));
    c.send(option(1, Buffer.from('disk')));
    t.same(await c.recv(134), bytes({ u64: 8192 }, { u16: flags }, { raw: Buffer.alloc(124) }), 'size, flags, 124 zeroes');
    c.send(request(0, 0, 1, 100, 4));
    t.same(await c.recv(20), simpleReply(0, 1, content.subarray(100, 104)), 'READ: simple reply and data');
    c.send(request(0, 7, 2, 0, 4096));
    t.same(await c.recv(16), simpleReply(22, 2), 'BLOCK_STATUS without a context: EINVAL');
  });

  t.test('clients that must be closed on', async (t) => {
    for (const [what, flagsSent] of [
      ['no FIXED_NEWSTYLE', 0],
      ['unknown client flags', 0x11],
    ] as const) {
      const c = await talk(sock);
      await c.recv(18);
      c.send(bytes({ u32: flagsSent }));
      t.same(await c.closed(), Buffer.alloc(0), `${what}: closed`);
    }
    const c = await talk(sock);
    await c.recv(18);
    c.send(bytes({ u32: 1 }));
    c.send(option(1, Buffer.from('nope')));
    t.same(await c.closed(), Buffer.alloc(0), 'EXPORT_NAME of an unknown export: closed (no error reply exists)');
    const d = await talk(sock);
    await d.recv(18);
    d.send(bytes({ u32: 1 }));
    d.send(option(2));
    t.same(await d.closed(), optionReply(2, 1), 'ABORT: ACK, then closed');
    const e = await talk(sock);
    await e.recv(18);
    e.send(bytes({ u32: 1 }, IHAVEOPT, { u32: 7 }, { u32: 1 << 20 }));
    t.same(await e.closed(), optionReply(7, ERR + 9, Buffer.from('option data too large')), 'option data over 64 KiB: ERR_TOO_BIG, closed');
  });
});

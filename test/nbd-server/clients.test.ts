/**
 * Real NBD clients (qemu-img, qemu-io, nbdinfo from libnbd, and our own
 * NbdClient) against NbdServer over a real publication of a real restore
 * point: the bytes match the source image, holes are reported as holes,
 * writes land in the overlay and never in the repository, and a corrupt
 * chunk is an I/O error at its offset, never wrong bytes.
 */
import t from 'tap';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { NbdClient } from '../../src/nbd/client.js';
import { NbdServerError } from '../../src/nbd/errors.js';
import { NbdServer } from '../../src/nbd-server/server.js';
import { chunkFingerprint } from '../helpers/repository.js';
import { CHUNK_SIZE, DATA_RANGES, IMAGE_SIZE, MiB, requireTool, run, servedPoint } from './fixtures/served-point.js';

for (const tool of ['qemu-img', 'qemu-io', 'nbdinfo']) requireTool(tool);

/** nbdinfo --map lines: offset, length, type number, description. */
function parseMap(out: string): Array<{ offset: number; length: number; type: number }> {
  return out
    .trim()
    .split('\n')
    .map((l) => l.trim().split(/\s+/))
    .map(([o, l, ty]) => ({ offset: Number(o), length: Number(l), type: Number(ty) }));
}

t.test('qemu-img compare, nbdinfo, nbdinfo --map and our client read the point as backed up', async (t) => {
  const s = await servedPoint();
  t.teardown(() => s.close());
  const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', s.image, s.uri]);
  t.equal(cmp.code, 0, cmp.stderr);
  t.match(cmp.stdout, /Images are identical/);

  const info = await run('nbdinfo', [s.uri]);
  t.equal(info.code, 0, info.stderr);
  t.match(info.stdout, /export-size: 8388608/);
  t.match(info.stdout, /using structured packets/);
  t.match(info.stdout, /base:allocation/);
  t.match(info.stdout, /is_read_only: false/);
  t.match(info.stdout, /can_multi_conn: true/);
  t.match(info.stdout, /block_size_maximum: 33554432/);

  const map = await run('nbdinfo', ['--map', s.uri]);
  t.equal(map.code, 0, map.stderr);
  const expected: Array<{ offset: number; length: number; type: number }> = [];
  let at = 0;
  for (const [from, to] of DATA_RANGES) {
    if (from > at) expected.push({ offset: at, length: from - at, type: 3 });
    expected.push({ offset: from, length: to - from, type: 0 });
    at = to;
  }
  if (at < IMAGE_SIZE) expected.push({ offset: at, length: IMAGE_SIZE - at, type: 3 });
  t.same(parseMap(map.stdout), expected, 'data where the image has data; hole,zero (3) where it has holes');

  const client = await NbdClient.connect({ socketPath: s.socket, exportName: 'root' });
  t.teardown(() => client.close());
  const all = await client.read(0, IMAGE_SIZE);
  t.ok(all.equals(s.imageBytes), 'NbdClient reads the whole export pipelined, bytes equal');
  const odd = await client.read(12345, 777_777);
  t.ok(odd.equals(s.imageBytes.subarray(12345, 12345 + 777_777)), 'an unaligned read across chunks and holes');
});

t.test('qemu-io writes land in the overlay; the repository is unchanged', async (t) => {
  const s = await servedPoint();
  t.teardown(() => s.close());
  const before = chunkFingerprint(s.repository.path);
  const io = await run('qemu-io', [
    '-f',
    'raw',
    '-c',
    'write -P 0xab 4096 65536', // inside the first data range
    '-c',
    `write -P 0xcd ${2 * MiB} 8192`, // inside a hole
    '-c',
    `write -z ${512 * 1024} 4096`, // WRITE_ZEROES
    '-c',
    'flush',
    '-c',
    'read -P 0xab 4096 65536',
    '-c',
    `read -P 0xcd ${2 * MiB} 8192`,
    '-c',
    `read -P 0 ${512 * 1024} 4096`,
    s.uri,
  ]);
  t.equal(io.code, 0, io.stderr);
  t.notMatch(io.stdout + io.stderr, /Pattern verification failed|error/i, io.stdout);
  t.equal(chunkFingerprint(s.repository.path), before, 'every chunk file of the repository is byte-identical');

  const back = (await s.datastore.read(s.fileId, 2 * MiB, 8192)).data;
  t.ok(back.equals(Buffer.alloc(8192, 0xcd)), 'the datastore (its overlay) holds the written bytes');
  const untouched = (await s.datastore.read(s.fileId, 4096 + 65536, 4096)).data;
  t.ok(untouched.equals(s.imageBytes.subarray(4096 + 65536, 4096 + 65536 + 4096)), 'bytes beside the write still read the point');

  const map = parseMap((await run('nbdinfo', ['--map', s.uri])).stdout);
  const at2M = map.find((e) => e.offset <= 2 * MiB && 2 * MiB < e.offset + e.length);
  t.same(at2M, { offset: 2 * MiB, length: 8192, type: 0 }, 'the written blocks in the hole are data now');
  const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', s.image, s.uri]);
  t.equal(cmp.code, 1, 'and the export now differs from the source image');
});

t.test('a flipped byte in a stored chunk is an I/O error at that offset, never wrong data', async (t) => {
  const s = await servedPoint();
  t.teardown(() => s.close());
  // Chunk 1 ([256 KiB, 512 KiB)) is corrupted before anything read it, so no decoded copy is cached.
  const file = await s.chunkFile(1);
  const bytes = fs.readFileSync(file);
  const mid = Math.floor(bytes.length / 2);
  bytes[mid] = bytes[mid]! ^ 0x01;
  fs.writeFileSync(file, bytes);

  const io = await run('qemu-io', ['-f', 'raw', '-c', `read 0 ${MiB}`, s.uri]);
  t.match(io.stdout + io.stderr, /Input\/output error/, 'qemu-io: read fails with EIO');
  t.notMatch(io.stdout, /read \d+\/\d+ bytes/, 'and reports no bytes read');

  const client = await NbdClient.connect({ socketPath: s.socket, exportName: 'root' });
  t.teardown(() => client.close());
  const err = await client.read(0, MiB).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.ok(err instanceof NbdServerError, 'our client: a server error');
  t.equal((err as NbdServerError).errnoName, 'EIO');
  t.equal((err as NbdServerError).errorOffset, CHUNK_SIZE, 'at the first byte of the corrupt chunk');
  const good = await client.read(0, CHUNK_SIZE);
  t.ok(good.equals(s.imageBytes.subarray(0, CHUNK_SIZE)), 'the chunk before it still reads right');
  const after = await client.read(2 * CHUNK_SIZE, CHUNK_SIZE);
  t.ok(after.equals(s.imageBytes.subarray(2 * CHUNK_SIZE, 3 * CHUNK_SIZE)), 'and the chunk after it');
  const simple = await NbdClient.connect({ socketPath: s.socket, exportName: 'root', structuredReplies: false });
  t.teardown(() => simple.close());
  const simpleErr = await simple.read(CHUNK_SIZE + 100, 100).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.equal((simpleErr as NbdServerError | undefined)?.errnoName, 'EIO', 'with simple replies: EIO too');
});

t.test('a read-only export refuses writes and says so', async (t) => {
  const s = await servedPoint({ readOnly: true });
  t.teardown(() => s.close());
  const info = await run('nbdinfo', [s.uri]);
  t.match(info.stdout, /is_read_only: true/);
  t.match(info.stdout, /can_multi_conn: true/);
  const io = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0xab 0 4096', s.uri]);
  t.not(io.code, 0);
  t.match(io.stdout + io.stderr, /read-only|Operation not permitted|permission/i, io.stdout + io.stderr);
  const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', s.image, s.uri]);
  t.equal(cmp.code, 0, 'unchanged');
});

t.test('at the overlay limit a write fails with ENOSPC and the disk keeps its bytes', async (t) => {
  const s = await servedPoint({ overlayLimitBytes: 64 * 1024 });
  t.teardown(() => s.close());
  const io = await run('qemu-io', ['-f', 'raw', '-c', `write -P 0xee ${4 * MiB} ${MiB}`, s.uri]);
  t.match(io.stdout + io.stderr, /No space left on device/, io.stdout + io.stderr);
  const small = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0xee 0 4096', '-c', 'read -P 0xee 0 4096', s.uri]);
  t.equal(small.code, 0, 'a write within the limit still works');
  t.notMatch(small.stdout, /Pattern verification failed/);
  const back = (await s.datastore.read(s.fileId, 4 * MiB, MiB)).data;
  t.ok(back.equals(s.imageBytes.subarray(4 * MiB, 5 * MiB)), 'the refused write left nothing behind');
});

t.test('TCP on 127.0.0.1 serves the same bytes', async (t) => {
  const s = await servedPoint();
  t.teardown(() => s.close());
  const { port } = await s.server.listenTcp('127.0.0.1', 0);
  t.ok(port > 0);
  const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', s.image, `nbd://127.0.0.1:${port}/root`]);
  t.equal(cmp.code, 0, cmp.stderr);
  t.match(cmp.stdout, /Images are identical/);
  const tls = await run('nbdinfo', ['--list', `nbds://127.0.0.1:${port}/root`]);
  t.not(tls.code, 0, 'a client that requires TLS is refused');
});

t.test('TCP lets in only the allowed clients: loopback by default, nobody else unless allowed', async (t) => {
  const s = await servedPoint({ server: { allow: ['192.0.2.0/24'] } });
  t.teardown(() => s.close());
  const { port } = await s.server.listenTcp('127.0.0.1', 0);
  // A client outside the list is closed at accept: it never sees the server's greeting.
  const greeting = await new Promise<Buffer>((resolve, reject) => {
    const c = net.connect(port, '127.0.0.1');
    const got: Buffer[] = [];
    c.on('data', (d) => got.push(d));
    c.on('close', () => resolve(Buffer.concat(got)));
    c.on('error', reject);
  });
  t.equal(greeting.length, 0, 'no NBDMAGIC for a client the list does not name');
  const info = await run('nbdinfo', ['--size', `nbd://127.0.0.1:${port}/root`]);
  t.not(info.code, 0, 'a real client is refused too');
  const unix = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', s.image, s.uri]);
  t.equal(unix.code, 0, `the unix socket is governed by its file mode, not the list: ${unix.stderr}`);
  t.throws(() => new NbdServer({ datastore: s.datastore, exports: () => [], allow: ['not-an-address'] }), RangeError);
});

t.test('the unix socket: mode 0600, stale sockets replaced, live ones and other files left alone', async (t) => {
  const s = await servedPoint();
  t.teardown(() => s.close());
  t.equal(fs.statSync(s.socket).mode & 0o777, 0o600, 'mode 0600');
  const exports = () => [{ name: 'root', fileId: s.fileId, readOnly: true }];
  const other = new NbdServer({ datastore: s.datastore, exports });
  await t.rejects(other.listenUnix(s.socket), { code: 'NBD_SOCKET_IN_USE' }, 'a live socket is not taken over');
  const file = path.join(s.dir, 'plain');
  fs.writeFileSync(file, 'x');
  await t.rejects(other.listenUnix(file), { code: 'NBD_SOCKET_PATH' }, 'a regular file is not replaced');
  t.equal(fs.readFileSync(file, 'utf8'), 'x');
  // A stale socket: bound by a server that is gone without removing it.
  const stale = path.join(s.dir, 'stale.sock');
  const dead = net.createServer();
  await new Promise<void>((r) => dead.listen(stale, r));
  fs.renameSync(stale, `${stale}.keep`);
  await new Promise<void>((r) => dead.close(() => r()));
  fs.renameSync(`${stale}.keep`, stale);
  t.ok(fs.lstatSync(stale).isSocket(), 'a stale socket file is there');
  await other.listenUnix(stale, { mode: 0o660 });
  t.equal(fs.statSync(stale).mode & 0o777, 0o660, 'replaced, with the mode asked for');
  const info = await run('nbdinfo', [`nbd+unix:///root?socket=${stale}`]);
  t.equal(info.code, 0, info.stderr);
  await other.close();
  t.notOk(fs.existsSync(stale), 'close removes its socket');
  t.ok(fs.existsSync(s.socket), "and leaves the other server's");
});

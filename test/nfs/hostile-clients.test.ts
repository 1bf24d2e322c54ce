/**
 * The NFS server survives hostile clients (issue #13): floods of empty
 * fragments, hundreds of half-sent records, clients that never read their
 * replies, strangers, malformed credentials. Each case ends with a real
 * client (libnfs nfs-cat) reading a file correctly from the same server.
 * Loopback only; ephemeral ports.
 */
import t from 'tap';
import crypto from 'node:crypto';
import net from 'node:net';
import { ROOT_ID } from '../../src/datastore/types.js';
import { HandleCodec } from '../../src/nfs/handle.js';
import { cat, hyper, mark, opaque, sattrMode, words } from './fixtures/bytes.js';
import { requireTool, run, SERVER_ID, startServer } from './fixtures/harness.js';
import { MemoryDatastore } from './fixtures/memory-datastore.js';
import { accepted, callBytes, RawClient } from './fixtures/rpc-client.js';
import type { BoundPorts } from '../../src/nfs/server.js';

const NFS = 100003;
const MOUNT = 100005;
const MiB = 1024 * 1024;
const fh = (id: number): Buffer => new HandleCodec(Buffer.from(SERVER_ID, 'hex')).encode(id);
const sha = (b: Buffer): string => crypto.createHash('sha256').update(b).digest('hex');

/** A datastore with one 3 MiB disk, as a publication has. */
function seeded(): { ds: MemoryDatastore; disk: Buffer; diskId: number } {
  const ds = new MemoryDatastore();
  const pub = ds.putDir(ROOT_ID, 'pub');
  const disk = crypto.randomBytes(3 * MiB + 17);
  const diskId = ds.putFile(pub, 'disk.raw', disk);
  return { ds, disk, diskId };
}

/** The proof that the server still serves: a real NFS client (libnfs nfs-cat) reads the whole disk. */
async function realClientRead(ports: BoundPorts): Promise<{ code: number | null; stderr: string; sha: string }> {
  requireTool('nfs-cat');
  const r = await run(
    'nfs-cat',
    [`nfs://127.0.0.1/restorelab/pub/disk.raw?nfsport=${ports.nfs}&mountport=${ports.mount}`],
    undefined,
    120_000,
  );
  return { code: r.code, stderr: r.stderr, sha: sha(r.stdout) };
}

async function until(what: string, cond: () => boolean, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Connects from a chosen loopback source address; resolves with the socket once the server may have closed it. */
function connectFrom(port: number, localAddress: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port, localAddress }, () => resolve(s));
    s.once('error', reject);
  });
}

const mem = (): { rss: number; heap: number; buffers: number } => {
  const m = process.memoryUsage();
  return { rss: m.rss, heap: m.heapUsed, buffers: m.arrayBuffers };
};

t.test('a flood of zero-length non-last fragments closes that connection at once; memory stays flat', async (t) => {
  const { ds, disk } = seeded();
  const { server, ports } = await startServer(ds);
  t.teardown(() => server.stop());
  // 91 MB of empty non-last fragment headers (what killed the server in the report), sent in 1 MiB writes.
  const chunk = Buffer.concat(Array.from({ length: MiB / 4 }, () => mark(0, false)));
  global.gc?.();
  const before = mem();
  const c = await RawClient.connect(ports.nfs);
  let sent = 0;
  while (sent < 91 * MiB && !c.closed) {
    c.sendRaw(chunk);
    sent += chunk.length;
    // Let the server read, and the close arrive, between writes (as a real sender would see it).
    if (c.sock.writableLength > 8 * MiB) await new Promise((r) => setTimeout(r, 5));
  }
  await c.untilClosed();
  t.equal(server.metrics.closedForAbuse, 1, 'closed for abuse, counted once');
  t.equal(server.metrics.partialRecordBytes, 0, 'nothing of it is kept');
  t.equal(server.metrics.openConnections, 0);
  const after = mem();
  t.ok(after.heap - before.heap < 32 * MiB, `heap grew by ${((after.heap - before.heap) / MiB).toFixed(1)} MiB (< 32)`);
  t.ok(
    after.buffers - before.buffers < 16 * MiB,
    `Buffer memory grew by ${((after.buffers - before.buffers) / MiB).toFixed(1)} MiB (< 16)`,
  );
  t.ok(after.rss - before.rss < 96 * MiB, `RSS grew by ${((after.rss - before.rss) / MiB).toFixed(1)} MiB (< 96, the flood was 91)`);
  const read = await realClientRead(ports);
  t.equal(read.code, 0, read.stderr);
  t.equal(read.sha, sha(disk), 'nfs-cat reads the disk correctly after the flood');
});

t.test('500 connections sending 1-byte fragments: caps refuse most, timeouts close the rest, memory bounded', async (t) => {
  const { ds, disk } = seeded();
  const { server, ports } = await startServer(ds, {
    allow: ['127.0.0.0/8'],
    limits: { maxConnections: 64, maxConnectionsPerAddress: 8, recordTimeoutMs: 1500, idleTimeoutMs: 3000, maxFragmentsPerRecord: 256 },
  });
  t.teardown(() => server.stop());
  global.gc?.();
  const before = mem();
  const socks: net.Socket[] = [];
  t.teardown(() => socks.forEach((s) => s.destroy()));
  // 500 connections from 50 loopback addresses, 10 each: the per-address cap (8) and the total cap (64) both bind.
  for (let a = 0; a < 50; a++) {
    for (let i = 0; i < 10; i++) {
      const s = await connectFrom(ports.nfs, `127.0.1.${a + 1}`);
      s.on('error', () => {});
      socks.push(s);
    }
  }
  await until('every refused connection counted', () => server.metrics.refusedOverCapacity + server.metrics.connections === 500);
  await until('the refused connections are closed on our side too', () => socks.filter((s) => !s.destroyed).length === 64);
  t.equal(server.metrics.connections, 64, 'the total cap admits 64');
  t.equal(server.metrics.refusedOverCapacity, 436, 'the rest are refused at accept');
  t.equal(server.metrics.openConnections, 64);
  // Every connection starts a record in 1-byte fragments (200 of them, under the 256 limit) and never ends it.
  const frags = Buffer.concat(Array.from({ length: 200 }, () => cat(mark(1, false), Buffer.from('x'))));
  for (const s of socks) if (!s.destroyed) s.write(frags);
  // One goes on past the fragment limit: closed for abuse at once, not at the timeout.
  const greedy = socks.find((s) => !s.destroyed)!;
  greedy.write(Buffer.concat(Array.from({ length: 100 }, () => cat(mark(1, false), Buffer.from('y')))));
  await until('the greedy connection is closed for abuse', () => server.metrics.closedForAbuse === 1);
  const mid = mem();
  t.ok(server.metrics.partialRecordBytes <= 64 * 200, `half-sent records held: ${server.metrics.partialRecordBytes} bytes`);
  // A record begun must be finished within recordTimeoutMs: all 63 others are closed as stalled.
  await until('the stalled connections are closed', () => server.metrics.openConnections === 0, 10_000);
  t.equal(server.metrics.closedIdle, 63, 'each half-sent record timed out');
  t.equal(server.metrics.partialRecordBytes, 0, 'and its bytes were given back');
  t.ok(mid.rss - before.rss < 64 * MiB, `RSS grew by ${((mid.rss - before.rss) / MiB).toFixed(1)} MiB with 64 half-sent records (< 64)`);
  // With the slots free, new connections are admitted again, and a real client is served.
  const read = await realClientRead(ports);
  t.equal(read.code, 0, read.stderr);
  t.equal(read.sha, sha(disk), 'nfs-cat reads the disk correctly after the 500 connections');
});

t.test('an idle connection is closed after the idle timeout; a busy one is not', async (t) => {
  const { ds } = seeded();
  const { server, ports } = await startServer(ds, { limits: { idleTimeoutMs: 600 } });
  t.teardown(() => server.stop());
  const idle = await RawClient.connect(ports.nfs);
  const busy = await RawClient.connect(ports.nfs);
  t.teardown(() => {
    idle.close();
    busy.close();
  });
  const start = Date.now();
  while (Date.now() - start < 1500) {
    t.same(await busy.call(1, NFS, 3, 0), accepted(1, 0), 'NULL every 100 ms keeps it open');
    await new Promise((r) => setTimeout(r, 100));
    if (idle.closed) break;
  }
  await idle.untilClosed(3000);
  t.equal(busy.closed, false, 'the busy connection stays');
  t.equal(server.metrics.closedIdle, 1);
});

t.test('60 clients that send READs and never read replies: the pending-reply budget holds; a good client is served', async (t) => {
  const { ds, disk, diskId } = seeded();
  const budget = 48 * MiB;
  const { server, ports } = await startServer(ds, {
    allow: ['127.0.0.0/8'],
    limits: { maxPendingBytesTotal: budget, slowReaderTimeoutMs: 2000 },
  });
  t.teardown(() => server.stop());
  global.gc?.();
  const before = mem();
  const hogs: net.Socket[] = [];
  t.teardown(() => hogs.forEach((s) => s.destroy()));
  const readCall = callBytes(7, NFS, 3, 6, cat(opaque(fh(diskId)), hyper(0), words(MiB)));
  const burst = Buffer.concat(Array.from({ length: 64 }, () => cat(mark(readCall.length), readCall)));
  for (let i = 0; i < 60; i++) {
    // Each from its own loopback address, so the per-address cap does not hide the budget.
    const s = await connectFrom(ports.nfs, `127.0.2.${i + 1}`);
    s.on('error', () => {});
    s.pause(); // never reads a reply
    s.write(burst); // 64 MiB of READs asked for
    hogs.push(s);
  }
  t.equal(server.metrics.connections, 60, 'all 60 admitted');
  // Sample while the hogs sit on their replies.
  let peakPending = 0;
  const sampleUntil = Date.now() + 1500;
  while (Date.now() < sampleUntil) {
    peakPending = Math.max(peakPending, server.metrics.pendingBytes);
    await new Promise((r) => setTimeout(r, 25));
  }
  const mid = mem();
  t.ok(
    peakPending > 0 && peakPending <= budget,
    `pending bytes peaked at ${(peakPending / MiB).toFixed(1)} MiB (budget ${budget / MiB} MiB)`,
  );
  t.ok(mid.rss - before.rss < budget + 96 * MiB, `RSS grew by ${((mid.rss - before.rss) / MiB).toFixed(1)} MiB (< budget + 96)`);
  // Buffers (reply data) track what is pinned more closely than RSS, which earlier tests may have raised already.
  t.ok(
    mid.buffers - before.buffers < budget + 16 * MiB,
    `Buffer memory grew by ${((mid.buffers - before.buffers) / MiB).toFixed(1)} MiB (< budget + 16)`,
  );
  // The hogs never take their replies: past the slow-reader timeout they are closed and the budget comes back.
  await until('the hogs are closed as slow readers', () => server.metrics.openConnections === 0, 120_000);
  t.ok(server.metrics.closedSlowReader >= 1, `${server.metrics.closedSlowReader} closed as slow readers`);
  t.equal(server.metrics.pendingBytes, 0, 'every byte of the budget given back');
  const read = await realClientRead(ports);
  t.equal(read.code, 0, read.stderr);
  t.equal(read.sha, sha(disk), 'nfs-cat reads the disk correctly from a well-behaved client after the hogs');
});

t.test('a client that reads slowly but steadily is not closed, and its replies are right', async (t) => {
  const { ds, disk, diskId } = seeded();
  const { server, ports } = await startServer(ds, { limits: { slowReaderTimeoutMs: 1000, maxPendingReplyBytesPerConnection: MiB } });
  t.teardown(() => server.stop());
  const c = await RawClient.connect(ports.nfs);
  t.teardown(() => c.close());
  const pieces: Buffer[] = [];
  for (let i = 0; i < 3; i++) {
    const r = callBytes(100 + i, NFS, 3, 6, cat(opaque(fh(diskId)), hyper(i * MiB), words(MiB)));
    c.sendRaw(cat(mark(r.length), r));
  }
  // Take the replies in small sips: pause, wait a little, resume.
  c.sock.pause();
  const sip = setInterval(() => {
    c.sock.resume();
    setTimeout(() => c.sock.pause(), 5);
  }, 100);
  t.teardown(() => clearInterval(sip));
  for (let i = 0; i < 3; i++) pieces.push(await c.next(20_000));
  clearInterval(sip);
  c.sock.resume();
  const byXid = pieces.sort((a, b) => a.readUInt32BE(0) - b.readUInt32BE(0));
  const data = byXid.map((p) => p.subarray(p.length - MiB));
  t.equal(sha(Buffer.concat(data)), sha(disk.subarray(0, 3 * MiB)), 'the three 1 MiB READs carry the right bytes');
  t.equal(server.metrics.closedSlowReader, 0, 'a reader that makes progress is not a slow reader');
});

t.test('a connection from an address outside the allowlist is closed before any record is read', async (t) => {
  const { ds } = seeded();
  const { server, ports } = await startServer(ds, { allow: ['127.0.0.2/32'] });
  t.teardown(() => server.stop());
  const stranger = await RawClient.connect(ports.mount, '127.0.0.1');
  t.teardown(() => stranger.close());
  const mnt = callBytes(1, MOUNT, 3, 1, opaque('/restorelab'));
  stranger.sendRaw(cat(mark(mnt.length), mnt, mark(8, false)));
  const answered = stranger.next(2000).then(
    () => true,
    () => false,
  );
  await stranger.untilClosed();
  t.equal(await answered, false, 'nothing answered');
  t.equal(server.metrics.refusedNotAllowed, 1, 'refused at accept');
  t.equal(server.metrics.connections, 0, 'never admitted');
  t.equal(server.metrics.mountEntries, 0, 'its MNT was never read');
  t.equal(server.metrics.closedForAbuse, 0, 'not even framed (the trailing half fragment would count)');
  const friend = await RawClient.connect(ports.mount, '127.0.0.2');
  t.teardown(() => friend.close());
  t.same(
    (await friend.call(2, MOUNT, 3, 1, opaque('/restorelab'))).subarray(0, 28),
    cat(accepted(2, 0), words(0)),
    'the allowed address mounts',
  );
  t.equal(server.metrics.mountEntries, 1);
});

t.test('the MOUNT table is bounded and one path has one entry however it is spelled', async (t) => {
  const ds = new MemoryDatastore();
  for (let i = 0; i < 10; i++) ds.putDir(ROOT_ID, `d${i}`);
  const { server, ports } = await startServer(ds, { limits: { maxMountEntries: 4 } });
  t.teardown(() => server.stop());
  const c = await RawClient.connect(ports.mount);
  t.teardown(() => c.close());
  let xid = 0;
  for (const p of ['/restorelab', '//restorelab/', '/restorelab/.', '/restorelab//./']) {
    t.equal((await c.call(++xid, MOUNT, 3, 1, opaque(p))).readUInt32BE(24), 0, `MNT ${p}`);
  }
  t.equal(server.metrics.mountEntries, 1, 'four spellings, one entry');
  const dump = await c.call(++xid, MOUNT, 3, 2);
  t.same(dump.subarray(24), cat(words(1), opaque('127.0.0.1'), opaque('/restorelab'), words(0)), 'DUMP lists the normalised path');
  for (let i = 0; i < 10; i++) await c.call(++xid, MOUNT, 3, 1, opaque(`/restorelab/d${i}`));
  t.equal(server.metrics.mountEntries, 4, 'bounded at maxMountEntries');
  const last = await c.call(++xid, MOUNT, 3, 2);
  t.same(
    last.subarray(24),
    cat(...[6, 7, 8, 9].map((i) => cat(words(1), opaque('127.0.0.1'), opaque(`/restorelab/d${i}`))), words(0)),
    'the newest entries are kept',
  );
  await c.call(xid + 1, MOUNT, 3, 3, opaque('/restorelab/d9/.'));
  t.equal(server.metrics.mountEntries, 3, 'UMNT of another spelling removes the entry');
});

t.test('root squash: uid/gid 0 reach the datastore as 65534 unless turned off', async (t) => {
  const create = (xid: number, name: string, uid: number, gid: number, attrs = words(0, 0, 0, 0, 0, 0)): Buffer =>
    callBytes(xid, NFS, 3, 8, cat(opaque(fh(ROOT_ID)), opaque(name), words(0), attrs), 2, uid, gid);
  const owner = async (ds: MemoryDatastore, name: string): Promise<[number, number]> => {
    const a = await ds.getattr(await ds.lookup(ROOT_ID, name));
    return [a.uid, a.gid];
  };
  const status = (r: Buffer): number => r.readUInt32BE(24);

  const ds = new MemoryDatastore();
  const { server, ports } = await startServer(ds);
  t.teardown(() => server.stop());
  const c = await RawClient.connect(ports.nfs);
  t.teardown(() => c.close());
  const send = async (b: Buffer): Promise<Buffer> => {
    c.sendRaw(cat(mark(b.length), b));
    return c.next();
  };
  t.equal(status(await send(create(1, 'as-root', 0, 0))), 0, 'CREATE as uid 0');
  t.same(await owner(ds, 'as-root'), [65534, 65534], 'squash on (default): owner 65534:65534');
  t.equal(status(await send(create(2, 'root-in-staff', 0, 50))), 0);
  t.same(await owner(ds, 'root-in-staff'), [65534, 50], 'uid and gid are squashed each on its own');
  t.equal(status(await send(create(3, 'user', 1000, 0))), 0);
  t.same(await owner(ds, 'user'), [1000, 65534], 'gid 0 alone is squashed too');
  const fileId = await ds.lookup(ROOT_ID, 'user');
  const chown0 = callBytes(4, NFS, 3, 2, cat(opaque(fh(fileId)), words(0, 1, 0, 0, 0, 0, 0), words(0)), 2, 1000, 1000);
  t.equal(status(await send(chown0)), 1, 'SETATTR giving a file to uid 0 -> PERM under squash');
  t.same(await owner(ds, 'user'), [1000, 65534], 'and the owner is unchanged');
  t.equal(
    status(await send(create(5, 'chowned-create', 1000, 1000, cat(words(0), words(1, 0), words(0, 0, 0, 0))))),
    1,
    'CREATE with attributes giving it to uid 0 -> PERM under squash',
  );
  await t.rejects(ds.lookup(ROOT_ID, 'chowned-create'), 'and nothing was created');

  const open = new MemoryDatastore();
  const off = await startServer(open, { rootSquash: false });
  t.teardown(() => off.server.stop());
  const d = await RawClient.connect(off.ports.nfs);
  t.teardown(() => d.close());
  const b = create(6, 'esxi', 0, 0);
  d.sendRaw(cat(mark(b.length), b));
  t.equal(status(await d.next()), 0);
  t.same(await owner(open, 'esxi'), [0, 0], 'squash off (ESXi): owner 0:0');
  const mode = callBytes(7, NFS, 3, 2, cat(opaque(fh(await open.lookup(ROOT_ID, 'esxi'))), sattrMode(0o600), words(0)), 2, 0, 0);
  d.sendRaw(cat(mark(mode.length), mode));
  t.equal(status(await d.next()), 0, 'root may SETATTR with squash off');
});

t.test('malformed AUTH_SYS credentials are denied with AUTH_BADCRED; the server keeps serving', async (t) => {
  const { ds, disk } = seeded();
  const { server, ports } = await startServer(ds);
  t.teardown(() => server.stop());
  const c = await RawClient.connect(ports.nfs);
  t.teardown(() => c.close());
  const withCred = (xid: number, cred: Buffer): Buffer => cat(words(xid, 0, 2, NFS, 3, 0, 1), opaque(cred), words(0, 0));
  const gids = (n: number): Buffer => cat(words(n), ...Array.from({ length: n }, (_, i) => words(i + 1)));
  const badcred = (xid: number): Buffer => words(xid, 1, 1, 1, 1);
  const cases: [string, Buffer][] = [
    ['machine name of 256 bytes', cat(words(0), opaque('m'.repeat(256)), words(0, 0), gids(0))],
    ['17 gids', cat(words(0), opaque('host'), words(0, 0), gids(17))],
    ['truncated after the uid', cat(words(0), opaque('host'), words(0))],
    ['gid count larger than the body', cat(words(0), opaque('host'), words(0, 0), words(5, 1))],
    ['bytes after the gids', cat(words(0), opaque('host'), words(0, 0), gids(1), words(9))],
    ['machine name length past the body', cat(words(0), words(4000))],
  ];
  let xid = 10;
  for (const [what, cred] of cases) {
    const call = withCred(++xid, cred);
    c.sendRaw(cat(mark(call.length), call));
    t.same(await c.next(), badcred(xid), what);
  }
  const tooLong = cat(words(++xid, 0, 2, NFS, 3, 0, 1), words(401), Buffer.alloc(404), words(0, 0));
  c.sendRaw(cat(mark(tooLong.length), tooLong));
  t.same(await c.next(), badcred(xid), 'credential body over 400 bytes');
  const cut = withCred(++xid, cat(words(0), opaque('host'), words(0, 0), gids(2))).subarray(0, 40);
  c.sendRaw(cat(mark(cut.length), cut));
  t.same(await c.next(), badcred(xid), 'record ends inside the credential');
  t.same(await c.call(++xid, NFS, 3, 0), accepted(xid, 0), 'a good call on the same connection is answered');
  t.equal(c.closed, false);
  const good = withCred(++xid, cat(words(0), opaque('host'), words(1000, 1000), gids(16)));
  c.sendRaw(cat(mark(good.length), good));
  t.same(await c.next(), accepted(xid, 0), 'a well-formed credential with 16 gids is accepted');
  const read = await realClientRead(ports);
  t.equal(read.code, 0, read.stderr);
  t.equal(read.sha, sha(disk), 'nfs-cat reads the disk correctly after the malformed credentials');
});

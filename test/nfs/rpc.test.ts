import t from 'tap';
import crypto from 'node:crypto';
import { ROOT_ID } from '../../src/datastore/types.js';
import { HandleCodec } from '../../src/nfs/handle.js';
import { cat, hyper, mark, opaque, words } from './fixtures/bytes.js';
import { eachDatastore, memoryFactory, SERVER_ID, startServer } from './fixtures/harness.js';
import { accepted, callBytes, RawClient } from './fixtures/rpc-client.js';

const NFS = 100003;
const MOUNT = 100005;
const fh = (id: number): Buffer => new HandleCodec(Buffer.from(SERVER_ID, 'hex')).encode(id);

eachDatastore(t, 'RPC-level errors and NFS status replies, byte for byte', async (t, fx) => {
  const { datastore, dir } = fx;
  const f = await fx.putFile('f', Buffer.from('abc'));
  const { server, ports } = await startServer(datastore, { portmapPort: null });
  t.teardown(() => server.stop());
  const c = await RawClient.connect(ports.nfs);
  t.teardown(() => c.close());

  t.same(await c.call(1, NFS, 3, 0), accepted(1, 0), 'NFS NULL');
  t.same(await c.call(2, 999999, 1, 0), accepted(2, 1), 'PROG_UNAVAIL');
  t.same(await c.call(3, NFS, 4, 0), cat(accepted(3, 2), words(3, 3)), 'PROG_MISMATCH low/high');
  t.same(await c.call(4, NFS, 3, 22), accepted(4, 3), 'PROC_UNAVAIL');
  t.same(await c.call(5, NFS, 3, 1, words(100)), accepted(5, 4), 'GARBAGE_ARGS on truncated handle');
  const bad = callBytes(6, NFS, 3, 0, Buffer.alloc(0), 3);
  c.sendRaw(cat(mark(bad.length), bad));
  t.same(await c.next(), words(6, 1, 1, 0, 2, 2), 'RPC_MISMATCH 2..2');
  t.same(await c.call(7, NFS, 3, 1, opaque(Buffer.alloc(5))), words(7, 1, 0, 0, 0, 0, 10001), 'GETATTR bad handle -> BADHANDLE');
  t.same(await c.call(8, NFS, 3, 1, opaque(fh(999))), words(8, 1, 0, 0, 0, 0, 70), 'GETATTR unknown fileid -> STALE');
  const lk = await c.call(9, NFS, 3, 3, cat(opaque(fh(dir)), opaque('a/b')));
  t.same(lk.subarray(0, 32), words(9, 1, 0, 0, 0, 0, 22, 1), 'LOOKUP a/b -> INVAL + dir post_op_attr');
  const long = await c.call(10, NFS, 3, 3, cat(opaque(fh(dir)), opaque('x'.repeat(300))));
  t.same(long.subarray(0, 28), words(10, 1, 0, 0, 0, 0, 63), 'NAMETOOLONG');
  const mknod = await c.call(11, NFS, 3, 11, cat(opaque(fh(dir)), opaque('p'), words(9)));
  t.same(mknod, accepted(11, 4), 'unknown ftype enum -> GARBAGE_ARGS');
  const link = await c.call(12, NFS, 3, 15, cat(opaque(fh(f)), opaque(fh(dir)), opaque('l')));
  t.same(link.subarray(0, 28), words(12, 1, 0, 0, 0, 0, 10004), 'LINK -> NOTSUPP');
  const read = await c.call(13, NFS, 3, 6, cat(opaque(fh(f)), hyper(0), words(100)));
  t.same(read.subarray(0, 32), words(13, 1, 0, 0, 0, 0, 0, 1), 'READ ok with attrs');
  t.same(read.subarray(read.length - 16), cat(words(3, 1), opaque('abc')), 'READ count, eof, data');
  const create = callBytes(14, NFS, 3, 8, cat(opaque(fh(dir)), opaque('owned'), words(0), words(0, 0, 0, 0, 0, 0)), 2, 1234, 567);
  c.sendRaw(cat(mark(create.length), create));
  t.equal((await c.next()).readUInt32BE(24), 0, 'CREATE as uid 1234');
  const owned = await datastore.getattr(await datastore.lookup(dir, 'owned'));
  t.same([owned.uid, owned.gid], [1234, 567], 'AUTH_SYS credentials reach the datastore as Caller');
  const gss = callBytes(15, NFS, 3, 0, Buffer.alloc(0), 2, 0, 0, 6);
  c.sendRaw(cat(mark(gss.length), gss));
  t.same(await c.next(), words(15, 1, 1, 1, 1), 'RPCSEC_GSS -> AUTH_ERROR AUTH_BADCRED');
  const none = callBytes(16, NFS, 3, 0, Buffer.alloc(0), 2, 0, 0, 0);
  c.sendRaw(cat(mark(none.length), none));
  t.same(await c.next(), accepted(16, 0), 'AUTH_NONE accepted');
  // Pipelined: two calls in one TCP write, both answered.
  const a = callBytes(20, NFS, 3, 0, Buffer.alloc(0));
  const b = callBytes(21, NFS, 3, 0, Buffer.alloc(0));
  c.sendRaw(cat(mark(a.length), a, mark(b.length), b));
  const xids = [(await c.next()).readUInt32BE(0), (await c.next()).readUInt32BE(0)].sort();
  t.same(xids, [20, 21]);
  const mnt = await c.call(30, MOUNT, 3, 1, opaque('/restorelab'));
  t.same(mnt, cat(accepted(30, 0), words(0), opaque(fh(ROOT_ID)), words(2, 1, 0)), 'MNT returns root handle');
  t.same((await c.call(31, MOUNT, 3, 1, opaque('/other'))).subarray(24), words(2), 'MNT unknown path -> NOENT');
  t.same(
    await c.call(32, MOUNT, 3, 1, opaque(`/restorelab${fx.dirPath}`)),
    cat(accepted(32, 0), words(0), opaque(fh(dir)), words(2, 1, 0)),
    'MNT of the publication directory returns its handle',
  );
});

t.test('a client outside the allowed CIDR is closed at accept, before its MNT is read', async (t) => {
  const { datastore } = await memoryFactory();
  const { server, ports } = await startServer(datastore, { host: '0.0.0.0', allow: ['127.0.0.1/32'] });
  t.teardown(() => server.stop());
  const c = await RawClient.connect(ports.mount, '127.0.0.2');
  t.teardown(() => c.close());
  const call = callBytes(1, MOUNT, 3, 1, opaque('/restorelab'));
  c.sendRaw(cat(mark(call.length), call));
  const reply = c.next(2000).then(
    () => 'reply',
    () => 'none',
  );
  await c.untilClosed();
  t.equal(await reply, 'none', 'nothing was answered');
  t.equal(server.metrics.refusedNotAllowed, 1);
  t.equal(server.metrics.connections, 0, 'never accepted');
});

eachDatastore(t, 'fuzz: garbage never crashes, a good client keeps working, memory bounded', async (t, fx) => {
  const f = await fx.putFile('f', Buffer.from('abc'));
  const { server, ports } = await startServer(fx.datastore);
  t.teardown(() => server.stop());
  const good = await RawClient.connect(ports.nfs);
  t.teardown(() => good.close());
  const rss0 = process.memoryUsage().rss;
  let seedN = 1;
  const rnd = (n: number): number => {
    seedN = (seedN * 1103515245 + 12345) & 0x7fffffff;
    return seedN % n;
  };
  for (let round = 0; round < 60; round++) {
    const bad = await RawClient.connect(ports.nfs);
    for (let i = 0; i < 50; i++) {
      const kind = rnd(5);
      let rec: Buffer;
      if (kind === 0) rec = crypto.randomBytes(rnd(200));
      else if (kind === 1) rec = callBytes(i, NFS, 3, rnd(25), crypto.randomBytes(rnd(120)));
      else if (kind === 2) rec = callBytes(i, NFS, 3, rnd(22), cat(opaque(crypto.randomBytes(28)), crypto.randomBytes(rnd(64))));
      else if (kind === 3) rec = callBytes(i, MOUNT, 3, rnd(7), crypto.randomBytes(rnd(40)));
      else rec = callBytes(i, NFS, 3, rnd(22), cat(opaque(fh(f)), crypto.randomBytes(rnd(64))));
      const trunc = rnd(4) === 0 ? rec.subarray(0, rnd(rec.length + 1)) : rec;
      bad.sendRaw(cat(mark(trunc.length), trunc));
    }
    if (round % 10 === 0) bad.sendRaw(mark(0x7fffffff));
    const r = await good.call(1000 + round, NFS, 3, 1, opaque(fh(f)));
    if (r.readUInt32BE(24) !== 0) t.fail('good client GETATTR failed');
    bad.close();
  }
  const r = await good.call(5000, NFS, 3, 1, opaque(fh(f)));
  t.equal(r.readUInt32BE(24), 0, 'good client still served');
  t.same((await fx.datastore.read(f, 0, 10)).data, Buffer.from('abc'), 'the file reads as it was put');
  t.ok(server.metrics.closedForAbuse >= 1, 'oversized records close their connection');
  t.ok(process.memoryUsage().rss - rss0 < 200 * 1024 * 1024, 'RSS bounded');
});

eachDatastore(t, 'a client that never reads its replies cannot grow server memory', async (t, fx) => {
  const big = await fx.putFile('big', Buffer.alloc(1 << 20, 1));
  const { server, ports } = await startServer(fx.datastore);
  t.teardown(() => server.stop());
  const hog = await RawClient.connect(ports.nfs);
  t.teardown(() => hog.close());
  hog.sock.pause();
  const rss0 = process.memoryUsage().rss;
  const req = callBytes(1, NFS, 3, 6, cat(opaque(fh(big)), hyper(0), words(1 << 20)));
  const burst = Buffer.concat(Array.from({ length: 500 }, () => cat(mark(req.length), req)));
  hog.sendRaw(burst);
  await new Promise((r) => setTimeout(r, 1000));
  const good = await RawClient.connect(ports.nfs);
  t.teardown(() => good.close());
  t.equal((await good.call(2, NFS, 3, 1, opaque(fh(big)))).readUInt32BE(24), 0, 'other clients still served');
  t.ok(server.metrics.bytesRead < 100 * (1 << 20), `server stopped reading the hog (${server.metrics.bytesRead} bytes read)`);
  t.ok(process.memoryUsage().rss - rss0 < 300 * 1024 * 1024, 'RSS bounded');
});

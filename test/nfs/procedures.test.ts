import t from 'tap';
import { ROOT_ID } from '../../src/datastore/types.js';
import { HandleCodec } from '../../src/nfs/handle.js';
import { cat, fattrOf, hyper, opaque, postOp, postOpOf, sattrMode, wcc, wccOf, words, type FattrSpec } from './fixtures/bytes.js';
import { eachDatastore, SERVER_ID, startServer } from './fixtures/harness.js';
import { MemoryDatastore } from './fixtures/memory-datastore.js';
import { accepted, RawClient } from './fixtures/rpc-client.js';

const NFS = 100003;
const T = 1_700_000_000;
const fh = (id: number): Buffer => new HandleCodec(Buffer.from(SERVER_ID, 'hex')).encode(id);
const ok = (xid: number): Buffer => cat(accepted(xid, 0), words(0));
const fail = (xid: number, status: number): Buffer => cat(accepted(xid, 0), words(status));

t.test('every NFSv3 procedure reply, byte for byte', async (t) => {
  const ds = new MemoryDatastore(false, () => new Date(T * 1000));
  ds.putFile(ROOT_ID, 'f', Buffer.from('abc'));
  const { server, ports } = await startServer(ds);
  t.teardown(() => server.stop());
  const c = await RawClient.connect(ports.nfs);
  t.teardown(() => c.close());
  let xid = 100;
  const call = (proc: number, args: Buffer): Promise<Buffer> => c.call(++xid, NFS, 3, proc, args);
  const root = (over: Partial<FattrSpec> = {}): FattrSpec => ({ type: 2, mode: 0o755, nlink: 2, size: 0, fileid: 1, t: T, ...over });
  const f = (over: Partial<FattrSpec> = {}): FattrSpec => ({ type: 1, mode: 0o644, nlink: 1, size: 3, fileid: 2, t: T, ...over });

  t.same(await call(0, Buffer.alloc(0)), accepted(xid, 0), 'NULL');
  t.same(await call(1, opaque(fh(ROOT_ID))), cat(ok(xid), postOp(root()).subarray(4)), 'GETATTR');
  t.same(await call(2, cat(opaque(fh(2)), sattrMode(0o600), words(0))), cat(ok(xid), wcc(f(), f({ mode: 0o600 }))), 'SETATTR');
  t.same(await call(2, cat(opaque(fh(2)), sattrMode(0o644), words(0))), cat(ok(xid), wcc(f({ mode: 0o600 }), f())), 'SETATTR back');
  t.same(await call(3, cat(opaque(fh(ROOT_ID)), opaque('f'))), cat(ok(xid), opaque(fh(2)), postOp(f()), postOp(root())), 'LOOKUP');
  t.same(await call(3, cat(opaque(fh(ROOT_ID)), opaque('zz'))), cat(fail(xid, 2), postOp(root())), 'LOOKUP missing -> NOENT');
  t.same(await call(4, cat(opaque(fh(2)), words(0x3f))), cat(ok(xid), postOp(f()), words(0x1d)), 'ACCESS');
  t.same(await call(5, opaque(fh(2))), cat(fail(xid, 22), postOp(f())), 'READLINK on a file -> INVAL');
  t.same(await call(6, cat(opaque(fh(2)), hyper(1), words(10))), cat(ok(xid), postOp(f()), words(2, 1), opaque('bc')), 'READ');
  const wr = await call(7, cat(opaque(fh(2)), hyper(3), words(2, 0), opaque('de')));
  t.same(wr.subarray(0, wr.length - 8), cat(ok(xid), wcc(f(), f({ size: 5 })), words(2, 0)), 'WRITE UNSTABLE');
  const verf = wr.subarray(wr.length - 8);
  t.equal(ds.syncWrites, 0, 'UNSTABLE write is not synced');
  const wr2 = await call(7, cat(opaque(fh(2)), hyper(0), words(1, 2), opaque('A')));
  t.same(wr2, cat(ok(xid), wcc(f({ size: 5 }), f({ size: 5 })), words(1, 2), verf), 'WRITE FILE_SYNC');
  t.equal(ds.syncWrites, 1, 'FILE_SYNC write passes sync=true');
  // The raw client calls as uid 0 / gid 0: root squash (on by default) makes the new file 65534's.
  t.same(
    await call(8, cat(opaque(fh(ROOT_ID)), opaque('g'), words(0), sattrMode(0o640))),
    cat(
      ok(xid),
      words(1),
      opaque(fh(3)),
      postOp({ type: 1, mode: 0o640, nlink: 1, size: 0, fileid: 3, t: T, uid: 65534, gid: 65534 }),
      wcc(root(), root()),
    ),
    'CREATE',
  );
  t.same(
    await call(8, cat(opaque(fh(ROOT_ID)), opaque('g'), words(1), sattrMode(0o640))),
    cat(fail(xid, 17), wcc(undefined, root())),
    'CREATE GUARDED existing -> EXIST',
  );
  t.same(
    await call(9, cat(opaque(fh(ROOT_ID)), opaque('d'), sattrMode(0o700))),
    cat(
      ok(xid),
      words(1),
      opaque(fh(4)),
      postOp({ type: 2, mode: 0o700, nlink: 2, size: 0, fileid: 4, t: T, uid: 65534, gid: 65534 }),
      wcc(root(), root()),
    ),
    'MKDIR',
  );
  t.same(
    await call(10, cat(opaque(fh(ROOT_ID)), opaque('s'), sattrMode(0o777), opaque('f'))),
    cat(fail(xid, 10004), wcc(undefined, root())),
    'SYMLINK -> NOTSUPP',
  );
  t.same(
    await call(11, cat(opaque(fh(ROOT_ID)), opaque('p'), words(7), sattrMode(0o600))),
    cat(fail(xid, 10004), wcc(undefined, root())),
    'MKNOD fifo -> NOTSUPP',
  );
  t.same(await call(12, cat(opaque(fh(ROOT_ID)), opaque('g'))), cat(ok(xid), wcc(root(), root())), 'REMOVE');
  t.same(await call(13, cat(opaque(fh(ROOT_ID)), opaque('f'))), cat(fail(xid, 20), wcc(undefined, root())), 'RMDIR on a file -> NOTDIR');
  t.same(await call(13, cat(opaque(fh(ROOT_ID)), opaque('d'))), cat(ok(xid), wcc(root(), root())), 'RMDIR');
  t.same(
    await call(14, cat(opaque(fh(ROOT_ID)), opaque('f'), opaque(fh(ROOT_ID)), opaque('f2'))),
    cat(ok(xid), wcc(root(), root()), wcc(root(), root())),
    'RENAME',
  );
  t.same(
    await call(15, cat(opaque(fh(2)), opaque(fh(ROOT_ID)), opaque('l'))),
    cat(fail(xid, 10004), postOp(f({ size: 5 })), wcc(undefined, root())),
    'LINK -> NOTSUPP',
  );
  const cv = Buffer.from(SERVER_ID, 'hex').subarray(0, 8);
  t.same(
    await call(16, cat(opaque(fh(ROOT_ID)), hyper(0), Buffer.alloc(8), words(4096))),
    cat(
      ok(xid),
      postOp(root()),
      cv,
      words(1),
      hyper(1),
      opaque('.'),
      hyper(1),
      words(1),
      hyper(1),
      opaque('..'),
      hyper(2),
      words(1),
      hyper(2),
      opaque('f2'),
      hyper(4),
      words(0, 1),
    ),
    'READDIR',
  );
  t.same(
    await call(16, cat(opaque(fh(ROOT_ID)), hyper(2), Buffer.alloc(8), words(4096))),
    cat(fail(xid, 10003), postOp(root())),
    'READDIR wrong verifier -> BAD_COOKIE',
  );
  t.same(
    await call(16, cat(opaque(fh(ROOT_ID)), hyper(2), cv, words(4096))),
    cat(ok(xid), postOp(root()), cv, words(1), hyper(2), opaque('f2'), hyper(4), words(0, 1)),
    'READDIR resumed after ..',
  );
  t.same(
    await call(16, cat(opaque(fh(ROOT_ID)), hyper(4), cv, words(4096))),
    cat(ok(xid), postOp(root()), cv, words(0, 1)),
    'READDIR resumed at end',
  );
  t.same(
    await call(17, cat(opaque(fh(ROOT_ID)), hyper(2), cv, words(4096, 8192))),
    cat(
      ok(xid),
      postOp(root()),
      cv,
      words(1),
      hyper(2),
      opaque('f2'),
      hyper(4),
      postOp(f({ size: 5 })),
      words(1),
      opaque(fh(2)),
      words(0, 1),
    ),
    'READDIRPLUS',
  );
  t.same(
    await call(18, opaque(fh(ROOT_ID))),
    cat(ok(xid), postOp(root()), hyper(1 << 30), hyper(1 << 29), hyper(1 << 29), hyper(1000), hyper(998), hyper(998), words(0)),
    'FSSTAT',
  );
  t.same(
    await call(19, opaque(fh(ROOT_ID))),
    cat(
      ok(xid),
      postOp(root()),
      words(1 << 20, 1 << 20, 4096, 1 << 20, 1 << 20, 4096, 1 << 20),
      hyper(Number.MAX_SAFE_INTEGER),
      words(0, 1_000_000, 0x18),
    ),
    'FSINFO',
  );
  t.same(await call(20, opaque(fh(ROOT_ID))), cat(ok(xid), postOp(root()), words(1, 255, 1, 1, 0, 1)), 'PATHCONF');
  const commits = ds.commits;
  t.same(
    await call(21, cat(opaque(fh(2)), hyper(0), words(0))),
    cat(ok(xid), wcc(f({ size: 5 }), f({ size: 5 })), verf),
    'COMMIT returns the write verifier',
  );
  t.equal(ds.commits, commits + 1, 'COMMIT calls datastore.commit');
});

/*
 * The same procedures through the shared harness, on every datastore (the
 * in-memory one and a real published restore point): the expected bytes are
 * the datastore's own attributes, read before and after each call and
 * encoded by fixtures/bytes.ts, so the test pins what the server makes of
 * them (status, wcc, post-op attributes, handles, cookies) whichever
 * datastore answers. Where the two differ by design (symlinks), the
 * datastore's capability decides the expected reply.
 */
eachDatastore(t, "every NFSv3 procedure on the datastore's own attributes, byte for byte", async (t, fx) => {
  const ds = fx.datastore;
  const D = fx.dir;
  const f = await fx.putFile('f', Buffer.from('abc'));
  const { server, ports } = await startServer(ds);
  t.teardown(() => server.stop());
  const c = await RawClient.connect(ports.nfs);
  t.teardown(() => c.close());
  let xid = 500;
  const call = (proc: number, args: Buffer): Promise<Buffer> => c.call(++xid, NFS, 3, proc, args);
  const A = (id: number) => ds.getattr(id);
  /** Calls, reading `ids`' attributes just before (the wcc pre-op values). */
  const around = async <T>(ids: number[], fn: () => Promise<T>): Promise<{ r: T; pre: Awaited<ReturnType<typeof A>>[] }> => {
    const pre = await Promise.all(ids.map(A));
    return { r: await fn(), pre };
  };

  t.same(await call(0, Buffer.alloc(0)), accepted(xid, 0), 'NULL');
  t.same(await call(1, opaque(fh(f))), cat(ok(xid), fattrOf(await A(f))), 'GETATTR');
  let w = await around([f], () => call(2, cat(opaque(fh(f)), sattrMode(0o600), words(0))));
  t.same(w.r, cat(ok(xid), wccOf(w.pre[0], await A(f))), 'SETATTR');
  t.equal((await A(f)).mode, 0o600, 'SETATTR changed the mode');
  t.same(await call(3, cat(opaque(fh(D)), opaque('f'))), cat(ok(xid), opaque(fh(f)), postOpOf(await A(f)), postOpOf(await A(D))), 'LOOKUP');
  t.same(await call(3, cat(opaque(fh(D)), opaque('zz'))), cat(fail(xid, 2), postOpOf(await A(D))), 'LOOKUP missing -> NOENT');
  t.same(await call(4, cat(opaque(fh(f)), words(0x3f))), cat(ok(xid), postOpOf(await A(f)), words(0x1d)), 'ACCESS');
  t.same(await call(5, opaque(fh(f))), cat(fail(xid, 22), postOpOf(await A(f))), 'READLINK on a file -> INVAL');
  const rd = await call(6, cat(opaque(fh(f)), hyper(1), words(10)));
  t.same(rd, cat(ok(xid), postOpOf(await A(f)), words(2, 1), opaque('bc')), 'READ');
  w = await around([f], () => call(7, cat(opaque(fh(f)), hyper(3), words(2, 0), opaque('de'))));
  t.same(w.r.subarray(0, w.r.length - 8), cat(ok(xid), wccOf(w.pre[0], await A(f)), words(2, 0)), 'WRITE UNSTABLE');
  const verf = w.r.subarray(w.r.length - 8);
  w = await around([f], () => call(7, cat(opaque(fh(f)), hyper(0), words(1, 2), opaque('A'))));
  t.same(w.r, cat(ok(xid), wccOf(w.pre[0], await A(f)), words(1, 2), verf), 'WRITE FILE_SYNC');
  t.same((await ds.read(f, 0, 100)).data, Buffer.from('Abcde'), 'both writes reached the datastore');
  // The raw client calls as uid 0 / gid 0: root squash (on by default) makes the new file 65534's.
  w = await around([D], () => call(8, cat(opaque(fh(D)), opaque('g'), words(0), sattrMode(0o640))));
  const g = await ds.lookup(D, 'g');
  t.same(w.r, cat(ok(xid), words(1), opaque(fh(g)), postOpOf(await A(g)), wccOf(w.pre[0], await A(D))), 'CREATE');
  t.match(await A(g), { type: 'file', mode: 0o640, uid: 65534, gid: 65534 }, 'CREATE made the file, squashed');
  t.same(
    await call(8, cat(opaque(fh(D)), opaque('g'), words(1), sattrMode(0o640))),
    cat(fail(xid, 17), wccOf(undefined, await A(D))),
    'CREATE GUARDED existing -> EXIST',
  );
  w = await around([D], () => call(9, cat(opaque(fh(D)), opaque('d'), sattrMode(0o700))));
  const d = await ds.lookup(D, 'd');
  t.same(w.r, cat(ok(xid), words(1), opaque(fh(d)), postOpOf(await A(d)), wccOf(w.pre[0], await A(D))), 'MKDIR');
  t.match(await A(d), { type: 'dir', mode: 0o700 });
  if (ds.symlink) {
    w = await around([D], () => call(10, cat(opaque(fh(D)), opaque('s'), sattrMode(0o777), opaque('f'))));
    const sl = await ds.lookup(D, 's');
    t.same(w.r, cat(ok(xid), words(1), opaque(fh(sl)), postOpOf(await A(sl)), wccOf(w.pre[0], await A(D))), 'SYMLINK');
    t.same(await call(5, opaque(fh(sl))), cat(ok(xid), postOpOf(await A(sl)), opaque('f')), 'READLINK');
  } else {
    t.same(
      await call(10, cat(opaque(fh(D)), opaque('s'), sattrMode(0o777), opaque('f'))),
      cat(fail(xid, 10004), wccOf(undefined, await A(D))),
      'SYMLINK -> NOTSUPP',
    );
  }
  t.same(
    await call(11, cat(opaque(fh(D)), opaque('p'), words(7), sattrMode(0o600))),
    cat(fail(xid, 10004), wccOf(undefined, await A(D))),
    'MKNOD fifo -> NOTSUPP',
  );
  w = await around([D], () => call(12, cat(opaque(fh(D)), opaque('g'))));
  t.same(w.r, cat(ok(xid), wccOf(w.pre[0], await A(D))), 'REMOVE');
  await t.rejects(ds.lookup(D, 'g'), { code: 'ENOENT' }, 'REMOVE removed it');
  t.same(await call(13, cat(opaque(fh(D)), opaque('f'))), cat(fail(xid, 20), wccOf(undefined, await A(D))), 'RMDIR on a file -> NOTDIR');
  w = await around([D], () => call(13, cat(opaque(fh(D)), opaque('d'))));
  t.same(w.r, cat(ok(xid), wccOf(w.pre[0], await A(D))), 'RMDIR');
  w = await around([D, D], () => call(14, cat(opaque(fh(D)), opaque('f'), opaque(fh(D)), opaque('f2'))));
  t.same(w.r, cat(ok(xid), wccOf(w.pre[0], await A(D)), wccOf(w.pre[1], await A(D))), 'RENAME');
  t.equal(await ds.lookup(D, 'f2'), f, 'RENAME kept the file id');
  t.same(
    await call(15, cat(opaque(fh(f)), opaque(fh(D)), opaque('l'))),
    cat(fail(xid, 10004), postOpOf(await A(f)), wccOf(undefined, await A(D))),
    'LINK -> NOTSUPP',
  );

  // READDIR cookies: `.` 1, `..` 2, every other entry its file id + 2 (src/nfs/nfs3/proc/readdir.ts).
  const cv = Buffer.from(SERVER_ID, 'hex').subarray(0, 8);
  const parent = await ds.parent!(D);
  const listed = await ds.readdir(D);
  t.ok(
    listed.some((e) => e.name === 'f2'),
    'the datastore lists the renamed file',
  );
  const entry = (id: number, name: string, cookie: number): Buffer => cat(words(1), hyper(id), opaque(name), hyper(cookie));
  t.same(
    await call(16, cat(opaque(fh(D)), hyper(0), Buffer.alloc(8), words(8192))),
    cat(
      ok(xid),
      postOpOf(await A(D)),
      cv,
      entry(D, '.', 1),
      entry(parent, '..', 2),
      ...listed.map((e) => entry(e.fileid, e.name, e.fileid + 2)),
      words(0, 1),
    ),
    'READDIR',
  );
  t.same(
    await call(16, cat(opaque(fh(D)), hyper(2), Buffer.alloc(8), words(8192))),
    cat(fail(xid, 10003), postOpOf(await A(D))),
    'READDIR wrong verifier -> BAD_COOKIE',
  );
  const last = listed.at(-1)!;
  t.same(
    await call(16, cat(opaque(fh(D)), hyper(last.fileid + 2), cv, words(8192))),
    cat(ok(xid), postOpOf(await A(D)), cv, words(0, 1)),
    'READDIR resumed at end',
  );
  const plus: Buffer[] = [];
  for (const e of listed) plus.push(entry(e.fileid, e.name, e.fileid + 2), postOpOf(await A(e.fileid)), words(1), opaque(fh(e.fileid)));
  t.same(
    await call(17, cat(opaque(fh(D)), hyper(2), cv, words(8192, 16384))),
    cat(ok(xid), postOpOf(await A(D)), cv, ...plus, words(0, 1)),
    'READDIRPLUS after ..',
  );

  // FSSTAT: the datastore's numbers; free space is the host's, which other processes change, so it is compared loosely.
  const st = await call(18, opaque(fh(D)));
  const head = cat(ok(xid), postOpOf(await A(D)));
  t.same(st.subarray(0, head.length), head, 'FSSTAT status and attributes');
  const mine = await ds.fsstat(D);
  const num = (i: number): number => Number(st.readBigUInt64BE(head.length + i * 8));
  t.same(
    [num(0), num(3), num(4), num(5)],
    [mine.totalBytes, mine.totalFiles, mine.freeFiles, mine.freeFiles],
    'FSSTAT total bytes and files, free files',
  );
  t.ok(
    Math.abs(num(1) - mine.freeBytes) < 256 * 2 ** 20 && Math.abs(num(2) - mine.availBytes) < 256 * 2 ** 20,
    `FSSTAT free/avail bytes are the datastore's (${num(1)} vs ${mine.freeBytes})`,
  );
  t.equal(st.length, head.length + 6 * 8 + 4, 'and invarsec ends it');
  t.same(
    await call(19, opaque(fh(D))),
    cat(
      ok(xid),
      postOpOf(await A(D)),
      words(1 << 20, 1 << 20, 4096, 1 << 20, 1 << 20, 4096, 1 << 20),
      hyper(Number.MAX_SAFE_INTEGER),
      words(0, 1_000_000, 0x18 | (ds.symlink ? 0x2 : 0)),
    ),
    'FSINFO',
  );
  t.same(await call(20, opaque(fh(D))), cat(ok(xid), postOpOf(await A(D)), words(1, 255, 1, 1, 0, 1)), 'PATHCONF');
  w = await around([f], () => call(21, cat(opaque(fh(f)), hyper(0), words(0))));
  t.same(w.r, cat(ok(xid), wccOf(w.pre[0], await A(f)), verf), 'COMMIT returns the write verifier');
});

t.test('handles survive a restart; the write verifier does not', async (t) => {
  const ds = new MemoryDatastore();
  ds.putFile(ROOT_ID, 'f', Buffer.from('abc'));
  const verifier = async (): Promise<Buffer> => {
    const { server, ports } = await startServer(ds);
    try {
      const c = await RawClient.connect(ports.nfs);
      try {
        t.equal((await c.call(1, NFS, 3, 1, opaque(fh(2)))).readUInt32BE(24), 0, 'old handle resolves');
        const r = await c.call(2, NFS, 3, 21, cat(opaque(fh(2)), hyper(0), words(0)));
        return r.subarray(r.length - 8);
      } finally {
        c.close();
      }
    } finally {
      await server.stop();
    }
  };
  const a = await verifier();
  const b = await verifier();
  t.notSame(a, b, 'write verifier changes on restart');
  const other = await startServer(ds, { serverId: 'ffeeddccbbaa99887766554433221100' });
  t.teardown(() => other.server.stop());
  const c = await RawClient.connect(other.ports.nfs);
  t.teardown(() => c.close());
  t.same(await c.call(3, NFS, 3, 1, opaque(fh(2))), fail(3, 70), 'handle from another server id -> STALE');
});

t.test('replies leave out of order on one connection', async (t) => {
  const ds = new MemoryDatastore();
  const slow = ds.putFile(ROOT_ID, 'slow', Buffer.from('x'));
  const read = ds.read.bind(ds);
  ds.read = async (id, off, len) => {
    if (id === slow) await new Promise((r) => setTimeout(r, 200));
    return read(id, off, len);
  };
  ds.putFile(ROOT_ID, 'fast', Buffer.from('y'));
  const { server, ports } = await startServer(ds);
  t.teardown(() => server.stop());
  const c = await RawClient.connect(ports.nfs);
  t.teardown(() => c.close());
  const { callBytes } = await import('./fixtures/rpc-client.js');
  const { mark } = await import('./fixtures/bytes.js');
  const a = callBytes(1, NFS, 3, 6, cat(opaque(fh(slow)), hyper(0), words(1)));
  const b = callBytes(2, NFS, 3, 6, cat(opaque(fh(3)), hyper(0), words(1)));
  c.sendRaw(cat(mark(a.length), a, mark(b.length), b));
  t.equal((await c.next()).readUInt32BE(0), 2, 'fast reply first');
  t.equal((await c.next()).readUInt32BE(0), 1, 'slow reply second');
});

t.test('registers with an existing portmapper instead of serving one', async (t) => {
  const { pmapGetport } = await import('../../src/nfs/portmap.js');
  const sys = await startServer(new MemoryDatastore(), { portmapPort: 0 });
  t.teardown(() => sys.server.stop());
  const pm = sys.ports.portmap!;
  const mine = await startServer(new MemoryDatastore(), { portmapPort: pm });
  t.equal(mine.ports.registeredWithSystemPortmapper, true);
  t.equal(mine.ports.portmap, null);
  t.equal(await pmapGetport('127.0.0.1', pm, { prog: NFS, vers: 3, prot: 6, port: 0 }), mine.ports.nfs, 'GETPORT nfs');
  t.equal(await pmapGetport('127.0.0.1', pm, { prog: 100005, vers: 3, prot: 6, port: 0 }), mine.ports.mount, 'GETPORT mount');
  await mine.server.stop();
  t.equal(await pmapGetport('127.0.0.1', pm, { prog: NFS, vers: 3, prot: 6, port: 0 }), 0, 'UNSET on stop');
});

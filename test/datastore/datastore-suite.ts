/**
 * The contract every Datastore must pass (as test/repo/fixtures/chunk-store-suite.ts
 * is for ChunkStore): call runDatastoreSuite from a test file with a factory
 * for a fresh datastore. The frontends (NFS, FUSE) rely on exactly this:
 * lookup and getattr agree on file ids, readdir lists what lookup finds,
 * reads are ranges with an EOF flag, writes land where later reads see them,
 * and a missing entry is ENOENT while an unknown id is ESTALE.
 */
import type { Test } from 'tap';
import { ROOT_ID, type Datastore, type FileId } from '../../src/datastore/types.js';

export interface DatastoreUnderTest {
  datastore: Datastore;
  /** A directory below the root the tests work in (a publication's directory), and its name there. */
  dir: FileId;
  dirName: string;
  /** A file in `dir` with known content that takes writes in place (a publication's disk), at least 512 KiB. */
  disk: { name: string; content: Buffer };
  /**
   * Closes this datastore and opens a new one over the same state, as a
   * server restart does. Absent for a datastore that keeps no state outside
   * the process (its ids cannot outlive it).
   */
  reopen?(): Promise<Datastore>;
}

export interface DatastoreSuiteFactory {
  kind: string;
  /** A fresh datastore, torn down with `t`. */
  create(t: Test, opts: { readOnly: boolean }): Promise<DatastoreUnderTest>;
}

const CALLER = { uid: 0, gid: 0 };

/** Bytes that differ from anything already stored at the same place. */
function fresh(n: number, seed: number): Buffer {
  return Buffer.from(Array.from({ length: n }, (_, i) => (i * 31 + seed) & 0xff));
}

async function readAll(ds: Datastore, id: FileId, size: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  for (let at = 0; at < size; at += 128 * 1024) parts.push(Buffer.from((await ds.read(id, at, 128 * 1024)).data));
  return Buffer.concat(parts);
}

export function runDatastoreSuite(t: Test, factory: DatastoreSuiteFactory): void {
  const writable = (t: Test): Promise<DatastoreUnderTest> => factory.create(t, { readOnly: false });

  t.test(`${factory.kind}: lookup and getattr agree on file ids; root and directory are directories`, async (t) => {
    const { datastore: ds, dir, dirName, disk } = await writable(t);
    t.equal(await ds.lookup(ROOT_ID, dirName), dir);
    const id = await ds.lookup(dir, disk.name);
    t.equal(await ds.lookup(dir, disk.name), id, 'a second lookup gives the same id');
    const attr = await ds.getattr(id);
    t.equal(attr.fileid, id);
    t.equal(attr.type, 'file');
    t.equal(attr.size, disk.content.length);
    t.ok(Number.isSafeInteger(id) && id > ROOT_ID, 'a file id is a positive safe integer other than the root');
    t.equal((await ds.getattr(ROOT_ID)).type, 'dir');
    const dirAttr = await ds.getattr(dir);
    t.equal(dirAttr.type, 'dir');
    t.equal(dirAttr.fileid, dir);
  });

  t.test(`${factory.kind}: missing entries are ENOENT, unknown ids ESTALE, a file is no directory`, async (t) => {
    const { datastore: ds, dir, disk } = await writable(t);
    await t.rejects(ds.lookup(dir, 'no-such-file'), { code: 'ENOENT' });
    await t.rejects(ds.lookup(ROOT_ID, 'no-such-dir'), { code: 'ENOENT' });
    await t.rejects(ds.remove(dir, 'no-such-file'), { code: 'ENOENT' });
    await t.rejects(ds.rmdir(dir, 'no-such-dir'), { code: 'ENOENT' });
    await t.rejects(ds.rename(dir, 'no-such-file', dir, 'other'), { code: 'ENOENT' });
    const unknown = 2 ** 52 + 7;
    await t.rejects(ds.getattr(unknown), { code: 'ESTALE' });
    await t.rejects(ds.read(unknown, 0, 10), { code: 'ESTALE' });
    const file = await ds.lookup(dir, disk.name);
    await t.rejects(ds.lookup(file, 'x'), { code: 'ENOTDIR' });
    await t.rejects(ds.readdir(file), { code: 'ENOTDIR' });
  });

  t.test(`${factory.kind}: readdir lists every entry once, in file id order, each found by lookup`, async (t) => {
    const { datastore: ds, dir, dirName, disk } = await writable(t);
    const root = await ds.readdir(ROOT_ID);
    t.ok(
      root.some((e) => e.name === dirName && e.fileid === dir),
      'the root lists the directory',
    );
    const extra = await ds.create(dir, 'listed.lck', 0o644, CALLER, true);
    const entries = await ds.readdir(dir);
    const names = entries.map((e) => e.name);
    t.notOk(names.includes('.') || names.includes('..'), 'no . or ..');
    t.equal(new Set(names).size, names.length, 'no name twice');
    t.same(
      entries.map((e) => e.fileid),
      [...entries.map((e) => e.fileid)].sort((a, b) => a - b),
      'in file id order',
    );
    t.ok(names.includes(disk.name) && names.includes('listed.lck'));
    for (const e of entries) t.equal(await ds.lookup(dir, e.name), e.fileid, `lookup ${e.name}`);
    t.equal(entries.find((e) => e.name === 'listed.lck')?.fileid, extra);
  });

  t.test(`${factory.kind}: read returns ranges; a read reaching the end says EOF; a directory is EISDIR`, async (t) => {
    const { datastore: ds, dir, disk } = await writable(t);
    const id = await ds.lookup(dir, disk.name);
    const size = disk.content.length;
    const head = await ds.read(id, 0, 4096);
    t.ok(head.data.equals(disk.content.subarray(0, 4096)));
    t.equal(head.eof, false);
    // Across a 256 KiB boundary: a chunk boundary of the publication's repository.
    const mid = await ds.read(id, 256 * 1024 - 100, 300);
    t.ok(mid.data.equals(disk.content.subarray(256 * 1024 - 100, 256 * 1024 + 200)));
    const tail = await ds.read(id, size - 10, 100);
    t.ok(tail.data.equals(disk.content.subarray(size - 10)), 'a read past the end is short');
    t.equal(tail.eof, true);
    const exact = await ds.read(id, size - 10, 10);
    t.equal(exact.data.length, 10);
    t.equal(exact.eof, true, 'a read ending exactly at the end says EOF');
    const past = await ds.read(id, size + 4096, 10);
    t.equal(past.data.length, 0);
    t.equal(past.eof, true);
    t.ok((await readAll(ds, id, size)).equals(disk.content), 'the whole file reads back as it was stored');
    await t.rejects(ds.read(dir, 0, 10), { code: 'EISDIR' });
  });

  t.test(`${factory.kind}: a write in place lands; neighbours and size stay; commit makes it durable`, async (t) => {
    const { datastore: ds, dir, disk } = await writable(t);
    const id = await ds.lookup(dir, disk.name);
    t.equal(ds.readOnly(id), false);
    const at = 256 * 1024 - 10;
    const data = fresh(20, 7);
    const attr = await ds.write(id, at, data, true);
    t.equal(attr.size, disk.content.length, 'writing inside the file keeps its size');
    t.equal(attr.fileid, id);
    await ds.write(id, 0, fresh(512, 3), false);
    await ds.commit(id);
    const back = await ds.read(id, at - 100, 220);
    t.ok(back.data.subarray(0, 100).equals(disk.content.subarray(at - 100, at)), 'bytes before are untouched');
    t.ok(back.data.subarray(100, 120).equals(data), 'the written bytes read back');
    t.ok(back.data.subarray(120).equals(disk.content.subarray(at + 20, at + 120)), 'bytes after are untouched');
    t.ok((await ds.read(id, 0, 512)).data.equals(fresh(512, 3)), 'an unsynced write reads back too');
    t.equal((await ds.getattr(id)).size, disk.content.length);
  });

  t.test(`${factory.kind}: create, write past the end, rename keeps the id, remove makes the id stale`, async (t) => {
    const { datastore: ds, dir } = await writable(t);
    const id = await ds.create(dir, 'vm.lck', 0o644, CALLER, true);
    await t.rejects(ds.create(dir, 'vm.lck', 0o644, CALLER, true), { code: 'EEXIST' });
    t.equal(await ds.create(dir, 'vm.lck', 0o644, CALLER, false), id, 'a non-exclusive create of an existing file opens it');
    t.equal((await ds.getattr(id)).size, 0);
    await ds.write(id, 0, Buffer.from('first'), false);
    await ds.write(id, 10, Buffer.from('after a gap'), true);
    t.equal((await ds.getattr(id)).size, 21);
    const all = await ds.read(id, 0, 100);
    t.ok(all.data.equals(Buffer.concat([Buffer.from('first'), Buffer.alloc(5), Buffer.from('after a gap')])), 'a gap reads as zeros');
    t.equal(all.eof, true);
    await ds.commit(id);
    await ds.rename(dir, 'vm.lck', dir, 'vm.lck.old');
    t.equal(await ds.lookup(dir, 'vm.lck.old'), id, 'a renamed file keeps its id');
    await t.rejects(ds.lookup(dir, 'vm.lck'), { code: 'ENOENT' });
    await ds.remove(dir, 'vm.lck.old');
    await t.rejects(ds.lookup(dir, 'vm.lck.old'), { code: 'ENOENT' });
    await t.rejects(ds.getattr(id), { code: 'ESTALE' });
  });

  t.test(`${factory.kind}: mkdir, a directory is removed only when empty, its parent is known`, async (t) => {
    const { datastore: ds, dir } = await writable(t);
    const sub = await ds.mkdir(dir, 'logs', 0o755, CALLER);
    t.equal((await ds.getattr(sub)).type, 'dir');
    await t.rejects(ds.mkdir(dir, 'logs', 0o755, CALLER), { code: 'EEXIST' });
    const log = await ds.create(sub, 'vm.log', 0o644, CALLER, true);
    t.equal(await ds.parent?.(sub), dir);
    await t.rejects(ds.rmdir(dir, 'logs'), { code: 'ENOTEMPTY' });
    await t.rejects(ds.remove(dir, 'logs'), { code: 'EISDIR' });
    await ds.rename(sub, 'vm.log', dir, 'vm.log');
    t.equal(await ds.lookup(dir, 'vm.log'), log, 'moved between directories, same id');
    await ds.rmdir(dir, 'logs');
    await t.rejects(ds.getattr(sub), { code: 'ESTALE' });
  });

  t.test(`${factory.kind}: a read-only datastore refuses writes with EROFS and still reads`, async (t) => {
    const { datastore: ds, dir, disk } = await factory.create(t, { readOnly: true });
    const id = await ds.lookup(dir, disk.name);
    t.equal(ds.readOnly(id), true);
    await t.rejects(ds.write(id, 0, Buffer.from('x'), false), { code: 'EROFS' });
    await t.rejects(ds.create(dir, 'vm.lck', 0o644, CALLER, true), { code: 'EROFS' });
    await t.rejects(ds.mkdir(dir, 'logs', 0o755, CALLER), { code: 'EROFS' });
    t.ok((await ds.read(id, 0, 4096)).data.equals(disk.content.subarray(0, 4096)));
  });

  t.test(`${factory.kind}: file ids and written data stay, across a reopen where the datastore has state on disk`, async (t) => {
    const fx = await writable(t);
    const ds = fx.datastore;
    const disk = await ds.lookup(fx.dir, fx.disk.name);
    const sub = await ds.mkdir(fx.dir, 'logs', 0o755, CALLER);
    const file = await ds.create(sub, 'vm.log', 0o644, CALLER, true);
    await ds.write(file, 0, Buffer.from('boot\n'), true);
    await ds.write(disk, 4096, fresh(100, 9), true);
    const again = fx.reopen ? await fx.reopen() : ds;
    if (fx.reopen) t.ok(again !== ds, 'reopened as a new datastore object over the same state');
    t.equal(await again.lookup(ROOT_ID, fx.dirName), fx.dir);
    t.equal(await again.lookup(fx.dir, fx.disk.name), disk);
    t.equal(await again.lookup(fx.dir, 'logs'), sub);
    t.equal((await again.getattr(file)).size, 5, 'getattr by an id from before works without a lookup');
    t.equal(await again.lookup(sub, 'vm.log'), file);
    t.equal((await again.read(file, 0, 100)).data.toString(), 'boot\n');
    t.ok((await again.read(disk, 4096, 100)).data.equals(fresh(100, 9)), 'a write to the disk persists');
    t.ok((await again.read(disk, 0, 4096)).data.equals(fx.disk.content.subarray(0, 4096)));
  });
}

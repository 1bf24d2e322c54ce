import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PublicationDatastore, type DatastorePublication } from '../../src/datastore/publication-datastore.js';
import { DatastoreError, ROOT_ID, type Datastore } from '../../src/datastore/types.js';
import { PublishedDisk } from '../../src/disk/published-disk.js';
import { Overlay, OverlayBudget } from '../../src/overlay/overlay.js';
import { MemoryDiskSource, patternBytes } from '../publish/fixtures/memory-repository.js';

const SIZE = 4 * 1024 * 1024;
const base = patternBytes(SIZE, 11);

async function publication(dir: string, opts: { readOnly?: boolean; limit?: number } = {}): Promise<DatastorePublication> {
  const budget = new OverlayBudget(opts.limit);
  const disk = new PublishedDisk(new MemoryDiskSource(base, 256 * 1024));
  const overlay = await Overlay.open({ dir: path.join(dir, 'overlays'), name: 'sda', base: disk, budget, readOnly: opts.readOnly });
  return {
    id: 'web-p1',
    name: 'web-p1',
    number: 3,
    created: new Date(1_700_000_000_000),
    vm: { name: 'web', memoryMiB: 512, vcpus: 1, disks: [{ name: 'sda' }], nics: [] } as never,
    disks: [{ name: 'sda', overlay }],
    stateDir: path.join(dir, 'pub'),
    overlayDir: path.join(dir, 'overlays'),
    readOnly: opts.readOnly ?? false,
  };
}

async function open(
  t: { teardown(fn: () => unknown): void },
  opts: { readOnly?: boolean; limit?: number } = {},
  dir?: string,
): Promise<{ ds: PublicationDatastore; dir: string; pub: DatastorePublication }> {
  const d = dir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'rl-ds-'));
  if (!dir) t.teardown(() => fs.rmSync(d, { recursive: true, force: true }));
  const pub = await publication(d, opts);
  const ds = new PublicationDatastore();
  await ds.attach(pub);
  t.teardown(() => pub.disks[0]!.overlay.close());
  return { ds, dir: d, pub };
}

async function walk(ds: Datastore, p: string): Promise<number> {
  let id = ROOT_ID;
  for (const part of p.split('/').filter(Boolean)) id = await ds.lookup(id, part);
  return id;
}

t.test('layout: one directory per publication with raw, vmdk, flat and the definition', async (t) => {
  const { ds } = await open(t);
  const root = await ds.readdir(ROOT_ID);
  t.same(
    root.map((e) => e.name),
    ['web-p1'],
  );
  const names = (await ds.readdir(root[0]!.fileid)).map((e) => e.name);
  t.same(names, ['web.json', 'web.vmx', 'sda.raw', 'sda.vmdk', 'sda-flat.vmdk']);
  const raw = await walk(ds, 'web-p1/sda.raw');
  t.equal((await ds.getattr(raw)).size, SIZE);
  t.ok((await ds.read(raw, 1000, 70000)).data.equals(base.subarray(1000, 71000)), 'raw reads the restore point');
  const vmdk = (await ds.read(await walk(ds, 'web-p1/sda.vmdk'), 0, 4096)).data.toString();
  t.match(vmdk, /createType="monolithicFlat"/);
  t.match(vmdk, new RegExp(`RW ${SIZE / 512} FLAT "sda-flat.vmdk" 0`));
  const def = JSON.parse((await ds.read(await walk(ds, 'web-p1/web.json'), 0, 4096)).data.toString()) as { name: string };
  t.equal(def.name, 'web');
  t.match((await ds.read(await walk(ds, 'web-p1/web.vmx'), 0, 4096)).data.toString(), /scsi0:0.fileName = "sda.vmdk"/);
  t.equal(ds.readOnly(await walk(ds, 'web-p1/web.json')), true);
  t.equal(ds.readOnly(raw), false);
  await t.rejects(ds.lookup(ROOT_ID, 'nope'), { code: 'ENOENT' });
  await t.rejects(ds.getattr(99 * 2 ** 24 + 1), { code: 'ESTALE' });
});

t.test('writes to raw land in the overlay and show in the flat vmdk; generated files refuse writes', async (t) => {
  const { ds } = await open(t);
  const raw = await walk(ds, 'web-p1/sda.raw');
  const flat = await walk(ds, 'web-p1/sda-flat.vmdk');
  const attr = await ds.write(raw, 8192, Buffer.from('written through the datastore'), true);
  t.equal(attr.used, 4096);
  t.equal((await ds.read(flat, 8192, 29)).data.toString(), 'written through the datastore');
  await ds.commit(raw);
  await t.rejects(ds.write(await walk(ds, 'web-p1/sda.vmdk'), 0, Buffer.from('x'), false), { code: 'EACCES' });
  await t.rejects(ds.remove(await walk(ds, 'web-p1'), 'sda.raw'), { code: 'EACCES' });
  await t.rejects(ds.rename(await walk(ds, 'web-p1'), 'sda.raw', await walk(ds, 'web-p1'), 'x.raw'), { code: 'EACCES' });
  await t.rejects(ds.setattr(raw, { size: 10 }), { code: 'EINVAL' });
  t.equal((await ds.setattr(raw, { size: SIZE })).size, SIZE, 'setting the same size is accepted');
  await t.rejects(ds.write(raw, SIZE - 1, Buffer.from('xy'), false), { code: 'EFBIG' });
});

t.test('scratch files: create, write, rename, mkdir, remove; ids stable across a restart', async (t) => {
  const first = await open(t);
  const ds = first.ds;
  const dir = await walk(ds, 'web-p1');
  const lck = await ds.create(dir, 'web.vmx.lck', 0o644);
  await ds.write(lck, 0, Buffer.from('lock'), true);
  t.equal((await ds.read(lck, 0, 100)).data.toString(), 'lock');
  await t.rejects(ds.create(dir, 'web.vmx.lck', 0o644, undefined, true), { code: 'EEXIST' });
  const sub = await ds.mkdir(dir, 'logs', 0o755);
  const log = await ds.create(sub, 'vmware.log', 0o644);
  await ds.write(log, 0, Buffer.from('boot\n'), false);
  await ds.rename(dir, 'web.vmx.lck', sub, 'moved.lck');
  t.equal(await ds.lookup(sub, 'moved.lck'), lck, 'a renamed file keeps its id');
  await t.rejects(ds.lookup(dir, 'web.vmx.lck'), { code: 'ENOENT' });
  t.equal(await ds.parent!(sub), dir);
  t.equal(await ds.lookup(sub, '..'), dir);
  // Stored by id, not by the client's names: no host path is made from a client's name.
  t.equal(
    fs.readFileSync(path.join(first.pub.stateDir, 'scratch-data', String(lck % 2 ** 24)), 'utf8'),
    'lock',
    'content lives in scratch-data/<local id>',
  );
  t.notOk(fs.existsSync(path.join(first.pub.stateDir, 'scratch')), 'no host tree named after client paths');
  const ids = { dir, raw: await walk(ds, 'web-p1/sda.raw'), sub, lck, log };
  const raw = await walk(ds, 'web-p1/sda.raw');
  await ds.write(raw, 0, Buffer.from('persisted'), true);
  await first.pub.disks[0]!.overlay.close();

  // A new datastore over the same state: same ids, same contents.
  const second = await open(t, {}, first.dir);
  const ds2 = second.ds;
  t.equal(await walk(ds2, 'web-p1'), ids.dir);
  t.equal(await walk(ds2, 'web-p1/sda.raw'), ids.raw);
  t.equal(await walk(ds2, 'web-p1/logs'), ids.sub);
  t.equal(await walk(ds2, 'web-p1/logs/moved.lck'), ids.lck);
  t.equal(await walk(ds2, 'web-p1/logs/vmware.log'), ids.log);
  t.equal((await ds2.getattr(ids.log)).size, 5, 'getattr by a pre-restart id works without a lookup');
  t.equal((await ds2.read(ids.raw, 0, 9)).data.toString(), 'persisted');
  await t.rejects(ds2.rmdir(ids.dir, 'logs'), { code: 'ENOTEMPTY' });
  await ds2.remove(ids.sub, 'moved.lck');
  await ds2.remove(ids.sub, 'vmware.log');
  await ds2.rmdir(ids.dir, 'logs');
  await t.rejects(ds2.getattr(ids.log), { code: 'ESTALE' });
  t.same(
    (await ds2.readdir(ids.dir)).map((e) => e.name),
    ['web.json', 'web.vmx', 'sda.raw', 'sda.vmdk', 'sda-flat.vmdk'],
  );
  await t.rejects(ds2.rmdir(ROOT_ID, 'web-p1'), { code: 'EACCES' });
  await t.rejects(ds2.create(ROOT_ID, 'x', 0o644), { code: 'EACCES' });
});

t.test('fsstat reports the overlay budget; at the limit writes fail with ENOSPC', async (t) => {
  const { ds } = await open(t, { limit: 64 * 1024 });
  const raw = await walk(ds, 'web-p1/sda.raw');
  let st = await ds.fsstat(raw);
  t.equal(st.availBytes, 64 * 1024);
  await ds.write(raw, 0, Buffer.alloc(48 * 1024, 1), true);
  st = await ds.fsstat(ROOT_ID);
  t.equal(st.availBytes, 16 * 1024);
  t.equal(st.totalBytes, 64 * 1024);
  const err = await ds.write(raw, 1024 * 1024, Buffer.alloc(32 * 1024, 2), true).catch((e: unknown) => e);
  t.ok(err instanceof DatastoreError && err.code === 'ENOSPC', String(err));
  t.ok(
    (await ds.read(raw, 1024 * 1024, 32 * 1024)).data.equals(base.subarray(1024 * 1024, 1024 * 1024 + 32 * 1024)),
    'nothing of the failed write',
  );
});

t.test('a read-only publication refuses every write with EROFS', async (t) => {
  const { ds } = await open(t, { readOnly: true });
  const raw = await walk(ds, 'web-p1/sda.raw');
  t.equal(ds.readOnly(raw), true);
  await t.rejects(ds.write(raw, 0, Buffer.from('x'), false), { code: 'EROFS' });
  await t.rejects(ds.create(await walk(ds, 'web-p1'), 'lock', 0o644), { code: 'EROFS' });
});

t.test('extents: overlay blocks are data, holes of the point are hole+zero, other files one data extent', async (t) => {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'rl-ds-ext-'));
  t.teardown(() => fs.rmSync(d, { recursive: true, force: true }));
  const chunk = 256 * 1024;
  const bytes = Buffer.alloc(SIZE);
  bytes.fill(7, 0, chunk); // chunk 0 data; 1..15 holes, except chunk 4
  bytes.fill(9, 4 * chunk, 5 * chunk);
  const holes = new Set([1, 2, 3, ...Array.from({ length: 11 }, (_, i) => 5 + i)]);
  const disk = new PublishedDisk(new MemoryDiskSource(bytes, chunk, holes));
  const overlay = await Overlay.open({ dir: path.join(d, 'overlays'), name: 'sda', base: disk });
  t.teardown(() => overlay.close());
  const pub = await publication(d);
  pub.disks = [{ name: 'sda', overlay }];
  const ds = new PublicationDatastore();
  await ds.attach(pub);
  const raw = await walk(ds, 'web-p1/sda.raw');
  const data = (length: number) => ({ length, hole: false, zero: false });
  const hole = (length: number) => ({ length, hole: true, zero: true });
  t.same(await ds.extents!(raw, 0, SIZE), [data(chunk), hole(3 * chunk), data(chunk), hole(SIZE - 5 * chunk)]);
  await ds.write(raw, 2 * chunk + 4096, Buffer.alloc(100, 1), false);
  // Block [2 chunks + 4096, +4096) is in the overlay now, inside the hole of chunks 1-3.
  t.same(
    await ds.extents!(raw, 100, 3 * chunk),
    [data(chunk - 100), hole(chunk + 4096), data(4096), hole(chunk - 8192 + 100)],
    'a written block inside a hole is data; the map starts and ends where asked',
  );
  t.same(await ds.extents!(raw, SIZE - 10, 1000), [hole(10)], 'clamped to the size');
  const json = await walk(ds, 'web-p1/web.json');
  const size = (await ds.getattr(json)).size;
  t.same(await ds.extents!(json, 0, 1 << 20), [data(size)], 'a generated file is one data extent');
});

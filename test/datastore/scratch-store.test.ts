/**
 * The scratch store through the PublicationDatastore: its bounds (entries,
 * symlink text, budget under concurrent writers), its persistence (torn
 * journal, unreadable snapshot, orphaned content) and the discarding of an
 * earlier version's host tree. The hostile NFS client is in
 * hostile-scratch.test.ts.
 */
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PUBLICATION_ID_SPAN, PublicationDatastore, type DatastorePublication } from '../../src/datastore/publication-datastore.js';
import { MAX_SCRATCH_ENTRIES, SYMLINK_MAX } from '../../src/datastore/scratch-store.js';
import { SCRATCH_FORMAT, SCRATCH_VERSION } from '../../src/datastore/scratch-journal.js';
import { ROOT_ID } from '../../src/datastore/types.js';
import { PublishedDisk } from '../../src/disk/published-disk.js';
import { Overlay, OverlayBudget } from '../../src/overlay/overlay.js';
import { MemoryDiskSource, patternBytes } from '../publish/fixtures/memory-repository.js';

const base = patternBytes(1024 * 1024, 5);
const NUMBER = 7;

interface Opened {
  ds: PublicationDatastore;
  pub: DatastorePublication;
  top: number;
  warnings: string[];
}

async function open(t: { teardown(fn: () => unknown): void }, dir: string, limit?: number): Promise<Opened> {
  const overlay = await Overlay.open({
    dir: path.join(dir, 'overlays'),
    name: 'sda',
    base: new PublishedDisk(new MemoryDiskSource(base, 256 * 1024)),
    budget: new OverlayBudget(limit),
  });
  t.teardown(() => overlay.close());
  const pub: DatastorePublication = {
    id: 'web-p1',
    name: 'web-p1',
    number: NUMBER,
    created: new Date(),
    vm: { name: 'web', memoryMiB: 256, vcpus: 1, disks: [], nics: [] },
    disks: [{ name: 'sda', overlay }],
    stateDir: path.join(dir, 'pub'),
    overlayDir: path.join(dir, 'overlays'),
    readOnly: false,
  };
  const ds = new PublicationDatastore();
  const warnings: string[] = [];
  await ds.attach(pub, { onWarning: (m) => warnings.push(m) });
  return { ds, pub, top: await ds.lookup(ROOT_ID, 'web-p1'), warnings };
}

function tmp(t: { teardown(fn: () => unknown): void }): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'rl-scratch-'));
  t.teardown(() => fs.rmSync(d, { recursive: true, force: true }));
  return d;
}

t.test('at most MAX_SCRATCH_ENTRIES entries; FSSTAT reports the files left', async (t) => {
  const dir = tmp(t);
  // A snapshot already holding the cap, in the documented format.
  const entries = Array.from({ length: MAX_SCRATCH_ENTRIES }, (_, i) => ({
    id: 4096 + i,
    parent: 1,
    name: `d${i}`,
    type: 'dir',
    mode: 0o755,
    uid: 0,
    gid: 0,
    atime: 0,
    mtime: 0,
    ctime: 0,
  }));
  fs.mkdirSync(path.join(dir, 'pub'), { recursive: true });
  fs.writeFileSync(
    path.join(dir, 'pub', 'scratch.json'),
    JSON.stringify({ format: SCRATCH_FORMAT, version: SCRATCH_VERSION, next: 4096 + MAX_SCRATCH_ENTRIES, entries }),
  );
  const { ds, top } = await open(t, dir);
  t.equal((await ds.readdir(top)).length, 5 + MAX_SCRATCH_ENTRIES);
  await t.rejects(ds.create(top, 'one-more', 0o644), { code: 'ENOSPC' });
  await t.rejects(ds.symlink(top, 'one-more', 'x'), { code: 'ENOSPC' });
  t.equal((await ds.fsstat(top)).freeFiles, 0);
  await ds.rmdir(top, 'd0');
  t.equal((await ds.fsstat(top)).freeFiles, 1);
  t.ok(await ds.mkdir(top, 'fits-again', 0o755));
});

t.test('symlink text is kept verbatim up to PATH_MAX, longer is ENAMETOOLONG', async (t) => {
  const { ds, top } = await open(t, tmp(t));
  const text = '../'.repeat(1365) + 'x';
  t.equal(Buffer.byteLength(text), SYMLINK_MAX);
  const id = await ds.symlink(top, 'long', text);
  t.equal(await ds.readlink(id), text);
  t.equal((await ds.getattr(id)).size, SYMLINK_MAX);
  await t.rejects(ds.symlink(top, 'longer', text + 'y'), { code: 'ENAMETOOLONG' });
  await t.rejects(ds.readlink(top), { code: 'EINVAL' });
});

t.test('concurrent writers to different files cannot pass the limit together', async (t) => {
  const { ds, top, pub } = await open(t, tmp(t), 256 * 1024);
  const ids = await Promise.all(Array.from({ length: 8 }, (_, i) => ds.create(top, `f${i}`, 0o644)));
  const results = await Promise.allSettled(ids.map((id) => ds.write(id, 0, Buffer.alloc(64 * 1024, 1), false)));
  const ok = results.filter((r) => r.status === 'fulfilled').length;
  t.equal(ok, 4, 'exactly the limit is handed out');
  t.equal(pub.disks[0]!.overlay.budget.usedBytes, 256 * 1024);
  for (const r of results) if (r.status === 'rejected') t.match(r.reason, { code: 'ENOSPC' });
  await t.rejects(ds.setattr(ids[7]!, { size: 2 ** 40 }), { code: 'ENOSPC' });
  t.equal((await ds.fsstat(top)).availBytes, 0);
});

t.test('rename: ids follow the entry, a replaced file dies and frees its space, a directory cannot move below itself', async (t) => {
  const { ds, top, pub } = await open(t, tmp(t), 1024 * 1024);
  const budget = pub.disks[0]!.overlay.budget;
  const a = await ds.mkdir(top, 'a', 0o755);
  const b = await ds.mkdir(a, 'b', 0o755);
  await t.rejects(ds.rename(top, 'a', b, 'a'), { code: 'EINVAL' });
  const f = await ds.create(top, 'f', 0o644);
  const g = await ds.create(b, 'g', 0o644);
  await ds.write(g, 0, Buffer.alloc(10_000, 1), true);
  t.equal(budget.usedBytes, 12 * 1024, 'g draws whole blocks');
  await ds.rename(top, 'f', b, 'g');
  t.equal(await ds.lookup(b, 'g'), f, 'the renamed file keeps its id');
  await t.rejects(ds.getattr(g), { code: 'ESTALE' });
  t.equal(budget.usedBytes, 0, 'the replaced file gave its space back');
  await ds.mkdir(top, 'c', 0o755);
  await t.rejects(ds.rename(top, 'c', b, 'g'), { code: 'ENOTDIR' }, 'a directory cannot replace a file');
  await t.rejects(ds.rename(b, 'g', top, 'c'), { code: 'EISDIR' }, 'a file cannot replace a directory');
  await t.rejects(ds.rename(top, 'sda.raw', top, 'x'), { code: 'EACCES' });
  t.equal(await ds.parent!(f), b);
});

t.test('detach gives scratch bytes back to the budget; attach counts them again', async (t) => {
  const dir = tmp(t);
  const { ds, top, pub } = await open(t, dir, 1024 * 1024);
  const budget = pub.disks[0]!.overlay.budget;
  await ds.write(await ds.create(top, 'log', 0o644), 0, Buffer.alloc(8192, 2), true);
  t.equal(budget.usedBytes, 8192);
  ds.detach(pub.id);
  t.equal(budget.usedBytes, 0);
  const again = new PublicationDatastore();
  await again.attach(pub);
  t.equal(budget.usedBytes, 8192);
  t.equal((await again.getattr(await again.lookup(top, 'log'))).size, 8192);
});

t.test('a torn journal line is ignored; earlier changes survive; stray content files are removed', async (t) => {
  const dir = tmp(t);
  const first = await open(t, dir);
  const keep = await first.ds.create(first.top, 'keep', 0o640);
  await first.ds.write(keep, 0, Buffer.from('kept'), true);
  await first.ds.mkdir(first.top, 'logs', 0o700);
  first.ds.detach(first.pub.id);
  const state = first.pub.stateDir;
  fs.appendFileSync(path.join(state, 'scratch.journal'), '0badc0de {"put":{"id":5000,"par');
  fs.writeFileSync(path.join(state, 'scratch-data', '99999'), 'orphan');
  fs.writeFileSync(path.join(state, 'scratch-data', 'evil'), 'not ours');

  const ds = new PublicationDatastore();
  await ds.attach(first.pub);
  t.equal(await ds.lookup(first.top, 'keep'), keep, 'same id');
  t.equal((await ds.read(keep, 0, 10)).data.toString(), 'kept');
  t.equal((await ds.getattr(keep)).mode, 0o640);
  t.equal((await ds.getattr(await ds.lookup(first.top, 'logs'))).mode, 0o700);
  t.same(fs.readdirSync(path.join(state, 'scratch-data')), [String(keep % PUBLICATION_ID_SPAN)], 'only content of live files is kept');
  t.equal(fs.readFileSync(path.join(state, 'scratch.journal'), 'utf8'), '', 'the journal was folded into the snapshot');
});

t.test('an unreadable snapshot stops the attach with SCRATCH_CORRUPT', async (t) => {
  const dir = tmp(t);
  fs.mkdirSync(path.join(dir, 'pub'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'pub', 'scratch.json'), JSON.stringify({ format: SCRATCH_FORMAT, version: 99, next: 4096, entries: [] }));
  await t.rejects(open(t, dir), { code: 'SCRATCH_CORRUPT', message: /version 99/ });
});

t.test("an earlier version's scratch tree is discarded, links unfollowed, with a warning", async (t) => {
  const dir = tmp(t);
  const canary = path.join(dir, 'canary');
  fs.writeFileSync(canary, 'outside', { mode: 0o600 });
  const legacy = path.join(dir, 'pub', 'scratch');
  fs.mkdirSync(path.join(legacy, 'sub'), { recursive: true });
  fs.symlinkSync(canary, path.join(legacy, 'link'));
  fs.symlinkSync(dir, path.join(legacy, 'sub', 'dirlink'));
  fs.writeFileSync(path.join(legacy, 'suid'), 'x', { mode: 0o4755 });
  fs.writeFileSync(path.join(dir, 'pub', 'ids.json'), '{"next":4097,"files":{"link":4096}}');
  const { ds, top, warnings } = await open(t, dir);
  t.match(warnings.join('\n'), /discarded scratch files of an earlier version/);
  t.notOk(fs.existsSync(legacy));
  t.notOk(fs.existsSync(path.join(dir, 'pub', 'ids.json')));
  t.equal(fs.readFileSync(canary, 'utf8'), 'outside', 'the link target is untouched');
  t.ok(fs.existsSync(dir), 'a linked directory is not removed');
  t.same(
    (await ds.readdir(top)).map((e) => e.name),
    ['web.json', 'web.vmx', 'sda.raw', 'sda.vmdk', 'sda-flat.vmdk'],
    'scratch starts empty',
  );
});

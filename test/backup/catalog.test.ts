import t from 'tap';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  catalogKnows,
  connectCatalog,
  forgetPoints,
  listPoints,
  migrate,
  openCatalog,
  recordPoint,
  reindex,
} from '../../src/catalog/catalog.js';
import { sqliteCatalog } from '../../src/catalog/sql.js';
import { backupVm } from '../../src/backup/engine.js';
import { initRepository } from '../../src/repo/index.js';
import type { RestorePoint } from '../../src/repo/contract.js';

const work = await mkdtemp(join(tmpdir(), 'rl-catalog-'));
t.teardown(() => rm(work, { recursive: true, force: true }));

const point = (id: string, vm: string, time: string): RestorePoint => ({
  id,
  time,
  consistency: 'crash',
  source: 'test',
  vm: { name: vm, memoryMiB: 256, vcpus: 1, disks: [{ name: 'root' }], nics: [] },
  disks: [{ name: 'root', size: 1024, indexDigest: 'a'.repeat(64) }],
  stats: { bytesRead: 1024, bytesNew: 512, bytesReused: 0, bytesZero: 512, seconds: 0.1 },
});

t.test('migrations apply once per area, in order, and bump user_version', async (t) => {
  const path = join(work, 'm', 'catalog.sqlite');
  const db = openCatalog(path);
  const v0 = db.pragma('user_version', { simple: true }) as number;
  t.ok(v0 >= 1, 'the points area is migrated on open');
  migrate(db, 'jobs', ['CREATE TABLE jobs (name TEXT PRIMARY KEY)']);
  migrate(db, 'jobs', ['CREATE TABLE jobs (name TEXT PRIMARY KEY)', 'ALTER TABLE jobs ADD COLUMN schedule TEXT']);
  t.equal(db.pragma('user_version', { simple: true }), v0 + 2, 'two steps applied, the first only once');
  db.prepare('INSERT INTO jobs (name, schedule) VALUES (?, ?)').run('nightly', '0 2 * * *');
  db.close();
  const again = openCatalog(path);
  t.equal(again.pragma('user_version', { simple: true }), v0 + 2, 'reopening applies nothing');
  t.throws(() => migrate(again, 'broken', ['CREATE TABLE ok1 (a)', 'THIS IS NOT SQL']), /syntax/);
  t.same(
    again.prepare("SELECT COUNT(*) AS n FROM schema_migrations WHERE area = 'broken'").get(),
    { n: 1 },
    'a failing step is rolled back, earlier ones stay',
  );
  await again.close();
});

t.test('points: record, list by VM in time order, forget, reindex from a real repository', async (t) => {
  const db = await connectCatalog(join(work, 'p.sqlite'));
  t.teardown(() => db.close());
  await recordPoint(db, '/r', point('b', 'web', '2026-01-02T00:00:00Z'));
  await recordPoint(db, '/r', point('a', 'web', '2026-01-01T00:00:00Z'));
  await recordPoint(db, '/r', { ...point('c', 'db', '2026-01-03T00:00:00Z'), damaged: true });
  await recordPoint(db, '/other', point('z', 'web', '2026-01-01T00:00:00Z'));
  t.same(
    (await listPoints(db, '/r')).map((p) => p.id),
    ['a', 'b', 'c'],
  );
  t.same(
    (await listPoints(db, '/r', { vm: 'web' })).map((p) => p.id),
    ['a', 'b'],
  );
  t.match(await listPoints(db, '/r', { vm: 'db' }), [
    { id: 'c', damaged: true, size: 1024, bytesNew: 512, disks: [{ name: 'root', size: 1024 }] },
  ]);
  await forgetPoints(db, '/r', ['a']);
  t.same(
    (await listPoints(db, '/r')).map((p) => p.id),
    ['b', 'c'],
  );

  const repoDir = join(work, 'repo');
  const repo = await initRepository(repoDir, { chunkSize: 256 * 1024 });
  const img = join(work, 'small.raw');
  await writeFile(img, Buffer.alloc(1024 * 1024, 7));
  const p = await backupVm({
    repo,
    vm: { name: 'tiny', memoryMiB: 64, vcpus: 1, disks: [{ name: 'root', format: 'raw' }], nics: [] },
    disks: { root: img },
  });
  t.notOk(await catalogKnows(db, repo.path));
  t.equal(await reindex(db, repo), 1);
  t.ok(await catalogKnows(db, repo.path));
  t.match(
    await listPoints(db, repo.path),
    [{ id: p.id, vm: 'tiny', size: 1024 * 1024, damaged: false }],
    'the catalog mirrors the repository',
  );
  t.same(
    (await listPoints(db, '/other')).map((x) => x.id),
    ['z'],
    'other repositories are untouched',
  );
});

t.test('the catalog and its -wal/-shm are owner-only (0600), its new directory 0700; an older, open catalog is tightened', async (t) => {
  const { chmod, stat } = await import('node:fs/promises');
  const dir = join(work, 'private', 'state');
  const path = join(dir, 'catalog.sqlite');
  const db = sqliteCatalog(openCatalog(path));
  await recordPoint(db, '/repo', point('p1', 'web', '2026-01-01T00:00:00Z')); // WAL mode: the write makes -wal and -shm
  const mode = async (p: string): Promise<number> => (await stat(p)).mode & 0o777;
  for (const f of [path, `${path}-wal`, `${path}-shm`])
    t.equal((await mode(f)) & 0o077, 0, `${f.slice(work.length)} is not readable by group or others (${(await mode(f)).toString(8)})`);
  t.equal(await mode(dir), 0o700, 'the directory it created is 0700');
  await db.close();

  // As an older version left it: world-readable.
  for (const f of [path, `${path}-wal`, `${path}-shm`]) await chmod(f, 0o644).catch(() => undefined);
  await chmod(path, 0o644);
  const again = sqliteCatalog(openCatalog(path));
  t.equal((await mode(path)) & 0o077, 0, 'reopening tightens the database file');
  for (const f of [`${path}-wal`, `${path}-shm`]) {
    const m = await mode(f).catch(() => undefined);
    if (m !== undefined) t.equal(m & 0o077, 0, `and ${f.slice(work.length)}`);
  }
  t.same(
    (await listPoints(again, '/repo')).map((p) => p.id),
    ['p1'],
    'the data is intact',
  );
  await again.close();
});

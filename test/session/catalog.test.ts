// Recovery sessions in the catalog, both engines: the local SQLite mirror
// (and an older mirror made before the worker column) and the shared
// PostgreSQL catalog, where rows carry the worker that runs a session and an
// older record never overwrites a newer one.
import t from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { SessionStore } from '../../src/session/store.js';
import { SESSIONS_MIGRATIONS, SessionCatalog, flushSessionCatalog, sharedCatalog, sharedSessionsUrl } from '../../src/session/catalog.js';
import { migrate } from '../../src/catalog/catalog.js';
import type { RecoverySession } from '../../src/session/session.js';
import { freshDatabase } from '../helpers/pg.js';

function session(id: string, extra: Partial<RecoverySession> = {}): RecoverySession {
  const at = new Date().toISOString();
  return {
    id,
    vm: 'web',
    point: 'p1',
    repo: '/r',
    driver: 'qemu',
    domain: `web-${id}`,
    state: 'running',
    createdAt: at,
    updatedAt: at,
    addresses: { nic0: '192.0.2.10' },
    disks: {},
    diskBytes: {},
    resources: { taps: [] },
    ...extra,
  };
}

function stateDir(t: { teardown(fn: () => void): void }): string {
  const d = mkdtempSync(join(tmpdir(), 'rl-sesscat-'));
  t.teardown(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

t.test('which catalog: the shared one comes from the environment, PostgreSQL only', async (t) => {
  t.equal(sharedSessionsUrl({}), undefined, 'none: the local mirror');
  t.equal(sharedSessionsUrl({ RESTORELAB_CATALOG: '/var/lib/restorelab/catalog.sqlite' }), undefined, 'a SQLite catalog is not shared');
  t.equal(sharedSessionsUrl({ RESTORELAB_CATALOG: 'postgres://a/b' }), 'postgres://a/b');
  t.equal(
    sharedSessionsUrl({ RESTORELAB_CATALOG: 'postgres://a/b', RESTORELAB_QUEUE: 'postgres://q/b' }),
    'postgres://q/b',
    'the queue first',
  );
  t.equal(
    sharedSessionsUrl({ RESTORELAB_QUEUE: 'postgres://q/b', RESTORELAB_SESSIONS_CATALOG: 'postgres://s/b' }),
    'postgres://s/b',
    "a supervisor's own first",
  );
});

t.test('local mirror: rows carry the worker; a mirror made before the worker column is migrated', async (t) => {
  const dir = stateDir(t);
  // A catalog as older versions left it: the sessions area at step 0 only, with a row.
  const old = new Database(join(dir, 'catalog.sqlite'));
  migrate(old, 'sessions', SESSIONS_MIGRATIONS.slice(0, 1));
  old
    .prepare(
      `INSERT INTO sessions (id, vm, point, repo, driver, state, created, updated, heartbeat_seconds, record) VALUES ('old1', 'web', 'p', '/r', 'qemu', 'stopped', '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z', NULL, '{}')`,
    )
    .run();
  old.close();
  const store = new SessionStore(dir, undefined, undefined);
  t.equal(store.shared, undefined);
  store.save(session('aaaa0001', { worker: 'w1' }));
  store.save(session('aaaa0002'));
  const rows = await store.catalogRows();
  t.same(
    rows.map((r) => [r.id, r.worker]),
    [
      ['old1', null],
      ['aaaa0001', 'w1'],
      ['aaaa0002', null],
    ],
  );
  store.remove('aaaa0001');
  t.same(
    (await store.catalogRows()).map((r) => r.id),
    ['old1', 'aaaa0002'],
  );
});

t.test('shared catalog on PostgreSQL: saves land there (not in the local file), newest record wins, worker rows listed', async (t) => {
  const url = await freshDatabase(t);
  t.teardown(async () => (await sharedCatalog(url)).close());
  const dir = stateDir(t);
  const store = new SessionStore(dir, undefined, url);
  const s = session('bbbb0001', { worker: 'w1' });
  store.save(s);
  store.save(session('bbbb0002'));
  await flushSessionCatalog();
  const cat = new SessionCatalog(await sharedCatalog(url));
  t.same(
    (await cat.rows()).map((r) => [r.id, r.state, r.worker]),
    [
      ['bbbb0001', 'running', 'w1'],
      ['bbbb0002', 'running', null],
    ],
  );
  t.same(
    (await cat.onWorkers()).map((x) => x.id),
    ['bbbb0001'],
    'only sessions on workers',
  );
  t.same(await cat.onWorkers('w2'), [], 'of one worker');
  // Two processes write one session (the CLI's `starting`, the supervisor's `running`): the older lands last and is ignored.
  const stale = { ...s, state: 'starting' as const, updatedAt: '2000-01-01T00:00:00.000Z' };
  await cat.record(stale);
  t.equal((await cat.get('bbbb0001'))?.state, 'running', 'an older record does not overwrite a newer one');
  store.update('bbbb0001', (x) => (x.state = 'stopped'));
  t.equal((await store.catalogRows()).find((r) => r.id === 'bbbb0001')?.state, 'stopped', 'a newer one does');
  store.remove('bbbb0002');
  t.same(
    (await store.catalogRows()).map((r) => r.id),
    ['bbbb0001'],
  );
  const local = new SessionStore(dir, undefined, undefined);
  t.same(await local.catalogRows(), [], 'nothing went to the local mirror');
});

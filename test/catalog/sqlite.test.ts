/** The catalog contract suite (test/catalog/fixtures/catalog-suite.ts) on the SQLite catalog, the one-host default. */
import t from 'tap';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { runCatalogSuite } from './fixtures/catalog-suite.js';

const work = await mkdtemp(join(tmpdir(), 'rl-catalog-sqlite-'));
t.teardown(() => rm(work, { recursive: true, force: true }));

runCatalogSuite(t, {
  fresh: async () => join(work, randomBytes(6).toString('hex'), 'catalog.sqlite'),
  broken: async () => {
    // A regular file where the catalog's directory should be.
    const file = join(work, 'not-a-dir');
    await writeFile(file, 'x');
    return { target: join(file, 'catalog.sqlite'), code: 'CATALOG_UNREADABLE', names: /not-a-dir\/catalog\.sqlite/ };
  },
});

t.test('a SQLite catalog an earlier release made keeps opening: its backup job runs are read, nothing is migrated again', async (t) => {
  const { openCatalog, migrate } = await import('../../src/catalog/catalog.js');
  const { BackupJobHistory } = await import('../../src/backup/jobs/history.js');
  const target = join(work, 'earlier', 'catalog.sqlite');
  // The backup-jobs step as the synchronous migrator of the earlier release applied it, and a run it wrote.
  const old = openCatalog(target);
  migrate(old, 'backup-jobs', [
    `CREATE TABLE backup_job_runs (id TEXT PRIMARY KEY, job TEXT NOT NULL, trigger TEXT NOT NULL, status TEXT NOT NULL,
       started_at TEXT NOT NULL, ended_at TEXT, due_at TEXT, detail TEXT, surebackup TEXT NOT NULL DEFAULT '[]');
     CREATE INDEX backup_job_runs_job ON backup_job_runs (job, started_at);
     CREATE TABLE backup_job_vm_results (run_id TEXT NOT NULL REFERENCES backup_job_runs (id) ON DELETE CASCADE, seq INTEGER NOT NULL,
       vm TEXT NOT NULL, status TEXT NOT NULL, point TEXT, consistency TEXT, cbt TEXT, bytes_read INTEGER NOT NULL,
       bytes_new INTEGER NOT NULL, seconds REAL NOT NULL, pruned TEXT NOT NULL, error TEXT, prune_error TEXT, PRIMARY KEY (run_id, vm))`,
  ]);
  old
    .prepare('INSERT INTO backup_job_runs (id, job, trigger, status, started_at, ended_at, detail) VALUES (?, ?, ?, ?, ?, ?, ?)')
    .run('20261101T013000Z-0000beef', 'daily', 'schedule', 'success', '2026-11-01T01:30:00.000Z', '2026-11-01T01:31:00.000Z', null);
  old
    .prepare(
      `INSERT INTO backup_job_vm_results (run_id, seq, vm, status, point, bytes_read, bytes_new, seconds, pruned) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    )
    .run('20261101T013000Z-0000beef', 0, 'web', 'success', 'p1', 10, 5, 1.5, '[]');
  const version = old.pragma('user_version', { simple: true }) as number;
  old.close();

  const h = await BackupJobHistory.open(target);
  t.teardown(() => h.close());
  t.match(await h.lastRuns({ job: 'daily' }), [{ id: '20261101T013000Z-0000beef', status: 'success' }], 'the earlier run is read');
  t.match((await h.run('20261101T013000Z-0000beef'))?.vms, [{ vm: 'web', point: 'p1', bytesRead: 10, seconds: 1.5, pruned: [] }]);
  const next = await h.startRun('daily', 'manual');
  t.equal((await h.lastRuns({ job: 'daily' }))[0]?.id, next, 'and new runs are written beside it');
  t.equal(
    (await h.catalog.get<{ user_version: number }>('PRAGMA user_version'))?.user_version,
    version,
    'no step applied again (user_version unchanged)',
  );
});

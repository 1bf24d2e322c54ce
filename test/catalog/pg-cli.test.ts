/**
 * The CLI on a PostgreSQL catalog: `RESTORELAB_CATALOG=postgres://… restorelab
 * backup` records the point there, and `points --json` lists it from there
 * (no SQLite file is made), and `repo reindex` rebuilds it; the URL's
 * password is never printed.
 */
import t from 'tap';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { cliIn } from '../helpers/cli.js';
import { freshDatabase } from '../helpers/pg.js';

const work = await mkdtemp(join(tmpdir(), 'rl-pg-cli-'));
t.teardown(() => rm(work, { recursive: true, force: true }));

t.test('backup, then points --json and repo reindex, against PostgreSQL', async (t) => {
  const url = await freshDatabase(t);
  const password = decodeURIComponent(new URL(url).password);
  const cli = cliIn(work, { RESTORELAB_CATALOG: url });
  const repo = join(work, 'repo');
  t.equal((await cli(['repo', 'init', repo, '--json'])).code, 0);
  const image = join(work, 'web.raw');
  await writeFile(image, Buffer.alloc(2 * 1024 * 1024, 3));
  const vm = join(work, 'web.json');
  await writeFile(vm, JSON.stringify({ name: 'web', memoryMiB: 64, vcpus: 1, disks: [{ name: 'root', format: 'raw' }], nics: [] }));

  const b = await cli(['backup', '--repo', repo, '--vm', vm, '--disk', `root=${image}`, '--json']);
  t.equal(b.code, 0, b.stderr);
  t.notMatch(b.stderr, /catalog was not updated/, 'the point went into the catalog');
  const id = (b.json as { restorePoint?: string }).restorePoint;
  t.ok(id, 'backup printed the point id');

  // Straight from PostgreSQL, not through the CLI.
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  t.teardown(() => c.end());
  t.same((await c.query('SELECT id, vm FROM points WHERE repo = $1', [repo])).rows, [{ id, vm: 'web' }], 'the point row is in PostgreSQL');

  // A point only PostgreSQL knows (the repository's files do not have it), and the repository marked indexed:
  // `points` listing it proves it read the catalog rather than the files.
  await c.query(
    `INSERT INTO points SELECT repo, 'zz-pg-only', vm, time, consistency, parent, disks, size, bytes_new, damaged, manifest
       FROM points WHERE id = $1`,
    [id],
  );
  await c.query('INSERT INTO repos (repo, indexed) VALUES ($1, $2)', [repo, new Date().toISOString()]);
  const p = await cli(['points', '--repo', repo, '--json']);
  t.equal(p.code, 0, p.stderr);
  t.match(p.json, {
    repo,
    points: [
      { id, vm: 'web', size: 2 * 1024 * 1024, scan: 'unscanned' },
      { id: 'zz-pg-only', vm: 'web' },
    ],
  });
  t.equal((p.json as { points: unknown[] }).points.length, 2);

  const r = await cli(['repo', 'reindex', '--repo', repo, '--json']);
  t.equal(r.code, 0, r.stderr);
  t.match(r.json, { points: 1, catalog: /^postgres:\/\/.*:\*\*\*@/ });
  t.notOk(r.stdout.includes(password) || r.stderr.includes(password), 'the password is not printed');
  t.same((await c.query('SELECT id FROM points ORDER BY id')).rows, [{ id }], 'reindex made the catalog what the files say');
  t.notOk(existsSync(join(work, 'state', 'catalog.sqlite')), 'no SQLite catalog was made');

  const shown = await cli(['config', 'show', '--json']);
  t.equal(shown.code, 0, shown.stderr);
  t.match(shown.json, { catalog: /^postgres:\/\/[^:]+:\*\*\*@/ }, 'config show names the catalog');
  t.notOk(shown.stdout.includes(password), 'without its password');
});

t.test('an unreachable catalog: backup still succeeds (the catalog is a cache), points fails with CATALOG_UNREACHABLE', async (t) => {
  const cli = cliIn(work, { RESTORELAB_CATALOG: 'postgres://restorelab:pw-x-9931@127.0.0.1:1/none' });
  const repo = join(work, 'repo2');
  t.equal((await cli(['repo', 'init', repo, '--json'])).code, 0);
  const p = await cli(['points', '--repo', repo, '--json']);
  t.not(p.code, 0);
  t.match(p.stdout + p.stderr, /CATALOG_UNREACHABLE/);
  t.match(p.stdout + p.stderr, /127\.0\.0\.1/);
  t.notOk((p.stdout + p.stderr).includes('pw-x-9931'), 'the password is not printed');
});

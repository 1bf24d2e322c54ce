/**
 * Backup job history on a PostgreSQL catalog, end to end: with
 * RESTORELAB_CATALOG=postgres://… and no SQLite catalog anywhere,
 * `restorelab backup-job run` writes its runs (and retention forgets the
 * pruned point) there, `backup-job history` reads them back, and the API
 * server (startApiServer on loopback, a real HTTP request) serves the same
 * runs, and its SureBackup routes and points read the same catalog; and
 * `restorelab server` starts both schedulers on it.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import { pino } from 'pino';
import { exec } from '../../src/host/exec.js';
import { projectPath } from '../../src/paths.js';
import { loadConfig } from '../../src/config/config.js';
import { startApiServer } from '../../src/api/server.js';
import { freshDatabase } from '../helpers/pg.js';
import { settle } from '../helpers/ready.js';
import { cliHome, jobFile, type RunJson } from '../backup-jobs/fixtures.js';

const dir = t.testdir();
const home = await cliHome(dir);

t.test('backup-job run and history on PostgreSQL; the API server reads the same runs', async (t) => {
  const url = await freshDatabase(t);
  const password = decodeURIComponent(new URL(url).password);
  const env = { ...home.env, RESTORELAB_CATALOG: url };
  const cli = (args: string[]) =>
    exec(process.execPath, [projectPath('bin', 'restorelab.js'), ...args], { timeoutMs: 60_000, env: { ...process.env, ...env } });
  jobFile(home.jobs, 'keep-one.json', { name: 'keep-one', vms: [home.alphaVm], retention: { keepLast: 1 } });

  const first = await cli(['backup-job', 'run', 'keep-one', '--json']);
  t.equal(first.code, 0, first.stderr);
  const r1 = JSON.parse(first.stdout) as RunJson;
  const second = await cli(['backup-job', 'run', 'keep-one', '--json']);
  t.equal(second.code, 0, second.stderr);
  const r2 = JSON.parse(second.stdout) as RunJson;
  t.same(r2.vms[0]!.pruned, [r1.vms[0]!.point], 'keepLast 1: the second run pruned the first point');

  // Straight from PostgreSQL, not through restorelab.
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  t.teardown(() => c.end());
  t.same(
    (await c.query("SELECT id, status FROM backup_job_runs WHERE job = 'keep-one' ORDER BY seq")).rows,
    [
      { id: r1.run, status: 'success' },
      { id: r2.run, status: 'success' },
    ],
    'the runs are rows in PostgreSQL',
  );
  t.same(
    (await c.query('SELECT v.vm, v.point FROM backup_job_vm_results v JOIN backup_job_runs r ON r.id = v.run_id ORDER BY r.seq')).rows,
    [
      { vm: 'alpha', point: r1.vms[0]!.point },
      { vm: 'alpha', point: r2.vms[0]!.point },
    ],
    "each run's VM row",
  );
  t.same(
    (await c.query('SELECT id FROM points')).rows,
    [{ id: r2.vms[0]!.point }],
    'the pruned point was forgotten, the kept one recorded, in PostgreSQL',
  );

  const hist = await cli(['backup-job', 'history', 'keep-one', '--json']);
  t.equal(hist.code, 0, hist.stderr);
  const h = JSON.parse(hist.stdout) as { runs: { id: string; status: string; vms: { point: string }[] }[] };
  t.same(
    h.runs.map((r) => [r.id, r.status, r.vms[0]?.point]),
    [
      [r2.run, 'success', r2.vms[0]!.point],
      [r1.run, 'success', r1.vms[0]!.point],
    ],
    'history reads them back, newest first',
  );
  t.notOk(first.stderr.includes(password) || second.stderr.includes(password) || hist.stdout.includes(password), 'no password printed');

  const config = loadConfig({ env });
  t.equal(config.catalog, url);
  const server = await startApiServer({
    config,
    jobsDir: home.sureBackupJobs,
    log: pino({ level: 'silent' }),
    listen: '127.0.0.1',
    port: 0,
  });
  t.teardown(() => server.close());
  const token = (await server.ctx.tokens.create('pg-viewer', 'viewer')).token;
  t.same((await c.query("SELECT name FROM api_tokens WHERE name = 'pg-viewer'")).rows.length, 1, 'the token is in PostgreSQL too');
  const get = async (path: string): Promise<{ status: number; body: Record<string, unknown> }> => {
    const res = await fetch(`${server.url}/api/v1${path}`, { headers: { authorization: `Bearer ${token}` } });
    return { status: res.status, body: (await res.json()) as Record<string, unknown> };
  };
  const runs = await get('/backup-job-runs?job=keep-one&limit=5');
  t.equal(runs.status, 200, JSON.stringify(runs.body));
  t.same(
    (runs.body.runs as { id: string; vms: { point: string }[] }[]).map((r) => [r.id, r.vms[0]?.point]),
    [
      [r2.run, r2.vms[0]!.point],
      [r1.run, r1.vms[0]!.point],
    ],
    'the server serves the runs the CLI wrote',
  );
  const one = await get(`/backup-job-runs/${r1.run}`);
  t.match(one, { status: 200, body: { id: r1.run, job: 'keep-one', status: 'success', vms: [{ vm: 'alpha', pruned: [] }] } });
  const jobs = await get('/backup-jobs');
  t.match(jobs, { status: 200, body: { jobs: [{ name: 'keep-one', lastRun: { id: r2.run, status: 'success' } }] } });

  t.match(await get('/runs'), { status: 200, body: { runs: [] } }, 'SureBackup history is read from PostgreSQL too');
  const points = await get('/points');
  t.match(points, { status: 200, body: { points: [{ id: r2.vms[0]!.point, verification: null }] } }, 'points with their verification');

  t.notOk(existsSync(join(home.state, 'catalog.sqlite')), 'no SQLite catalog was made');
});

t.test('restorelab server on PostgreSQL: both schedulers and the API start, and SureBackup history reads from there', async (t) => {
  const url = await freshDatabase(t);
  const env = { ...home.env, RESTORELAB_CATALOG: url };
  const cli = (args: string[]) =>
    exec(process.execPath, [projectPath('bin', 'restorelab.js'), ...args], { timeoutMs: 60_000, env: { ...process.env, ...env } });
  const server = spawn(
    process.execPath,
    [projectPath('bin', 'restorelab.js'), 'server', '--no-nfs', '--listen', '127.0.0.1', '--port', '0', '--json'],
    { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let stdout = '';
  let stderr = '';
  server.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  server.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => server.on('exit', (code) => resolve(code)));
  t.teardown(() => {
    if (server.exitCode === null) server.kill('SIGKILL');
  });
  const started = (): { api?: { url: string }; backupJobs?: string[]; jobs?: string[] } | undefined => {
    try {
      return JSON.parse(stdout) as { api?: { url: string }; backupJobs?: string[]; jobs?: string[] };
    } catch {
      return undefined;
    }
  };
  await settle(() => started() !== undefined || server.exitCode !== null, 60_000, 50);
  const out = started();
  t.ok(out?.api?.url, `the server started (stderr: ${stderr.slice(-2000)})`);
  t.same(out?.backupJobs, ['keep-one'], 'its backup job scheduler runs on PostgreSQL');
  t.same(out?.jobs, [], 'and its SureBackup scheduler');
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  t.teardown(() => c.end());
  t.same(
    (await c.query("SELECT area FROM schema_migrations WHERE area IN ('surebackup', 'backup-jobs') ORDER BY area")).rows,
    [{ area: 'backup-jobs' }, { area: 'surebackup' }],
    'the server migrated both history areas in PostgreSQL',
  );
  const h = await cli(['surebackup', 'history', '--json']);
  t.equal(h.code, 0, h.stderr);
  t.match(JSON.parse(h.stdout), { runs: [], passRate: { runs: 0, rate: null } }, 'surebackup history reads PostgreSQL');
  server.kill('SIGTERM');
  t.equal(await exited, 0, `the server stops cleanly (stderr: ${stderr.slice(-2000)})`);
  t.notOk(existsSync(join(home.state, 'catalog.sqlite')), 'no SQLite catalog was made');
});

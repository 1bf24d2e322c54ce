/**
 * afterBackup jobs without booting a guest (test/scheduler/after-backup-vm.test.ts
 * boots one): the notice socket between `restorelab backup` and the server,
 * the CLI's choice of who runs the jobs, and the API's backup route; that a
 * backup of a VM no job covers, or a failed backup, triggers nothing.
 * The jobs here fail fast on purpose (their lab file does not exist), so a
 * real configured run is recorded without a VM. Where a run function is
 * stubbed, it is only to see that the server's scheduler was reached.
 */
import t from 'tap';
import request from 'supertest';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { exec } from '../../src/host/exec.js';
import { projectPath } from '../../src/paths.js';
import { loadConfig } from '../../src/config/config.js';
import { initRepository } from '../../src/repo/repository.js';
import { History } from '../../src/surebackup/history.js';
import { JobGate } from '../../src/surebackup/gate.js';
import { Scheduler } from '../../src/scheduler/scheduler.js';
import { configuredRun, type RunJobFn } from '../../src/scheduler/run.js';
import { NOTICE_MAX_BYTES, noticeSocket, sendBackupNotice, serveBackupNotices } from '../../src/scheduler/notice.js';
import { rawRequest } from '../helpers/unix-socket.js';
import { createApiContext } from '../../src/api/server.js';
import { createApp } from '../../src/api/app.js';
import { AuthFailureLimiter } from '../../src/api/rate-limit.js';
import type { Operation } from '../../src/api/operations.js';
import { settle } from '../helpers/ready.js';

const quiet = { info: (): void => undefined, warn: (): void => undefined };

/** A job file in `dir` (lab file missing: a real run of it ends in `error` before anything boots). */
function job(dir: string, name: string, extra: Record<string, unknown>): void {
  mkdirSync(dir, { recursive: true });
  writeFileSync(
    join(dir, `${name}.json`),
    JSON.stringify({ name, lab: 'no-such-lab.json', verify: { vms: ['web'], role: 'web' }, ...extra }),
  );
}

/** A short state home: the socket path must stay under 108 bytes. */
function home(t: { teardown(fn: () => void): void }): string {
  const d = mkdtempSync('/tmp/rlab-');
  t.teardown(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

t.test('notice socket: a notice reaches the scheduler; bad requests are refused; a stale socket is no server', async (t) => {
  const dir = home(t);
  const state = join(dir, 'state');
  mkdirSync(state, { mode: 0o700 });
  const jobs = join(dir, 'jobs');
  job(jobs, 'web-check', { afterBackup: true });
  job(jobs, 'db-check', { afterBackup: true, verify: { vms: ['db'] } });
  job(jobs, 'nightly', { schedule: '0 2 * * *' });
  const history = await History.open(join(dir, 'c.db'));
  const ran: string[] = [];
  const run: RunJobFn = async (s, ctx) => {
    ran.push(`${s.name}:${ctx.trigger}`);
    return { result: 'success', vms: [], labKept: false };
  };
  const sch = await new Scheduler({ jobsDir: jobs, history, run, gate: new JobGate(2, 4096) }).start();
  t.teardown(async () => {
    await sch.stop();
    history.close();
  });

  t.equal(await sendBackupNotice(state, { vm: { name: 'web' }, point: 'p1' }), undefined, 'no socket: no server');
  const srv = await serveBackupNotices({ stateDir: state, jobsDir: jobs, notify: (v) => sch.notifyBackup(v), log: quiet });
  t.ok(srv, 'serving');
  t.equal(srv!.path, noticeSocket(state));
  t.equal(
    await serveBackupNotices({ stateDir: state, jobsDir: jobs, notify: async () => [], log: quiet }),
    undefined,
    'a second server does not take over a live socket',
  );

  const r = await sendBackupNotice(state, { vm: { name: 'web', tags: ['x'] }, point: 'p1' });
  t.equal(r?.pid, process.pid);
  t.equal(r?.jobsDir, jobs);
  t.same(
    r?.triggered.map((x) => [x.job, x.status]),
    [['web-check', 'running']],
    'only the afterBackup job covering web',
  );
  const row = (await history.run(r!.triggered[0]!.run))!;
  t.equal(row.trigger, 'after-backup');
  t.same(
    await sendBackupNotice(state, { vm: { name: 'mail' }, point: 'p2' }).then((x) => x?.triggered),
    [],
    'a VM no job covers triggers nothing',
  );

  for (const [what, line, msg] of [
    ['not JSON', 'hello\n', /not JSON/],
    ['no backup', '{"vm":"web"}\n', /no "backup" object/],
    ['a path as VM', '{"backup":{"vm":"../etc","point":"p"}}\n', /backup.vm must be a VM name/],
    ['tags not strings', '{"backup":{"vm":"web","point":"p","tags":[1]}}\n', /backup.tags/],
  ] as const) {
    const ans = JSON.parse(await rawRequest(srv!.path, line)) as { ok: boolean; error: string };
    t.equal(ans.ok, false, what);
    t.match(ans.error, msg, what);
  }
  const big = await rawRequest(srv!.path, Buffer.alloc(NOTICE_MAX_BYTES + 10, 0x61));
  t.match(big, /at most 16384 bytes/, 'an endless line is cut off, not buffered');
  await new Promise((res) => setTimeout(res, 50));
  t.same(ran, ['web-check:after-backup'], 'refused requests triggered nothing');

  await srv!.close();
  // A server killed without closing leaves its socket file behind, with nobody accepting on it.
  const child = spawn(
    process.execPath,
    ['-e', `require('net').createServer().listen(${JSON.stringify(noticeSocket(state))}, () => console.log('up'))`],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  await new Promise<void>((res) => child.stdout.once('data', () => res()));
  child.kill('SIGKILL');
  await new Promise((res) => child.once('exit', res));
  t.ok(existsSync(noticeSocket(state)), 'the dead server left its socket file');
  t.equal(await sendBackupNotice(state, { vm: { name: 'web' }, point: 'p3' }), undefined, 'a stale socket file is no server');
  const again = await serveBackupNotices({ stateDir: state, jobsDir: jobs, notify: (v) => sch.notifyBackup(v), log: quiet });
  t.ok(again, 'a new server replaces a stale socket file');
  await again!.close();
});

const cli = (args: string[], env: Record<string, string>) =>
  exec(process.execPath, [projectPath('bin', 'restorelab.js'), ...args], {
    timeoutMs: 120_000,
    env: { ...process.env, RESTORELAB_ACCEL: 'tcg', RESTORELAB_DRIVER: 'qemu', ...env },
  });

/** A state dir, a repository, a jobs directory and a 4 MiB image of a VM definition of `vm`. */
async function cliWorld(
  t: { teardown(fn: () => void): void },
  vm: string,
): Promise<{ dir: string; env: Record<string, string>; jobs: string; def: string; image: string }> {
  const dir = home(t);
  await initRepository(join(dir, 'repo'));
  const jobs = join(dir, 'jobs');
  const image = join(dir, 'disk.raw');
  writeFileSync(image, Buffer.alloc(4 << 20, 7));
  const def = join(dir, `${vm}.json`);
  writeFileSync(
    def,
    JSON.stringify({ name: vm, memoryMiB: 64, vcpus: 1, tags: ['small'], disks: [{ name: 'root', format: 'raw' }], nics: [] }),
  );
  return {
    dir,
    jobs,
    def,
    image,
    env: { RESTORELAB_STATE_DIR: join(dir, 'state'), RESTORELAB_REPO: join(dir, 'repo'), RESTORELAB_JOBS_DIR: jobs },
  };
}

async function runsOf(env: Record<string, string>): Promise<{ job: string; trigger: string; status: string; detail: string | null }[]> {
  const h = await History.open(loadConfig({ env: { ...process.env, ...env } }).catalog);
  try {
    return await h.lastRuns({ limit: 100 });
  } finally {
    await h.close();
  }
}

t.test('restorelab backup without a server: runs the covering afterBackup job itself, and nothing else', async (t) => {
  const w = await cliWorld(t, 'web');
  job(w.jobs, 'web-check', { afterBackup: true });
  job(w.jobs, 'by-tag', { afterBackup: true, verify: { tag: 'small' } });
  job(w.jobs, 'db-check', { afterBackup: true, verify: { vms: ['db'] } });
  job(w.jobs, 'web-nightly', { schedule: '0 2 * * *' });
  const r = await cli(['backup', '--vm', w.def, '--disk', w.image, '--json'], w.env);
  t.equal(r.code, 3, `the runs failed (no lab), so exit 3: ${r.stderr}`);
  const out = JSON.parse(r.stdout) as {
    restorePoint: string;
    afterBackup: { by: string; jobsDir: string; runs: { job: string; run: string; status: string; detail: string }[] };
  };
  t.ok(out.restorePoint, 'the point is recorded');
  t.equal(out.afterBackup.by, 'this-process');
  t.same(out.afterBackup.runs.map((x) => [x.job, x.status]).sort(), [
    ['by-tag', 'error'],
    ['web-check', 'error'],
  ]);
  t.match(out.afterBackup.runs.find((x) => x.job === 'web-check')!.detail, /no-such-lab/, 'the reason is in the output');
  const rows = await runsOf(w.env);
  t.same(
    rows.map((x) => [x.job, x.trigger, x.status]).sort(),
    [
      ['by-tag', 'after-backup', 'error'],
      ['web-check', 'after-backup', 'error'],
    ],
    'recorded with trigger after-backup',
  );

  const human = await cli(['backup', '--vm', w.def, '--disk', w.image], w.env);
  t.match(human.stdout, /after-backup: job web-check run \S+: error \(.*no-such-lab/);
  t.match(human.stderr, /after-backup: job web-check run \S+ started/, 'the start is said before the wait');

  const off = await cli(['backup', '--vm', w.def, '--disk', w.image, '--no-after-backup', '--json'], w.env);
  t.equal(off.code, 0, off.stderr);
  t.equal((JSON.parse(off.stdout) as { afterBackup: unknown }).afterBackup, null);
  t.equal((await runsOf(w.env)).length, 4, '--no-after-backup ran nothing');
});

t.test('restorelab backup: a VM no afterBackup job covers, or a failed backup, triggers nothing', async (t) => {
  const w = await cliWorld(t, 'mail');
  job(w.jobs, 'web-check', { afterBackup: true });
  const r = await cli(['backup', '--vm', w.def, '--disk', w.image, '--json'], w.env);
  t.equal(r.code, 0, r.stderr);
  t.same((JSON.parse(r.stdout) as { afterBackup: unknown }).afterBackup, { by: 'this-process', jobsDir: w.jobs, runs: [] });
  const human = await cli(['backup', '--vm', w.def, '--disk', w.image], w.env);
  t.match(human.stdout, /after-backup: no afterBackup job in .* covers mail/);

  job(w.jobs, 'mail-check', { afterBackup: true, verify: { vms: ['mail'] } });
  const failed = await cli(['backup', '--vm', w.def, '--disk', join(w.dir, 'missing.raw'), '--json'], w.env);
  t.not(failed.code, 0, 'the backup failed');
  t.notMatch(failed.stderr, /after-backup/);
  t.same(await runsOf(w.env), [], 'no run recorded');
});

t.test('restorelab backup with a server on the state dir: the server runs the job, the CLI says so', async (t) => {
  const w = await cliWorld(t, 'web');
  job(w.jobs, 'web-check', { afterBackup: true });
  const cfg = loadConfig({ env: { ...process.env, ...w.env } });
  mkdirSync(cfg.stateDir, { recursive: true, mode: 0o700 });
  const history = await History.open(cfg.catalog);
  let release!: () => void;
  const held = new Promise<void>((r) => {
    release = r;
  });
  const runs: string[] = [];
  // Held until the CLI has answered: the CLI must not wait for the server's run.
  const sch = await new Scheduler({
    jobsDir: w.jobs,
    history,
    gate: new JobGate(2, 4096),
    run: async (s, ctx) => {
      runs.push(`${s.name}:${ctx.trigger}`);
      await held;
      return { result: 'success', vms: [], labKept: false };
    },
  }).start();
  const srv = await serveBackupNotices({ stateDir: cfg.stateDir, jobsDir: w.jobs, notify: (v) => sch.notifyBackup(v), log: quiet });
  t.teardown(async () => {
    release();
    await srv?.close();
    await sch.stop();
    history.close();
  });
  const r = await cli(['backup', '--vm', w.def, '--disk', w.image, '--jobs', join(w.dir, 'elsewhere'), '--json'], w.env);
  t.equal(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout) as {
    afterBackup: { by: string; server: { pid: number }; jobsDir: string; runs: { job: string; run: string; status: string }[] };
  };
  t.equal(out.afterBackup.by, 'server');
  t.equal(out.afterBackup.server.pid, process.pid);
  t.equal(out.afterBackup.jobsDir, w.jobs, "the server's jobs directory, not the CLI's --jobs");
  t.same(
    out.afterBackup.runs.map((x) => [x.job, x.status]),
    [['web-check', 'running']],
  );
  t.same(runs, ['web-check:after-backup']);
  t.equal((await history.run(out.afterBackup.runs[0]!.run))?.status, 'running', 'the server is still running it');
  const human = await cli(['backup', '--vm', w.def, '--disk', w.image], w.env);
  t.match(human.stdout, /after-backup: the server \(pid \d+\) skipped job web-check: its previous run is still going/);
  release();
  const heldRun = out.afterBackup.runs[0]!.run;
  await settle(async () => (await history.run(heldRun))?.status !== 'running', 10_000);
  const rows = await history.lastRuns({ job: 'web-check' });
  t.same(
    rows.map((x) => [x.trigger, x.status]),
    [
      ['after-backup', 'skipped-overlap'],
      ['after-backup', 'success'],
    ],
  );
});

t.test('POST /backups: the server scheduler runs covering afterBackup jobs; other VMs and failed backups trigger nothing', async (t) => {
  const dir = home(t);
  const repo = join(dir, 'repo');
  await initRepository(repo);
  const src = join(dir, 'src');
  mkdirSync(join(src, 'a-directory'), { recursive: true });
  writeFileSync(join(src, 'disk.raw'), Buffer.alloc(4 << 20, 9));
  const config = loadConfig({ env: { RESTORELAB_HOME: dir, RESTORELAB_REPO: repo } });
  config.api.sourceRoots = [src];
  const jobsDir = join(dir, 'jobs');
  job(jobsDir, 'web-check', { afterBackup: true });
  job(jobsDir, 'dns-nightly', { verify: { vms: ['dns'] }, schedule: '0 2 * * *' });
  const gate = new JobGate(config.limits.maxConcurrentVms, config.limits.memoryBudgetMiB);
  const history = await History.open(config.catalog);
  // The real configured run: here it ends in `error` (no lab file) without booting.
  const scheduler = await new Scheduler({
    jobsDir,
    history,
    gate,
    log: quiet,
    run: configuredRun(config, history, quiet, gate.limiter),
  }).start();
  const ctx = await createApiContext({
    config,
    jobsDir,
    jobGate: gate,
    scheduler,
    log: pino({ level: 'silent' }),
    authLimiter: new AuthFailureLimiter(1000),
  });
  const { app } = createApp(ctx);
  t.teardown(async () => {
    await scheduler.stop();
    await ctx.close();
    history.close();
  });
  const op = `Bearer ${(await ctx.tokens.create('t', 'operator')).token}`;
  const backup = async (body: object): Promise<Operation> => {
    const res = await request(app).post('/api/v1/backups').set('authorization', op).send(body).expect(202);
    return (await ctx.operations.wait((res.body as { id: string }).id))!;
  };

  const web = await backup({ vm: 'web', disks: { root: join(src, 'disk.raw') } });
  t.equal(web.state, 'succeeded', JSON.stringify(web.error));
  const after = (web.result as { afterBackup: { job: string; run: string; status: string }[] }).afterBackup;
  t.same(
    after.map((x) => [x.job, x.status]),
    [['web-check', 'running']],
  );
  const deadline = Date.now() + 30_000;
  while ((await history.run(after[0]!.run))?.status === 'running' && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  const { run } = (await request(app).get(`/api/v1/runs/${after[0]!.run}`).set('authorization', op).expect(200)).body as {
    run: { trigger: string; status: string; detail: string };
  };
  t.equal(run.trigger, 'after-backup');
  t.equal(run.status, 'error');
  t.match(run.detail, /no-such-lab/);

  const dns = await backup({ vm: 'dns', disks: { root: join(src, 'disk.raw') } });
  t.equal(dns.state, 'succeeded');
  t.same((dns.result as { afterBackup: unknown[] }).afterBackup, [], 'no afterBackup job covers dns');
  const broken = await backup({ vm: 'web', disks: { root: join(src, 'a-directory') } });
  t.equal(broken.state, 'failed', 'a directory is no image');
  t.same(
    (await history.lastRuns({ limit: 100 })).map((x) => x.job),
    ['web-check'],
    'only the one successful backup of web triggered a run',
  );
});

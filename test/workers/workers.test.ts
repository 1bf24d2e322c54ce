// Lab workers on real PostgreSQL (pg-boss) and real TCG guests: a SureBackup
// job of four VMs through two workers on one host; a worker killed mid-task
// whose task another worker finishes once the server sees no live worker holds
// it, while the dead one cleans up when it comes back; and a task that fails
// on every attempt (a worker without the repository's key).
import t from 'tap';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { projectPath } from '../../src/paths.js';
import { exec } from '../../src/host/exec.js';
import { cli, shortDir, guestRepository, labFile, leftovers } from '../surebackup/fixtures/guest-lab.js';
import { subnet } from '../helpers/subnets.js';
import { freshDatabase } from '../helpers/pg.js';
import { startWorker, stop, until } from '../helpers/workers.js';
import { guestImage } from '../helpers/guests.js';
import { openRepository } from '../../src/repo/repository.js';
import { backupVm } from '../../src/backup/engine.js';
import { loadVmDefinition } from '../../src/vm/definition.js';
import request from 'supertest';
import { testApi } from '../helpers/api.js';
import { settled } from '../api/fixtures/lab-api.js';
import type { Operation } from '../../src/api/operations.js';
import { queueDispatch } from '../../src/workers/dispatch.js';
import { setLabDispatch } from '../../src/scheduler/run.js';

async function workersJson(
  url: string,
  stateDir: string,
): Promise<{ name: string; slots: number; running: number; lastSeen: string; alive: boolean }[]> {
  const r = await cli(['workers', '--json'], stateDir, 60_000, { RESTORELAB_QUEUE: url });
  if (r.code !== 0) throw new Error(`workers --json: ${r.stderr}`);
  return (JSON.parse(r.stdout) as { workers: { name: string; slots: number; running: number; lastSeen: string; alive: boolean }[] })
    .workers;
}

t.test('bad input: a worker name with a slash, slots of 0, and no PostgreSQL catalog', async (t) => {
  const dir = shortDir(t);
  const bad = await cli(['--json', 'worker', '--name', 'a/b'], join(dir, 's'), 30_000, {
    RESTORELAB_QUEUE: 'postgres://x@127.0.0.1:1/x',
  });
  t.equal(bad.code, 2);
  t.match(bad.stdout, /BAD_WORKER_NAME/);
  const slots = await cli(['--json', 'worker', '--name', 'w', '--slots', '0'], join(dir, 's'), 30_000);
  t.equal(slots.code, 2);
  t.match(slots.stdout + slots.stderr, /--slots must be a whole number/);
  const env = { ...process.env };
  delete env['RESTORELAB_QUEUE'];
  delete env['RESTORELAB_CATALOG'];
  const none = await exec(process.execPath, [projectPath('bin', 'restorelab.js'), '--json', 'workers'], {
    timeoutMs: 30_000,
    env: { ...env, RESTORELAB_STATE_DIR: join(dir, 's') },
  });
  t.equal(none.code, 2);
  t.match(none.stdout, /WORKERS_NEED_POSTGRES/);
  const down = await cli(['--json', 'workers'], join(dir, 's'), 60_000, { RESTORELAB_QUEUE: 'postgres://rl:secretpw@127.0.0.1:1/x' });
  t.not(down.code, 0);
  t.match(down.stdout, /QUEUE_UNREACHABLE/);
  t.notMatch(down.stdout + down.stderr, /secretpw/, 'the password never shows');
});

/** Backs up `variant`'s guest once more as VM `name` (a second VM of the same kind). */
async function backupCopy(repoDir: string, variant: string, name: string): Promise<void> {
  const image = await guestImage(variant);
  const vm = { ...loadVmDefinition(projectPath('lab-templates', 'vms', `${variant}.json`)), name };
  await backupVm({ repo: await openRepository(repoDir), vm, disks: { root: image }, source: image });
}

const FOUR = ['db', 'db2', 'web', 'web2'];

t.test('a SureBackup job of four VMs through two workers: both run VMs, the report holds all four with their evidence', async (t) => {
  const url = await freshDatabase(t);
  const dir = shortDir(t);
  const { repo } = await guestRepository(dir, ['web', 'db']);
  await backupCopy(repo, 'web', 'web2');
  await backupCopy(repo, 'db', 'db2');
  const w1 = startWorker('w1', url, join(dir, 'w1'), ['--slots', '2']);
  // Both mirror the same lab on this one host: w2 moves its copy onto a masquerade subnet of its own pool.
  const w2 = startWorker('w2', url, join(dir, 'w2'), ['--masquerade', subnet('workers/workers:run-pool')]);
  t.teardown(async () => {
    await stop(w1);
    await stop(w2);
  });
  await until('two workers registered', async () => (await workersJson(url, join(dir, 'srv'))).filter((w) => w.alive).length === 2);
  const listed = await workersJson(url, join(dir, 'srv'));
  t.same(
    listed.map((w) => [w.name, w.slots, w.running]),
    [
      ['w1', 2, 0],
      ['w2', 1, 0],
    ],
  );
  t.ok(
    listed.every((w) => Date.now() - Date.parse(w.lastSeen) < 60_000),
    'lastSeen is recent',
  );
  // The API (and the dashboard over it) reads the same registry.
  process.env['RESTORELAB_QUEUE'] = url;
  const api = await testApi();
  delete process.env['RESTORELAB_QUEUE'];
  t.teardown(() => api.close());
  const viaApi = await request(api.app).get('/api/v1/workers').set('Authorization', api.auth.viewer);
  t.equal(viaApi.status, 200);
  t.equal(viaApi.body.enabled, true);
  t.same(
    (viaApi.body.workers as { name: string }[]).map((w) => w.name),
    ['w1', 'w2'],
    'GET /workers lists both',
  );
  const off = await testApi();
  t.teardown(() => off.close());
  const none = await request(off.app).get('/api/v1/workers').set('Authorization', off.auth.viewer);
  t.same([none.status, none.body.enabled], [200, false], 'a server without a PostgreSQL queue has no workers, and says so');

  const labName = `sbw${process.pid % 10000}`;
  const jobFile = join(dir, 'job.json');
  writeFileSync(
    jobFile,
    JSON.stringify({
      name: 'through-workers',
      lab: labFile(dir, labName, subnet('workers/workers:run')),
      verify: {
        vms: FOUR,
        maxBootSeconds: 150,
        overrides: { db: { role: 'postgresql' }, db2: { role: 'postgresql' }, web: { role: 'web' }, web2: { role: 'web' } },
      },
    }),
  );
  const srv = join(dir, 'srv');
  // Bad input is refused on the server before anything is queued, not after every retry on the workers.
  const badJob = join(dir, 'bad-job.json');
  writeFileSync(
    badJob,
    JSON.stringify({ name: 'no-point', lab: labFile(dir, labName, subnet('workers/workers:run')), verify: { vms: ['web', 'mail'] } }),
  );
  const bad = await cli(['--json', 'surebackup', 'run', badJob, '--repo', repo, '--workers'], srv, 120_000, { RESTORELAB_QUEUE: url });
  t.not(bad.code, 0, `a job naming a VM with no restore point is refused: ${bad.stdout}`);
  t.match(bad.stdout, /NO_RESTORE_POINT/);
  t.notMatch(w1.log() + w2.log(), /task /, 'no worker was given a task');

  const r = await cli(['surebackup', 'run', jobFile, '--repo', repo, '--workers', '--json'], srv, 600_000, { RESTORELAB_QUEUE: url });
  t.equal(r.code, 0, `run passed; stderr: ${r.stderr.slice(-1500)}\nw1: ${w1.log().slice(-800)}\nw2: ${w2.log().slice(-800)}`);
  const rep = JSON.parse(r.stdout) as {
    result: string;
    report: string;
    vms: {
      name: string;
      result: string;
      worker?: string;
      screenshot: string | null;
      console: string | null;
      tests: { name: string; result: string; detail?: string }[];
    }[];
  };
  t.equal(rep.result, 'success');
  t.same(rep.vms.map((v) => v.name).sort(), FOUR, 'the report holds all four VMs');
  t.same([...new Set(rep.vms.map((v) => v.worker))].sort(), ['w1', 'w2'], 'both workers ran VMs');
  for (const vm of rep.vms) {
    t.equal(vm.result, 'success', `${vm.name} passed on ${vm.worker}: ${JSON.stringify(vm.tests).slice(0, 1500)}`);
    t.ok(
      vm.tests.some((x) => x.name === 'heartbeat' && x.result === 'passed') &&
        vm.tests.some((x) => /^(tcp|http):/.test(x.name) && x.result === 'passed'),
      `${vm.name}: heartbeat and its port test passed on the worker`,
    );
    t.ok(
      vm.screenshot && vm.screenshot.startsWith(srv) && existsSync(vm.screenshot),
      `${vm.name}: the screenshot is in the server's run directory: ${vm.screenshot}`,
    );
    t.ok(vm.console && vm.console.startsWith(srv) && existsSync(vm.console), `${vm.name}: and so is the console log`);
  }
  t.ok(existsSync(rep.report), 'the HTML report was written where the run started');
  for (const w of [w1, w2]) t.same(await leftovers(w.stateDir, undefined, labName), [], `nothing left on ${w.stateDir}`);
});

t.test('a worker killed mid-task: the task is given back and finished by another; the dead one cleans up when it comes back', async (t) => {
  const url = await freshDatabase(t);
  const dir = shortDir(t);
  const { repo } = await guestRepository(dir, ['web']);
  const w1 = startWorker('w1', url, join(dir, 'w1'));
  t.teardown(() => stop(w1));
  await until('w1 registered', () => w1.log().includes('waiting for tasks'), 60_000);
  const twin = await cli(['--json', 'worker', '--name', 'w1b'], w1.stateDir, 60_000, { RESTORELAB_QUEUE: url });
  t.not(twin.code, 0, 'a second worker on the same state directory is refused');
  t.match(twin.stdout, /WORKER_STATE_BUSY/);

  const labName = `sbl${process.pid % 10000}`;
  const jobFile = join(dir, 'job.json');
  writeFileSync(
    jobFile,
    JSON.stringify({
      name: 'lease',
      lab: labFile(dir, labName, subnet('workers/workers:lease')),
      verify: { vms: ['web'], role: 'web', maxBootSeconds: 150 },
    }),
  );
  const srv = join(dir, 'srv');
  // No short lease: the waiting server sees that no live worker holds the task and gives it back (dispatch.ts, watchOrphans).
  const run = cli(['surebackup', 'run', jobFile, '--repo', repo, '--workers', '--json'], srv, 600_000, { RESTORELAB_QUEUE: url });
  // Killed once its VM runs: its lab, publication and work directory stay, and
  // the QEMU it started may keep running there (unless a write to its dead
  // parent's pipe killed it), as after a worker crash.
  // A run that ends before w1 starts the VM would leave the wait below to time out with no word of why.
  const endedEarly = run.then((r) => {
    throw new Error(`the run ended before w1 started its VM (exit ${r.code}): ${r.stdout.slice(-800)} ${r.stderr.slice(-1500)}`);
  });
  endedEarly.catch(() => undefined);
  await Promise.race([
    until('w1 started the VM', async () => (await leftovers(w1.stateDir)).some((l) => l.startsWith('process:')), 240_000),
    endedEarly,
  ]);
  w1.proc.kill('SIGKILL');
  await new Promise((r) => w1.proc.once('exit', r));
  const left = await leftovers(w1.stateDir, undefined, labName);
  t.ok(
    ['netns ', 'vm work dir ', 'publication '].every((k) => left.some((l) => l.startsWith(k))),
    `the killed worker left its VM, lab, work dir and publication behind: ${left.join('; ')}`,
  );

  // It comes back: first it cleans up, then it waits for work; it is stopped again at once, before the task is given back.
  const back = startWorker('w1', url, w1.stateDir);
  await until('w1 back', () => back.log().includes('waiting for tasks'), 120_000);
  t.same(await leftovers(w1.stateDir, undefined, labName), [], `w1 cleaned up its leftovers when it came back: ${back.log().slice(-600)}`);
  await stop(back);

  const w2 = startWorker('w2', url, join(dir, 'w2'));
  t.teardown(() => stop(w2));
  const r = await run;
  t.equal(r.code, 0, `the run passed; stderr: ${r.stderr.slice(-1500)}\nw2: ${w2.log().slice(-1500)}`);
  const rep = JSON.parse(r.stdout) as { result: string; vms: { name: string; worker?: string; result: string }[] };
  t.equal(rep.vms[0]?.worker, 'w2', 'the task was finished by the other worker');
  t.equal(rep.vms[0]?.result, 'success');
  t.same(await leftovers(w2.stateDir, undefined, labName), [], 'nothing left on w2');
});

t.test('a task that fails on every attempt: the VM is reported failed, with the reason, after the retries', async (t) => {
  const url = await freshDatabase(t);
  const dir = shortDir(t);
  // An encrypted repository whose key the server has and the workers do not: a
  // misconfigured lab host fails every attempt before it boots anything.
  const keyFile = join(dir, 'repo.key');
  const { repo } = await guestRepository(dir, ['web'], { keyFile });
  const w1 = startWorker('w1', url, join(dir, 'w1'));
  const w2 = startWorker('w2', url, join(dir, 'w2'));
  t.teardown(async () => {
    await stop(w1);
    await stop(w2);
  });
  await until('two workers registered', () => w1.log().includes('waiting for tasks') && w2.log().includes('waiting for tasks'), 60_000);
  const jobFile = join(dir, 'job.json');
  const labName = `sbf${process.pid % 10000}`;
  writeFileSync(
    jobFile,
    JSON.stringify({ name: 'keyless', lab: labFile(dir, labName, subnet('workers/workers:lease')), verify: { vms: ['web'], role: 'web' } }),
  );
  const r = await cli(['surebackup', 'run', jobFile, '--repo', repo, '--workers', '--json'], join(dir, 'srv'), 300_000, {
    RESTORELAB_QUEUE: url,
    RESTORELAB_KEY_FILE: keyFile,
  });
  t.not(r.code, 0, 'the run is not green');
  const rep = JSON.parse(r.stdout) as {
    result: string;
    vms: { name: string; result: string; tests: { name: string; result: string; detail?: string }[] }[];
  };
  t.equal(rep.result, 'failed');
  t.equal(rep.vms[0]?.result, 'failed');
  const why = rep.vms[0]?.tests.find((x) => x.name === 'worker');
  t.match(why, { result: 'failed', detail: /failed after 2 retries: .*key/i }, `the worker test says why: ${JSON.stringify(why)}`);
  const attempts = (w1.log() + w2.log()).match(/: task [0-9a-f-]+ \(run/g) ?? [];
  t.equal(attempts.length, 3, 'it was tried three times (two retries)');
  for (const w of [w1, w2]) t.same(await leftovers(w.stateDir, undefined, labName), [], `nothing left on ${w.stateDir}`);
});

t.test('a job with "runOn": "workers" started through the API runs on a worker; without a queue it is refused', async (t) => {
  const url = await freshDatabase(t);
  const dir = shortDir(t);
  const { repo } = await guestRepository(dir, ['web']);
  const w1 = startWorker('w1', url, join(dir, 'w1'));
  t.teardown(() => stop(w1));
  await until('w1 registered', () => w1.log().includes('waiting for tasks'), 60_000);
  const api = await testApi({ env: { RESTORELAB_REPO: repo, RESTORELAB_ACCEL: 'tcg', RESTORELAB_DRIVER: 'qemu' } });
  t.teardown(() => api.close());
  const labName = `sba${process.pid % 10000}`;
  writeFileSync(
    join(api.ctx.jobsDir, 'onworkers.json'),
    JSON.stringify({
      name: 'onworkers',
      runOn: 'workers',
      lab: labFile(dir, labName, subnet('workers/workers:api')),
      verify: { vms: ['web'], maxBootSeconds: 150 },
    }),
  );
  const run = async (): Promise<Operation> => {
    const started = await request(api.app).post('/api/v1/jobs/onworkers/run').set('Authorization', api.auth.operator).expect(202);
    return settled(api, started.body.id as string);
  };
  const refused = await run();
  t.equal(refused.state, 'failed', 'a process with no lab queue does not run the job here unasked');
  t.match(JSON.stringify(refused.error), /JOB_NEEDS_WORKERS/);

  // What `restorelab server` sets at start (src/cli/commands/server.ts).
  const labs = queueDispatch(api.config.catalog);
  process.env['RESTORELAB_QUEUE'] = url;
  setLabDispatch(labs.dispatch);
  t.teardown(async () => {
    setLabDispatch(undefined);
    delete process.env['RESTORELAB_QUEUE'];
    await labs.close();
  });
  const op = await run();
  t.equal(op.state, 'succeeded', JSON.stringify(op.error));
  const result = op.result as { result: string; vms: { name: string; result: string }[] };
  t.equal(result.result, 'success', JSON.stringify(result));
  t.match(w1.log(), /worker w1: task [0-9a-f-]+ \(run [^)]+\): - \| web/, 'w1 ran the VM');
  t.same(await leftovers(w1.stateDir, undefined, labName), [], 'nothing left on the worker');
});

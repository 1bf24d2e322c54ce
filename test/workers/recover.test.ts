// Recoveries on lab workers, on real PostgreSQL (pg-boss) and a real TCG
// guest: the server queues `recover --run-on workers`, a worker recovers the
// `web` guest on its host and answers with the session; the server lists it
// with the worker's name (CLI and API), serves nothing of it itself; its
// screenshot and its migration (onto the worker's own storage, within the
// worker's restore roots) are done there, and its stop goes to that worker,
// which takes the VM, the lab and the publication down. Two workers on one
// host recover into the same lab side by side (a masquerade pool). Bad input and a process without a queue are refused before anything
// is queued.
import t from 'tap';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import request from 'supertest';
import { projectPath } from '../../src/paths.js';
import { exec } from '../../src/host/exec.js';
import { cli, shortDir, guestRepository, labFile, leftovers } from '../surebackup/fixtures/guest-lab.js';
import { address, subnet } from '../helpers/subnets.js';
import { freshDatabase } from '../helpers/pg.js';
import { startWorker, stop, until } from '../helpers/workers.js';
import { testApi } from '../helpers/api.js';
import { httpGet, WEB_EXPECT } from '../session/fixtures/recovery.js';
import { SessionCatalog, flushSessionCatalog, sharedCatalog } from '../../src/session/catalog.js';
import { SessionStore } from '../../src/session/store.js';

interface Listed {
  session: string;
  vm: string;
  state: string;
  worker?: string;
  addresses: Record<string, string>;
}

async function sessionsJson(stateDir: string, env: Record<string, string>): Promise<Listed[]> {
  const r = await cli(['sessions', '--json'], stateDir, 60_000, env);
  if (r.code !== 0) throw new Error(`sessions --json: ${r.stdout} ${r.stderr}`);
  return (JSON.parse(r.stdout) as { sessions: Listed[] }).sessions;
}

async function workersJson(stateDir: string, env: Record<string, string>): Promise<{ name: string }[]> {
  const r = await cli(['workers', '--json'], stateDir, 60_000, env);
  if (r.code !== 0) throw new Error(`workers --json: ${r.stderr}`);
  return (JSON.parse(r.stdout) as { workers: { name: string }[] }).workers;
}

t.test('no queue, a bad --run-on or runOn: refused before anything is queued', async (t) => {
  const dir = shortDir(t);
  const env = { ...process.env };
  delete env['RESTORELAB_QUEUE'];
  delete env['RESTORELAB_CATALOG'];
  const none = await exec(process.execPath, [projectPath('bin', 'restorelab.js'), '--json', 'recover', 'web', '--run-on', 'workers'], {
    timeoutMs: 60_000,
    env: { ...env, RESTORELAB_STATE_DIR: join(dir, 's'), RESTORELAB_REPO: join(dir, 'repo') },
  });
  t.equal(none.code, 2, none.stderr);
  t.match(none.stdout, /RECOVER_NEEDS_WORKERS/);
  const bad = await cli(['--json', 'recover', 'web', '--run-on', 'cloud'], join(dir, 's'), 60_000);
  t.equal(bad.code, 2);
  t.match(bad.stdout, /BAD_FLAGS/);
  t.match(bad.stdout, /host or workers/);
  const mixed = await cli(['--json', 'recover', 'web', '--run-on', 'workers', '--network', 'br0'], join(dir, 's'), 60_000, {
    RESTORELAB_QUEUE: 'postgres://x@127.0.0.1:1/x',
  });
  t.equal(mixed.code, 2);
  t.match(mixed.stdout, /--run-on workers does not go with --network/);

  const api = await testApi();
  t.teardown(() => api.close());
  const badBody = await request(api.app)
    .post('/api/v1/sessions')
    .set('Authorization', api.auth.operator)
    .send({ vm: 'web', runOn: 'elsewhere' });
  t.equal(badBody.status, 400, 'an unknown runOn fails the schema');
  t.match(JSON.stringify(badBody.body), /runOn/);
  const noQueue = await request(api.app)
    .post('/api/v1/sessions')
    .set('Authorization', api.auth.operator)
    .send({ vm: 'web', runOn: 'workers' });
  t.equal(noQueue.status, 400, 'a server without a queue refuses, with no operation started');
  t.match(JSON.stringify(noQueue.body), /RECOVER_NEEDS_WORKERS/);
});

t.test('a worker recovers web; the server lists it with the worker name and stops it there; nothing is left', async (t) => {
  const url = await freshDatabase(t);
  const dir = shortDir(t);
  const { repo } = await guestRepository(dir, ['web']);
  const w1 = startWorker('w1', url, join(dir, 'w1'));
  t.teardown(() => stop(w1));
  await until('w1 registered', () => w1.log().includes('waiting for tasks'), 60_000);
  const srv = join(dir, 'srv');
  const env = { RESTORELAB_QUEUE: url };
  const labName = `rw${process.pid % 10000}`;
  const lab = labFile(dir, labName, subnet('workers/recover'));

  // Unknown VM: found on the server, no task queued.
  const unknown = await cli(['--json', 'recover', 'mail', '--repo', repo, '--lab', lab, '--run-on', 'workers'], srv, 60_000, env);
  t.equal(unknown.code, 5, unknown.stderr);
  t.match(unknown.stdout, /VM_NOT_FOUND/);
  t.notMatch(w1.log(), /recover mail/, 'no worker was given the task');

  const r = await cli(['recover', 'web', '--repo', repo, '--lab', lab, '--run-on', 'workers', '--json'], srv, 600_000, env);
  t.equal(r.code, 0, `recover passed; stderr: ${r.stderr.slice(-1500)}\nw1: ${w1.log().slice(-1500)}`);
  const out = JSON.parse(r.stdout) as {
    session: string;
    vm: string;
    state: string;
    worker: string;
    heartbeatSeconds: number;
    addresses: Record<string, string>;
  };
  t.match(out, { vm: 'web', state: 'running', worker: 'w1' });
  // A failed step must not leave the session's VM and lab running (its supervisor outlives the worker): stopped on w1's state directory, idempotent.
  if (out.session) t.teardown(async () => void (await cli(['stop', out.session], w1.stateDir, 120_000)));
  t.ok(out.heartbeatSeconds > 0, `heartbeat after ${out.heartbeatSeconds} s`);
  t.same(out.addresses, { nic0: address('workers/recover') }, "the lab's masquerade address on the worker's host");
  // The worker's host is this one: the guest answers there.
  t.match((await httpGet(`http://${out.addresses.nic0}/`)).body, WEB_EXPECT);
  t.match(w1.log(), new RegExp(`session ${out.session} of web is running`));
  t.same(await leftovers(srv, undefined, undefined), [], 'the server runs nothing of it');

  const listed = (await sessionsJson(srv, env)).find((s) => s.session === out.session);
  t.match(listed, { vm: 'web', state: 'running', worker: 'w1' }, 'sessions on the server lists it with its worker');
  t.same(
    (await sessionsJson(srv, {})).find((s) => s.session === out.session),
    undefined,
    'without the shared catalog, the server knows only its own sessions',
  );

  process.env['RESTORELAB_QUEUE'] = url;
  const api = await testApi({ env: { RESTORELAB_REPO: repo } });
  t.teardown(async () => {
    delete process.env['RESTORELAB_QUEUE'];
    await api.close();
  });
  const viaApi = await request(api.app).get('/api/v1/sessions').set('Authorization', api.auth.viewer);
  t.equal(viaApi.status, 200);
  t.match(
    (viaApi.body.sessions as { id: string }[]).find((s) => s.id === out.session),
    { vm: 'web', state: 'running', worker: 'w1' },
    'GET /sessions lists it with its worker',
  );
  // Its live console comes from the worker: only it reaches the VM.
  const shot = await request(api.app).get(`/api/v1/sessions/${out.session}/screenshot`).set('Authorization', api.auth.viewer);
  t.equal(shot.status, 200, JSON.stringify(shot.body));
  t.equal(shot.headers['content-type'], 'image/png');
  t.same([...(shot.body as Buffer).subarray(0, 4)], [0x89, 0x50, 0x4e, 0x47], 'a PNG');
  t.match(w1.log(), new RegExp(`screenshot ${out.session}`), 'taken on w1');

  // Migration onto the worker's own storage: a path of its host, held to its restore roots there.
  const outside = await cli(['--json', 'migrate', out.session, '--to', join(dir, 'elsewhere')], srv, 120_000, env);
  t.equal(outside.code, 2, outside.stderr);
  t.match(outside.stdout, /PATH_NOT_ALLOWED/, "a target outside the worker's restore roots is refused there");
  t.match(outside.stdout, /worker w1/);
  const target = join(w1.stateDir, 'restores', 'prod');
  const mig = await cli(['--json', 'migrate', out.session, '--to', target], srv, 600_000, env);
  t.equal(mig.code, 0, `${mig.stdout} ${mig.stderr.slice(-1500)}\nw1: ${w1.log().slice(-1500)}`);
  const migrated = JSON.parse(mig.stdout) as { state: string; worker: string; disks: Record<string, string> };
  t.match(migrated, { state: 'migrated', worker: 'w1' }, 'migrated on w1');
  const disk = Object.values(migrated.disks)[0] ?? '';
  t.ok(disk.startsWith(`${target}/`) && existsSync(disk), `its disk is on the worker's storage now: ${disk}`);
  t.match((await httpGet(`http://${out.addresses.nic0}/`)).body, WEB_EXPECT, 'the guest still serves after the switch');

  const stopped = await request(api.app).post(`/api/v1/sessions/${out.session}/stop`).set('Authorization', api.auth.operator);
  t.equal(stopped.status, 200, JSON.stringify(stopped.body));
  t.ok(existsSync(disk), 'stop keeps the migrated disk (production storage now)');
  t.match(stopped.body, { id: out.session, state: 'stopped', worker: 'w1' }, 'stopped on its worker');
  t.match(w1.log(), new RegExp(`stop ${out.session}`), 'the stop ran on w1');
  t.match(
    (await sessionsJson(srv, env)).find((s) => s.session === out.session),
    { state: 'stopped', worker: 'w1' },
  );
  t.same(await leftovers(w1.stateDir, undefined, labName), [], 'nothing left on the worker: VM, lab, publication');
  const again = await request(api.app).post(`/api/v1/sessions/${out.session}/stop`).set('Authorization', api.auth.operator);
  t.match([again.status, again.body.state], [200, 'stopped'], 'stopping again changes nothing');
  const unknownStop = await request(api.app).post('/api/v1/sessions/ffff0000/stop').set('Authorization', api.auth.operator);
  t.equal(unknownStop.status, 404);

  // A stop for a session whose worker is gone is refused at once, not left queued for nobody.
  await stop(w1);
  t.match(
    (await workersJson(srv, env)).map((w) => w.name),
    [],
    'a stopped worker unregisters',
  );
  const cat = new SessionCatalog(await sharedCatalog(url));
  t.teardown(async () => (await sharedCatalog(url)).close());
  const running = { ...(await cat.get(out.session))!, id: 'dead0001', state: 'running' as const, updatedAt: new Date().toISOString() };
  await cat.record(running);
  const r2 = await cli(['--json', 'stop', 'dead0001'], srv, 60_000, env);
  t.equal(r2.code, 4, r2.stdout);
  t.match(r2.stdout, /SESSION_WORKER_GONE/);
  const r3 = await cli(['--json', 'stop', out.session], srv, 60_000, env);
  t.match(
    [r3.code, JSON.parse(r3.stdout)],
    [0, { state: 'stopped', worker: 'w1' }],
    'a stopped session is stopped whether its worker is there or not',
  );
});

t.test('two workers on one host recover web into the same lab: the second mirrors it onto its own masquerade subnet', async (t) => {
  const url = await freshDatabase(t);
  const dir = shortDir(t);
  const { repo } = await guestRepository(dir, ['web']);
  // One web VM (256 MiB) fills each worker's budget, so the second recovery goes to the other worker.
  const w1 = startWorker('w1', url, join(dir, 'w1'), ['--memory', '300']);
  const w2 = startWorker('w2', url, join(dir, 'w2'), ['--memory', '300', '--masquerade', subnet('workers/recover:pool')]);
  t.teardown(() => Promise.all([stop(w1), stop(w2)]));
  await until('both registered', () => w1.log().includes('waiting for tasks') && w2.log().includes('waiting for tasks'), 60_000);
  const srv = join(dir, 'srv');
  const env = { RESTORELAB_QUEUE: url };
  const labName = `rp${process.pid % 10000}`;
  const lab = labFile(dir, labName, subnet('workers/recover'));
  const recoverOne = async (): Promise<{ session: string; worker: string; addresses: Record<string, string> }> => {
    const r = await cli(['recover', 'web', '--repo', repo, '--lab', lab, '--run-on', 'workers', '--json'], srv, 600_000, env);
    t.equal(r.code, 0, `recover passed; stderr: ${r.stderr.slice(-1500)}\nw1: ${w1.log().slice(-800)}\nw2: ${w2.log().slice(-800)}`);
    const out = JSON.parse(r.stdout || '{}') as { session: string; worker: string; addresses: Record<string, string> };
    if (out.session) t.teardown(async () => void (await cli(['stop', out.session], srv, 120_000, env)));
    return out;
  };
  const first = await recoverOne();
  const second = await recoverOne();
  t.same([first.worker, second.worker].sort(), ['w1', 'w2'], 'each worker runs one');
  const byWorker = new Map([first, second].map((s) => [s.worker, s]));
  const pool = subnet('workers/recover:pool').replace(/\.0\/24$/, '.');
  t.equal(byWorker.get('w1')?.addresses['nic0'], address('workers/recover'), "w1 mirrors the lab on the lab file's subnet");
  t.ok(byWorker.get('w2')?.addresses['nic0']?.startsWith(pool), `w2 mirrors it on its own pool: ${byWorker.get('w2')?.addresses['nic0']}`);
  for (const s of [first, second])
    t.match((await httpGet(`http://${s.addresses['nic0']}/`)).body, WEB_EXPECT, `the guest on ${s.worker} answers at its address`);
  for (const s of [first, second]) {
    const r = await cli(['--json', 'stop', s.session], srv, 120_000, env);
    t.match([r.code, JSON.parse(r.stdout || '{}')], [0, { state: 'stopped', worker: s.worker }], `stopped on ${s.worker}`);
  }
  t.same(await leftovers(w1.stateDir, undefined, labName), [], 'nothing left on w1');
  t.same(await leftovers(w2.stateDir, undefined, labName), [], 'nothing left on w2');
});

t.test('a worker that comes back: its dead sessions are marked failed in the shared catalog, and rows without a record too', async (t) => {
  const url = await freshDatabase(t);
  const dir = shortDir(t);
  const wdir = join(dir, 'w1');
  const cat = new SessionCatalog(await sharedCatalog(url));
  const at = new Date().toISOString();
  const base = {
    vm: 'web',
    point: 'p1',
    repo: join(dir, 'repo'),
    driver: 'qemu' as const,
    state: 'running' as const,
    createdAt: at,
    updatedAt: at,
    addresses: {},
    disks: {},
    diskBytes: {},
    resources: { taps: [] },
    worker: 'w1',
  };
  // As a kill -9 of the worker and its session's supervisor leaves them: a running record whose supervisor is gone...
  const store = new SessionStore(wdir, undefined, url);
  store.save({ ...base, id: 'cafe0001', domain: 'web-cafe00', supervisorPid: 2 ** 22 + 1 });
  // ...and a row of a session whose record is gone with a wiped state directory.
  await cat.record({ ...base, id: 'cafe0002', domain: 'web-cafe01' });
  await flushSessionCatalog();
  t.same(
    (await cat.onWorkers('w1')).map((s) => [s.id, s.state]),
    [
      ['cafe0001', 'running'],
      ['cafe0002', 'running'],
    ],
  );
  const w1 = startWorker('w1', url, wdir);
  t.teardown(() => stop(w1));
  await until('w1 back', () => w1.log().includes('waiting for tasks'), 60_000);
  t.same(
    (await cat.onWorkers('w1')).map((s) => [s.id, s.state]),
    [
      ['cafe0001', 'failed'],
      ['cafe0002', 'failed'],
    ],
    `both are failed in the shared catalog: ${w1.log().slice(-600)}`,
  );
  const listed = await sessionsJson(join(dir, 'srv'), { RESTORELAB_QUEUE: url });
  t.same(
    listed.filter((s) => s.worker === 'w1').map((s) => s.state),
    ['failed', 'failed'],
    'and the server lists them so',
  );
  // A server whose PostgreSQL catalog is named in its config file only, with nothing in the environment.
  const configFile = join(dir, 'server.json');
  writeFileSync(configFile, JSON.stringify({ catalog: url }));
  const env = { ...process.env };
  for (const k of ['RESTORELAB_QUEUE', 'RESTORELAB_CATALOG', 'RESTORELAB_SESSIONS_CATALOG']) delete env[k];
  const byConfig = await exec(process.execPath, [projectPath('bin', 'restorelab.js'), '--config', configFile, 'sessions', '--json'], {
    timeoutMs: 60_000,
    env: { ...env, RESTORELAB_STATE_DIR: join(dir, 'srv2') },
  });
  t.equal(byConfig.code, 0, byConfig.stderr);
  t.same(
    (JSON.parse(byConfig.stdout) as { sessions: Listed[] }).sessions.filter((s) => s.worker === 'w1').map((s) => s.session),
    ['cafe0001', 'cafe0002'],
    "a catalog named in the config file only is the shared one: the workers' sessions are listed",
  );
});

// The storage routes (repositories, restore points, backups, restore) in
// process, against a real repository holding a backup of the `web` test
// guest: roles, validation, and each happy path through the same library
// calls the CLI makes, checked on disk (restored bytes, corrupted chunks).
import t, { type Test } from 'tap';
import request from 'supertest';
import { createHash } from 'node:crypto';
import {
  cpSync,
  createReadStream,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
  writeSync,
  closeSync,
} from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { guestRepository } from '../helpers/repository.js';
import { testApi, type TestApi } from '../helpers/api.js';
import { CHUNKS_DIR } from '../../src/repo/format.js';
import { initRepository } from '../../src/repo/repository.js';
import type { Operation } from '../../src/api/operations.js';

const work = mkdtempSync(join(tmpdir(), 'rl-api-storage-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));
const guest = await guestRepository(work);

async function api(t: Test, env: Record<string, string> = {}): Promise<TestApi> {
  // The test's images are the guest cache and its work directory, its restore targets and new repositories in the latter.
  const a = await testApi({ env, limits: { sourceRoots: [dirname(guest.image), work], restoreRoots: [work], repositoryRoots: [work] } });
  t.teardown(async () => {
    await a.close();
    rmSync(a.home, { recursive: true, force: true });
  });
  return a;
}

/** Waits for the operation a 202 answered with; checks the Location header on the way. */
async function finished(a: TestApi, res: request.Response): Promise<Operation> {
  if (res.status !== 202) throw new Error(`expected 202, got ${res.status}: ${JSON.stringify(res.body)}`);
  if (res.headers.location !== `/api/v1/operations/${res.body.id}`) throw new Error(`bad Location ${res.headers.location}`);
  const op = await a.ctx.operations.wait(res.body.id as string);
  if (!op) throw new Error('operation vanished');
  return op;
}

async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const c of createReadStream(path)) h.update(c as Buffer);
  return h.digest('hex');
}

/** Copies the guest repository, for tests that change it. */
function repoCopy(name: string): string {
  const dir = join(work, name);
  cpSync(guest.repo, dir, { recursive: true });
  return dir;
}

const TAGS = new Set(['repositories', 'points', 'backups', 'file-restore']);

t.test('every storage and file-restore route: 401 without a token, 403 below its role', async (t) => {
  const a = await api(t, { RESTORELAB_REPO: guest.repo });
  const routes = a.table.routes.filter((r) => TAGS.has(r.tag));
  t.equal(routes.length, 18, 'the routes of these modules (with POST /points/:id/scan)');
  const below = { viewer: undefined, operator: a.auth.viewer, admin: a.auth.operator } as const;
  for (const r of routes) {
    const path = `/api/v1${r.path.replace(/:\w+/g, 'x')}`;
    const anon = await request(a.app)[r.method](path);
    t.equal(anon.status, 401, `${r.method} ${r.path} without a token`);
    const low = below[r.role];
    if (low === undefined) continue;
    const res = await request(a.app)[r.method](path).set('authorization', low);
    t.equal(res.status, 403, `${r.method} ${r.path} below ${r.role}`);
    t.match(res.body.error.message, new RegExp(`needs ${r.role}`));
  }
  const roles = Object.fromEntries(routes.map((r) => [`${r.method} ${r.path}`, r.role]));
  t.match(roles, {
    'get /repositories': 'viewer',
    'post /repositories': 'admin',
    'post /repositories/:name/verify': 'operator',
    'post /repositories/:name/prune': 'admin',
    'post /repositories/:name/gc': 'admin',
    'get /points': 'viewer',
    'delete /points/:id': 'admin',
    'post /points/:id/restore': 'operator',
    'post /backups': 'operator',
    'post /file-restore': 'operator',
    'get /file-restore/:id/download': 'operator',
  });
});

t.test('bodies and queries: unknown fields and wrong types are 400 with the path', async (t) => {
  const a = await api(t, { RESTORELAB_REPO: guest.repo });
  const p = guest.point.id;
  const cases: { method: 'get' | 'post'; path: string; body?: unknown; message: RegExp; auth: string }[] = [
    {
      method: 'post',
      path: '/repositories',
      body: { path: '/tmp/x', bogus: 1 },
      message: /body: unknown property "bogus"/,
      auth: a.auth.admin,
    },
    {
      method: 'post',
      path: '/repositories',
      body: { path: 'relative/dir' },
      message: /body\/path: must match pattern/,
      auth: a.auth.admin,
    },
    {
      method: 'post',
      path: '/repositories',
      body: { path: '/tmp/x', chunkSize: '4M' },
      message: /body\/chunkSize: must be integer/,
      auth: a.auth.admin,
    },
    {
      method: 'post',
      path: '/repositories/default/verify',
      body: { point: 7 },
      message: /body\/point: must be string/,
      auth: a.auth.operator,
    },
    { method: 'post', path: '/repositories/default/verify', body: { all: true }, message: /unknown property "all"/, auth: a.auth.operator },
    {
      method: 'post',
      path: '/repositories/default/prune',
      body: { keepLast: -1 },
      message: /body\/keepLast: must be >= 0/,
      auth: a.auth.admin,
    },
    { method: 'post', path: '/repositories/default/prune', body: { keep: 3 }, message: /unknown property "keep"/, auth: a.auth.admin },
    {
      method: 'post',
      path: '/repositories/default/gc',
      body: { dryRun: 'yes' },
      message: /body\/dryRun: must be boolean/,
      auth: a.auth.admin,
    },
    { method: 'post', path: '/backups', body: {}, message: /required property 'vm'/, auth: a.auth.operator },
    { method: 'post', path: '/backups', body: { vm: '../../etc/passwd' }, message: /body\/vm: must match pattern/, auth: a.auth.operator },
    {
      method: 'post',
      path: '/backups',
      body: { vm: 'web', disks: { root: 'relative.raw' } },
      message: /body\/disks\/root: must match pattern/,
      auth: a.auth.operator,
    },
    {
      method: 'post',
      path: '/backups',
      body: { vm: 'web', consistency: 'perfect' },
      message: /body\/consistency: must be one of/,
      auth: a.auth.operator,
    },
    {
      method: 'post',
      path: `/points/${p}/restore`,
      body: { to: '/tmp/x.raw', format: 'vmdk' },
      message: /body\/format: must be one of/,
      auth: a.auth.operator,
    },
    { method: 'post', path: `/points/${p}/restore`, body: { to: 'x.raw' }, message: /body\/to: must match pattern/, auth: a.auth.operator },
    { method: 'post', path: `/points/${p}/restore`, body: { disk: 'root' }, message: /required property 'to'/, auth: a.auth.operator },
    { method: 'get', path: '/points?limit=1', message: /query: unknown property "limit"/, auth: a.auth.viewer },
    { method: 'get', path: '/repositories?x=1', message: /query: unknown parameter "x"/, auth: a.auth.viewer },
  ];
  for (const c of cases) {
    const req = request(a.app)[c.method](`/api/v1${c.path}`).set('authorization', c.auth);
    const res = c.body === undefined ? await req : await req.send(c.body as object);
    t.equal(res.status, 400, `${c.method} ${c.path} ${JSON.stringify(c.body)}`);
    t.equal(res.body.error?.code, 'VALIDATION_FAILED');
    t.match(res.body.error?.message, c.message);
  }
  t.same(a.ctx.operations.list(), [], 'no operation was started by a refused request');
});

t.test('repositories: the configured one with format and counts; create another; get by name', async (t) => {
  const a = await api(t, { RESTORELAB_REPO: guest.repo });
  const list = await request(a.app).get('/api/v1/repositories').set('authorization', a.auth.viewer).expect(200);
  t.equal(list.body.repositories.length, 1);
  t.match(list.body.repositories[0], {
    name: 'default',
    path: guest.repo,
    default: true,
    id: guest.repository.config.id,
    format: { version: 1, chunkSize: guest.repository.config.chunkSize, encryption: 'none', compression: 'zstd' },
    counts: { points: 1, vms: 1, damagedPoints: 0 },
    latestPoint: guest.point.id,
  });
  const one = await request(a.app).get('/api/v1/repositories/default').set('authorization', a.auth.viewer).expect(200);
  t.equal(one.body.id, guest.repository.config.id);
  const missing = await request(a.app).get('/api/v1/repositories/no-such-repo').set('authorization', a.auth.viewer).expect(404);
  t.equal(missing.body.error.code, 'NOT_FOUND');

  const dir = join(work, 'created-repo');
  const made = await request(a.app)
    .post('/api/v1/repositories')
    .set('authorization', a.auth.admin)
    .send({ path: dir, chunkSize: 1024 * 1024 })
    .expect(201);
  t.match(made.body, { path: dir, default: false, format: { chunkSize: 1024 * 1024 }, counts: { points: 0 } });
  t.equal(made.headers.location, `/api/v1/repositories/${made.body.id}`);
  t.ok(readFileSync(join(dir, 'config.json'), 'utf8').includes(made.body.id), 'a real repository on disk');
  const again = await request(a.app).get(`/api/v1/repositories/${made.body.id}`).set('authorization', a.auth.viewer).expect(200);
  t.equal(again.body.path, dir);
  t.equal((await request(a.app).get('/api/v1/repositories').set('authorization', a.auth.viewer)).body.repositories.length, 2);
  const twice = await request(a.app).post('/api/v1/repositories').set('authorization', a.auth.admin).send({ path: dir }).expect(400);
  t.equal(twice.body.error.code, 'REPO_NOT_EMPTY');
  const odd = await request(a.app)
    .post('/api/v1/repositories')
    .set('authorization', a.auth.admin)
    .send({ path: join(work, 'odd'), chunkSize: 300000 })
    .expect(400);
  t.match(odd.body.error.message, /chunk size/i);
  t.ok(
    a.logs.some((l) => l.msg === 'repository created' && l.by === 'test-admin'),
    'creation is logged with who did it',
  );
});

t.test('no repository configured: listed with the reason, and point routes say how to make one', async (t) => {
  const a = await api(t);
  const list = await request(a.app).get('/api/v1/repositories').set('authorization', a.auth.viewer).expect(200);
  t.match(list.body.repositories, [{ name: 'default', default: true, error: { code: 'REPO_NOT_FOUND' } }]);
  const points = await request(a.app).get('/api/v1/points').set('authorization', a.auth.viewer).expect(404);
  t.equal(points.body.error.code, 'REPO_NOT_FOUND');
  t.match(points.body.error.hint, /repo init/);
});

t.test('points: listed with their latest SureBackup verification, or null', async (t) => {
  const a = await api(t, { RESTORELAB_REPO: guest.repo });
  const empty = await request(a.app).get('/api/v1/points').set('authorization', a.auth.viewer).expect(200);
  t.match(empty.body, { repository: guest.repo, points: [{ id: guest.point.id, vm: 'web', verification: null, damaged: false }] });
  // Two runs verified the point; the newer verdict is the one shown.
  const h = a.ctx.runs;
  const vmResult = (result: 'success' | 'failed', startedAt: number) => ({
    name: 'web',
    point: guest.point.id,
    group: false,
    result,
    tests: [],
    startedAt,
    endedAt: startedAt + 5000,
    screenshot: result === 'success' ? '/state/shot.png' : null,
    bootToHeartbeatSeconds: 3,
    toFirstAnswerSeconds: 4,
    recoverySeconds: 5,
  });
  const old = await h.startRun('nightly', 'schedule', new Date(Date.UTC(2026, 10, 1)));
  await h.finishRun(old, { result: 'failed', vms: [vmResult('failed', Date.UTC(2026, 10, 1))], labKept: false });
  const recent = await h.startRun('nightly', 'manual', new Date(Date.UTC(2026, 10, 2)));
  await h.finishRun(recent, { result: 'success', vms: [vmResult('success', Date.UTC(2026, 10, 2))], labKept: false });
  const list = await request(a.app).get('/api/v1/points').set('authorization', a.auth.viewer).expect(200);
  t.same(list.body.points[0].verification, {
    run: recent,
    job: 'nightly',
    vm: 'web',
    result: 'success',
    at: '2026-11-02T00:00:00.000Z',
    recoverySeconds: 5,
    screenshot: true,
  });
  const byVm = await request(a.app).get('/api/v1/points?vm=web').set('authorization', a.auth.viewer).expect(200);
  t.equal(byVm.body.points.length, 1);
  const other = await request(a.app).get('/api/v1/points?vm=db').set('authorization', a.auth.viewer).expect(200);
  t.same(other.body.points, []);
  const one = await request(a.app).get(`/api/v1/points/${guest.point.id}`).set('authorization', a.auth.viewer).expect(200);
  t.match(one.body, {
    id: guest.point.id,
    vm: { name: 'web' },
    disks: [{ name: 'root', size: 64 * 1024 * 1024 }],
    verification: { run: recent },
  });
  const nope = await request(a.app).get('/api/v1/points/20260101T000000Z-deadbeef').set('authorization', a.auth.viewer).expect(404);
  t.equal(nope.body.error.code, 'POINT_NOT_FOUND');
});

t.test("restore: 202, progress, and the restored file has the guest image's bytes", async (t) => {
  const a = await api(t, { RESTORELAB_REPO: guest.repo });
  const to = join(work, 'restored.raw');
  const res = await request(a.app).post(`/api/v1/points/${guest.point.id}/restore`).set('authorization', a.auth.operator).send({ to });
  const op = await finished(a, res);
  t.equal(op.state, 'succeeded', JSON.stringify(op.error));
  t.match(op.result, { point: guest.point.id, disk: 'root', to, format: 'raw', size: 64 * 1024 * 1024 });
  t.equal(op.resource, `/api/v1/points/${guest.point.id}`);
  t.equal(await sha256File(to), await sha256File(guest.image), 'the bytes of the image that was backed up');
  const events: { type: string; fraction?: number }[] = [];
  a.ctx.operations.subscribe(op.id, (e) => events.push(e))();
  t.ok(events.filter((e) => e.type === 'progress').length >= 2, 'progress events');
  t.ok(events.length < 120, 'progress is thinned to whole percents');
  t.equal(op.by, 'test-operator');

  const noDisk = await request(a.app)
    .post(`/api/v1/points/${guest.point.id}/restore`)
    .set('authorization', a.auth.operator)
    .send({ to, disk: 'sdb' })
    .expect(404);
  t.match(noDisk.body.error.message, /has no disk sdb \(it has root\)/);
  const noPoint = await request(a.app)
    .post('/api/v1/points/20260101T000000Z-deadbeef/restore')
    .set('authorization', a.auth.operator)
    .send({ to })
    .expect(404);
  t.equal(noPoint.body.error.code, 'POINT_NOT_FOUND');
});

t.test('backup: a VM definition by name into a new point, with per-disk progress; bad requests refused before any work', async (t) => {
  const dir = repoCopy('backup-repo');
  const a = await api(t, { RESTORELAB_REPO: dir });
  const res = await request(a.app)
    .post('/api/v1/backups')
    .set('authorization', a.auth.operator)
    .send({ vm: 'web', disks: { root: guest.image } });
  t.equal(res.body.kind, 'backup');
  const op = await finished(a, res);
  t.equal(op.state, 'succeeded', JSON.stringify(op.error));
  const point = op.result as { id: string; vm: { name: string }; parent?: string; stats: { bytesRead: number; bytesNew: number } };
  t.match(point, { vm: { name: 'web' }, parent: guest.point.id });
  t.equal(point.stats.bytesNew, 0, 'the same image again: every chunk reused');
  t.equal(op.resource, `/api/v1/points/${point.id}`);
  const events: { type: string; fraction?: number; message?: string }[] = [];
  a.ctx.operations.subscribe(op.id, (e) => events.push(e))();
  const fractions = events.filter((e) => e.type === 'progress').map((e) => e.fraction ?? 0);
  t.ok(fractions.length >= 2 && fractions.every((f, i) => i === 0 || f >= (fractions[i - 1] ?? 0)), 'progress only goes forward');
  t.match(events.find((e) => e.type === 'progress')?.message, /^disk root: /);
  await request(a.app)
    .get(`/api/v1${op.resource?.slice('/api/v1'.length)}`)
    .set('authorization', a.auth.viewer)
    .expect(200);
  const list = await request(a.app).get('/api/v1/points').set('authorization', a.auth.viewer).expect(200);
  t.same(
    list.body.points.map((p: { id: string }) => p.id),
    [guest.point.id, point.id],
    'the catalog has the new point',
  );

  const refusals: [unknown, number, RegExp][] = [
    [{ vm: 'no-such-vm' }, 404, /no VM definition "no-such-vm".*there are: .*web/],
    [{ vm: 'web', disks: { sdz: guest.image } }, 400, /disk "sdz" is not in the definition/],
    [{ vm: 'web', disks: { root: join(work, 'missing.raw') } }, 404, /missing\.raw of disk root of VM web does not exist/],
  ];
  for (const [body, status, message] of refusals) {
    const r = await request(a.app)
      .post('/api/v1/backups')
      .set('authorization', a.auth.operator)
      .send(body as object);
    t.equal(r.status, status, JSON.stringify(body));
    t.match(r.body.error.message, message);
  }
  t.equal(a.ctx.operations.list().length, 1, 'only the good request started an operation');
});

t.test('verify: a sound repository passes; a flipped byte in a chunk fails the operation and marks the point damaged', async (t) => {
  const dir = repoCopy('verify-repo');
  const a = await api(t, { RESTORELAB_REPO: dir });
  const ok = await finished(a, await request(a.app).post('/api/v1/repositories/default/verify').set('authorization', a.auth.operator));
  t.equal(ok.state, 'succeeded', JSON.stringify(ok.error));
  t.match(ok.result, { ok: true, pointsChecked: 1, corrupt: [] });
  t.ok((ok.result as { chunksChecked: number }).chunksChecked > 0);
  t.equal(ok.resource, '/api/v1/repositories/default');
  const one = await finished(
    a,
    await request(a.app).post('/api/v1/repositories/default/verify').set('authorization', a.auth.operator).send({ point: guest.point.id }),
  );
  t.equal(one.state, 'succeeded');
  const unknown = await request(a.app)
    .post('/api/v1/repositories/default/verify')
    .set('authorization', a.auth.operator)
    .send({ point: '20260101T000000Z-deadbeef' })
    .expect(404);
  t.equal(unknown.body.error.code, 'POINT_NOT_FOUND');

  // Damage one stored chunk the point references.
  const chunks = join(dir, CHUNKS_DIR);
  const shard = readdirSync(chunks).find((s) => readdirSync(join(chunks, s)).length > 0);
  const victim = join(chunks, shard as string, readdirSync(join(chunks, shard as string))[0] as string);
  const bytes = readFileSync(victim);
  bytes[bytes.length - 1] = (bytes[bytes.length - 1] ?? 0) ^ 0xff;
  writeFileSync(victim, bytes);
  const bad = await finished(a, await request(a.app).post('/api/v1/repositories/default/verify').set('authorization', a.auth.operator));
  t.equal(bad.state, 'failed');
  t.match(bad.error, { code: 'REPOSITORY_CORRUPT', message: new RegExp(`damaged restore points: ${guest.point.id}`) });
  const events: { type: string; data?: unknown }[] = [];
  a.ctx.operations.subscribe(bad.id, (e) => events.push(e))();
  t.match(
    events.filter((e) => e.type === 'progress').at(-1)?.data,
    { ok: false, affectedPoints: [guest.point.id] },
    'the full report is in the last progress event',
  );
  const points = await request(a.app).get('/api/v1/points').set('authorization', a.auth.viewer).expect(200);
  t.equal(points.body.points[0].damaged, true, 'the catalog mirrors the damaged mark');
  const repo = await request(a.app).get('/api/v1/repositories/default').set('authorization', a.auth.viewer).expect(200);
  t.equal(repo.body.counts.damagedPoints, 1);
});

t.test('prune, forget one point, gc: admin operations over a repository with two points', async (t) => {
  const dir = repoCopy('prune-repo');
  const a = await api(t, { RESTORELAB_REPO: dir });
  const second = await finished(
    a,
    await request(a.app)
      .post('/api/v1/backups')
      .set('authorization', a.auth.operator)
      .send({ vm: 'web', disks: { root: guest.image } }),
  );
  const third = await finished(
    a,
    await request(a.app)
      .post('/api/v1/backups')
      .set('authorization', a.auth.operator)
      .send({ vm: 'web', disks: { root: guest.image } }),
  );
  const secondId = (second.result as { id: string }).id;
  const thirdId = (third.result as { id: string }).id;

  const noRule = await request(a.app).post('/api/v1/repositories/default/prune').set('authorization', a.auth.admin).send({}).expect(400);
  t.equal(noRule.body.error.code, 'PRUNE_POLICY');
  const dry = await finished(
    a,
    await request(a.app).post('/api/v1/repositories/default/prune').set('authorization', a.auth.admin).send({ keepLast: 2, dryRun: true }),
  );
  t.equal(dry.state, 'succeeded', JSON.stringify(dry.error));
  t.match(dry.result, { dryRun: true, removed: [{ id: guest.point.id }] });
  t.equal(
    (await request(a.app).get('/api/v1/points').set('authorization', a.auth.viewer)).body.points.length,
    3,
    'a dry run removes nothing',
  );
  const pruned = await finished(
    a,
    await request(a.app).post('/api/v1/repositories/default/prune').set('authorization', a.auth.admin).send({ keepLast: 2 }),
  );
  t.match(pruned.result, { dryRun: false, removed: [{ id: guest.point.id }], kept: [{ id: thirdId }, { id: secondId }] });
  const after = await request(a.app).get('/api/v1/points').set('authorization', a.auth.viewer).expect(200);
  t.same(
    after.body.points.map((p: { id: string }) => p.id),
    [secondId, thirdId],
  );

  const forgot = await request(a.app).delete(`/api/v1/points/${secondId}`).set('authorization', a.auth.admin).expect(200);
  t.match(forgot.body, { id: secondId, vm: 'web', removed: true });
  await request(a.app).get(`/api/v1/points/${secondId}`).set('authorization', a.auth.viewer).expect(404);
  t.same(
    (await request(a.app).get('/api/v1/points').set('authorization', a.auth.viewer)).body.points.map((p: { id: string }) => p.id),
    [thirdId],
  );
  await request(a.app).delete(`/api/v1/points/${secondId}`).set('authorization', a.auth.admin).expect(404);

  const gc = await finished(
    a,
    await request(a.app).post('/api/v1/repositories/default/gc').set('authorization', a.auth.admin).send({ dryRun: true }),
  );
  t.equal(gc.state, 'succeeded', JSON.stringify(gc.error));
  t.match(gc.result, { dryRun: true, chunksRemoved: 0 });
  t.ok((gc.result as { chunksReferenced: number }).chunksReferenced > 0, 'the remaining point still references its chunks');
  const real = await finished(a, await request(a.app).post('/api/v1/repositories/default/gc').set('authorization', a.auth.admin));
  t.equal(real.state, 'succeeded');
  t.match(real.result, { dryRun: false });
  // The remaining point still restores after prune, forget and gc.
  const to = join(work, 'after-gc.raw');
  const restored = await finished(
    a,
    await request(a.app).post(`/api/v1/points/${thirdId}/restore`).set('authorization', a.auth.operator).send({ to }),
  );
  t.equal(restored.state, 'succeeded', JSON.stringify(restored.error));
  t.equal(await sha256File(to), await sha256File(guest.image));
});

t.test('cancel: a backup and a restore stop at the next chunk and leave no point and no file behind', async (t) => {
  // 256 MiB of random bytes: 64 chunks that neither compress nor dedupe, so the work is still running when it is cancelled.
  const image = join(work, 'big.raw');
  const fd = openSync(image, 'w');
  for (let i = 0; i < 64; i++) writeSync(fd, randomBytes(4 * 1024 * 1024));
  closeSync(fd);
  const dir = join(work, 'cancel-repo');
  await initRepository(dir);
  const a = await api(t, { RESTORELAB_REPO: dir });
  /** Starts the operation and cancels it at its first progress event (subscribers run synchronously on each event). */
  const startAndCancel = async (res: request.Response): Promise<Operation> => {
    t.equal(res.status, 202);
    const id = res.body.id as string;
    let asked = false;
    const stop = a.ctx.operations.subscribe(id, (e) => {
      if (e.type === 'progress' && !asked) asked = a.ctx.operations.cancel(id);
    });
    const op = await a.ctx.operations.wait(id);
    stop();
    t.ok(asked, 'cancelled while running');
    return op as Operation;
  };

  const backup = await startAndCancel(
    await request(a.app)
      .post('/api/v1/backups')
      .set('authorization', a.auth.operator)
      .send({ vm: 'web', disks: { root: image } }),
  );
  t.equal(backup.state, 'cancelled');
  t.match(backup.error, { code: 'OPERATION_CANCELLED', message: /stopped at the next chunk: cancelled through the API/ });
  t.ok((backup.progress.fraction ?? 1) < 0.5, 'it stopped early');
  t.same((await request(a.app).get('/api/v1/points').set('authorization', a.auth.viewer).expect(200)).body.points, [], 'no restore point');
  t.same(readdirSync(join(dir, 'points')), [], 'no manifest');

  const done = await finished(
    a,
    await request(a.app)
      .post('/api/v1/backups')
      .set('authorization', a.auth.operator)
      .send({ vm: 'web', disks: { root: image } }),
  );
  t.equal(done.state, 'succeeded', JSON.stringify(done.error));
  const id = (done.result as { id: string }).id;
  const outDir = join(work, 'cancel-out');
  mkdirSync(outDir);
  const to = join(outDir, 'restored.raw');
  const restore = await startAndCancel(
    await request(a.app).post(`/api/v1/points/${id}/restore`).set('authorization', a.auth.operator).send({ to }),
  );
  t.equal(restore.state, 'cancelled');
  t.equal(restore.error?.code, 'OPERATION_CANCELLED');
  t.notOk(existsSync(to), 'no restored file');
  t.same(readdirSync(outDir), [], 'and no temp file');
});

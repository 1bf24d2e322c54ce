/**
 * What API roles may do to the host (docs/security.md, "API roles and the host"), in process: an
 * operator backs up only under api.sourceRoots, restores and migrates
 * session disks only under api.restoreRoots, mounts FUSE publications only
 * below api.mountRoots (a real mount here); an admin creates repositories
 * only under api.repositoryRoots or at the configured repository (a symlink
 * or `..` pointing out does not help anywhere); an admin's job may start
 * only scripts inside api.scriptsDir; a file the server was pointed at never
 * shows its bytes in an error, in the response or in /operations. The script
 * user itself is tested for real in test/verify/script-policy.test.ts.
 */
import t from 'tap';
import request from 'supertest';
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { exec } from '../../src/host/exec.js';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { guestRepository, type GuestRepository } from '../helpers/repository.js';
import { testApi } from '../helpers/api.js';
import { mountEntry } from '../../src/host/mounts.js';
import { subnet } from '../helpers/subnets.js';

const work = mkdtempSync(join(tmpdir(), 'rl-api-limits-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));
const outside = join(work, 'outside');
mkdirSync(outside);
writeFileSync(join(outside, 'victim.raw'), 'not for operators\n');

const SECRET = 'SECRET-h5-7c1e9b42';

/** One repository of the web guest for the tests that need a real point (`<work>/repo`). */
let guestMade: Promise<GuestRepository> | undefined;
const guest = (): Promise<GuestRepository> => (guestMade ??= guestRepository(work));

t.test('backup: image paths only under api.sourceRoots; the default root is <state>/sources', async (t) => {
  const a = await testApi();
  t.teardown(a.close);
  const root = join(a.config.stateDir, 'sources');
  t.same(a.config.api.sourceRoots, [root], 'the default');
  symlinkSync(join(outside, 'victim.raw'), join(root, 'link.raw'));
  symlinkSync(outside, join(root, 'linkdir'));
  const post = (path: string): request.Test =>
    request(a.app)
      .post('/api/v1/backups')
      .set('authorization', a.auth.operator)
      .send({ vm: 'web', disks: { root: path } });
  for (const path of [
    '/etc/shadow',
    join(outside, 'victim.raw'),
    join(root, 'link.raw'),
    join(root, 'linkdir', 'victim.raw'),
    `${root}/../../outside/victim.raw`,
  ]) {
    const r = await post(path).expect(403);
    t.equal(r.body.error.code, 'PATH_NOT_ALLOWED', path);
    t.match(r.body.error.message, `is outside the backup source directories (${root})`);
    t.match(r.body.error.hint, /api\.sourceRoots/, 'the hint names the config key');
  }
  // Inside the root the request gets past the limit (and then finds no such image).
  const inside = await post(join(root, 'missing.raw')).expect(404);
  t.match(inside.body.error.message, /missing\.raw of disk root of VM web does not exist/);
  t.equal(a.ctx.operations.list().length, 0, 'no backup started');
});

t.test('restore: targets only under api.restoreRoots, checked before anything is read', async (t) => {
  const a = await testApi();
  t.teardown(a.close);
  const root = join(a.config.stateDir, 'restores');
  t.same(a.config.api.restoreRoots, [root], 'the default');
  symlinkSync(outside, join(root, 'linkdir'));
  symlinkSync(join(outside, 'victim.raw'), join(root, 'victim.raw'));
  for (const to of [
    '/etc/passwd',
    '/root/new.raw',
    join(outside, 'victim.raw'),
    join(root, 'linkdir', 'new.raw'),
    join(root, 'victim.raw'),
    `${root}/../outside.raw`,
    `${root}/no-dir/../../x.raw`,
    `${root}/${relative(root, join(outside, 'new.raw'))}`,
  ]) {
    const r = await request(a.app)
      .post('/api/v1/points/20260101T000000Z-deadbeef/restore')
      .set('authorization', a.auth.operator)
      .send({ to })
      .expect(403);
    t.equal(r.body.error.code, 'PATH_NOT_ALLOWED', to);
    t.match(r.body.error.hint, /api\.restoreRoots/);
  }
  // A target inside the root passes the limit and reaches the point lookup.
  const inside = await request(a.app)
    .post('/api/v1/points/20260101T000000Z-deadbeef/restore')
    .set('authorization', a.auth.operator)
    .send({ to: join(root, 'sub', 'x.raw') });
  t.not(inside.status, 403, JSON.stringify(inside.body));
});

t.test("migrate: a session's disks go only under api.restoreRoots, checked before the session is looked up", async (t) => {
  const a = await testApi();
  t.teardown(a.close);
  const root = join(a.config.stateDir, 'restores');
  symlinkSync(outside, join(root, 'linkdir'));
  const post = (dir: string): request.Test =>
    request(a.app).post('/api/v1/sessions/abcdef12/migrate').set('authorization', a.auth.operator).send({ dir });
  for (const dir of [
    '/etc',
    '/root/prod',
    outside,
    join(root, 'linkdir'),
    join(root, 'linkdir', 'prod'),
    `${root}/../prod`,
    `${root}/${relative(root, outside)}`,
  ]) {
    const r = await post(dir).expect(403);
    t.equal(r.body.error.code, 'PATH_NOT_ALLOWED', dir);
    t.match(r.body.error.message, `migration target ${dir} is outside the restore target directories (${root})`);
    t.match(r.body.error.hint, /api\.restoreRoots/);
  }
  // Inside the root (the root itself too) the request passes the limit and finds no such session.
  for (const dir of [root, join(root, 'prod')]) {
    const inside = await post(dir).expect(404);
    t.match(inside.body.error.message, /no recovery session abcdef12/, dir);
  }
  t.same(readdirSync(outside).sort(), ['victim.raw'], 'nothing was written outside');
  t.equal(a.ctx.operations.list().length, 0, 'no migration started');
});

t.test('publications: FUSE mounts only below api.mountRoots, on the real path', async (t) => {
  const g = await guest();
  const a = await testApi({ env: { RESTORELAB_REPO: g.repo } });
  t.teardown(a.close);
  const root = join(a.config.stateDir, 'mnt');
  t.same(a.config.api.mountRoots, [root], 'the default');
  symlinkSync(outside, join(root, 'linkdir'));
  const post = (fuse: string): request.Test =>
    request(a.app).post('/api/v1/publications').set('authorization', a.auth.operator).send({ point: g.point.id, readOnly: true, fuse });
  for (const dir of [
    '/etc',
    '/usr/lib',
    outside,
    join(root, 'linkdir'),
    join(root, 'linkdir', 'pub'),
    `${root}/../mnt-next-door`,
    `${root}/${relative(root, join(outside, 'pub'))}`,
  ]) {
    const r = await post(dir).expect(403);
    t.equal(r.body.error.code, 'PATH_NOT_ALLOWED', dir);
    t.match(r.body.error.message, `FUSE mount directory ${dir} is outside the FUSE mount directories (${root})`);
    t.match(r.body.error.hint, /api\.mountRoots/);
  }
  // The root itself is refused: a mount there would hide every mount point below it.
  for (const dir of [root, `${root}/`]) {
    const r = await post(dir).expect(403);
    t.equal(r.body.error.code, 'PATH_NOT_ALLOWED', dir);
    t.match(r.body.error.message, /a mount goes in a directory below one, not on it/);
  }
  t.equal(a.ctx.operations.list().length, 0, 'nothing was started');
  t.equal(mountEntry(outside), undefined, 'nothing is mounted outside');

  // Inside, through a symlink that stays inside: mounted on the real directory.
  mkdirSync(join(root, 'real'));
  symlinkSync(join(root, 'real'), join(root, 'alias'));
  const started = await post(join(root, 'alias', 'pub')).expect(202);
  const op = await a.ctx.operations.wait(started.body.id as string);
  t.equal(op?.state, 'succeeded', op?.error ? JSON.stringify(op.error) : 'published');
  const pub = op?.result as { id: string; name: string; path: string; disks: Record<string, string> };
  t.teardown(() => request(a.app).delete(`/api/v1/publications/${pub.id}?discard=true`).set('authorization', a.auth.operator));
  const real = join(root, 'real', 'pub');
  t.equal(pub.path, join(real, pub.name), 'the real path is what was mounted');
  t.ok(mountEntry(real), `a FUSE mount at ${real}`);
  t.ok(
    Object.values(pub.disks).every((d) => d.startsWith(`${real}/`)),
    'its disks are there',
  );
  await request(a.app).delete(`/api/v1/publications/${pub.id}?discard=true`).set('authorization', a.auth.operator).expect(200);
  t.equal(mountEntry(real), undefined, 'unmounted');
});

t.test('publications over NBD: {nbd: true} serves the point on its own 0600 socket; with fuse it is refused', async (t) => {
  const g = await guest();
  const a = await testApi({ env: { RESTORELAB_REPO: g.repo } });
  t.teardown(a.close);
  const both = await request(a.app)
    .post('/api/v1/publications')
    .set('authorization', a.auth.operator)
    .send({ point: g.point.id, nbd: true, fuse: join(a.config.stateDir, 'mnt', 'x') })
    .expect(400);
  t.equal(both.body.error.code, 'PUBLISH_NBD_ALONE');
  const started = await request(a.app)
    .post('/api/v1/publications')
    .set('authorization', a.auth.operator)
    .send({ point: g.point.id, nbd: true })
    .expect(202);
  const op = await a.ctx.operations.wait(started.body.id as string);
  t.equal(op?.state, 'succeeded', op?.error ? JSON.stringify(op.error) : 'published');
  const pub = op?.result as { id: string; frontend: string; nbd: Record<string, string>; nbdSocket: string };
  t.teardown(() => request(a.app).delete(`/api/v1/publications/${pub.id}?discard=true`).set('authorization', a.auth.operator));
  t.equal(pub.frontend, 'nbd');
  t.same(pub.nbd, { root: `nbd+unix:///root?socket=${pub.nbdSocket}` });
  t.equal(statSync(pub.nbdSocket).mode & 0o777, 0o600, "the socket is the server user's alone");
  // qemu-img in a child process: this process serves the export.
  const cmp = await exec('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', pub.nbd.root!, g.image], { timeoutMs: 120_000 });
  t.equal(cmp.code, 0, `qemu-img compare: ${cmp.stdout.trim()} ${cmp.stderr}`);
  await request(a.app).delete(`/api/v1/publications/${pub.id}?discard=true`).set('authorization', a.auth.operator).expect(200);
  t.notOk(existsSync(pub.nbdSocket), 'DELETE removes the socket');
});

t.test('repositories: created only under api.repositoryRoots or at the configured repository', async (t) => {
  const home = mkdtempSync(join(tmpdir(), 'rl-api-repos-'));
  const configured = join(home, 'var', 'repo');
  const a = await testApi({ home, env: { RESTORELAB_REPO: configured } });
  t.teardown(async () => {
    await a.close();
    rmSync(home, { recursive: true, force: true });
  });
  const root = join(a.config.stateDir, 'repositories');
  t.same(a.config.api.repositoryRoots, [root], 'the default');
  symlinkSync(outside, join(root, 'linkdir'));
  const post = (path: string): request.Test =>
    request(a.app).post('/api/v1/repositories').set('authorization', a.auth.admin).send({ path });
  for (const path of [
    '/etc/restorelab-repo',
    join(outside, 'repo'),
    join(root, 'linkdir'),
    join(root, 'linkdir', 'repo'),
    `${root}/../repo`,
    `${root}/${relative(root, join(outside, 'repo2'))}`,
    join(configured, 'inner'),
    join(home, 'var'),
  ]) {
    const r = await post(path).expect(403);
    t.equal(r.body.error.code, 'PATH_NOT_ALLOWED', path);
    t.match(r.body.error.message, `repository directory ${path} is outside the repository directories (${root})`);
    t.match(r.body.error.hint, /api\.repositoryRoots/);
  }
  t.same(readdirSync(outside).sort(), ['victim.raw'], 'nothing was made outside');
  t.notOk(existsSync(configured), 'nor anywhere else');

  const made = await post(join(root, 'second')).expect(201);
  t.match(made.body, { path: join(root, 'second'), default: false });
  t.ok(existsSync(join(root, 'second', 'config.json')), 'a repository inside the root');
  // The configured repository, not made yet, may be created over the API.
  const def = await post(configured).expect(201);
  t.match(def.body, { name: 'default', path: configured, default: true });
});

t.test('a broken repository config.json: the error names the file and the spot, never its bytes', async (t) => {
  const home = mkdtempSync(join(tmpdir(), 'rl-api-repocfg-'));
  const a = await testApi({ home, env: { RESTORELAB_REPO: join(home, 'var', 'repo') } });
  t.teardown(async () => {
    await a.close();
    rmSync(home, { recursive: true, force: true });
  });
  const dir = join(a.config.stateDir, 'repositories', 'r');
  await request(a.app).post('/api/v1/repositories').set('authorization', a.auth.admin).send({ path: dir }).expect(201);
  const file = join(dir, 'config.json');
  const original = readFileSync(file, 'utf8');
  const listed = async (): Promise<{ code: string; message: string }> => {
    const r = await request(a.app).get('/api/v1/repositories').set('authorization', a.auth.viewer).expect(200);
    t.notMatch(JSON.stringify(r.body), SECRET, "the file's bytes are not in the list");
    return (r.body.repositories as Array<{ path: string; error: { code: string; message: string } }>).find((x) => x.path === dir)!.error;
  };
  writeFileSync(file, `{"format": "restorelab-repository",\n "key": ${SECRET}}\n`);
  t.match(await listed(), {
    code: 'REPO_CONFIG_CORRUPT',
    message: `repository config ${file} is not valid JSON: unexpected character at line 2, column 9`,
  });
  writeFileSync(file, JSON.stringify({ ...JSON.parse(original), format: SECRET }));
  t.match(await listed(), {
    code: 'NOT_A_REPOSITORY',
    message: `${dir} is not a restorelab repository (${file} does not have format "restorelab-repository")`,
  });
  writeFileSync(file, JSON.stringify([SECRET]));
  t.match(await listed(), { code: 'NOT_A_REPOSITORY', message: `${dir} is not a restorelab repository (${file} holds no JSON object)` });
});

t.test("jobs: an admin's job may only start scripts inside api.scriptsDir", async (t) => {
  const a = await testApi();
  t.teardown(a.close);
  const scripts = a.config.api.scriptsDir;
  t.equal(scripts, join(a.config.stateDir, 'scripts'), 'the default');
  writeFileSync(join(scripts, 'check.sh'), '#!/bin/sh\nexit 0\n', { mode: 0o755 });
  symlinkSync('/bin/sh', join(scripts, 'sh'));
  const evil = join(outside, 'evil.sh');
  writeFileSync(evil, '#!/bin/sh\nexit 0\n');
  chmodSync(evil, 0o755);
  const job = (path: string, args?: string[]): Record<string, unknown> => ({
    name: 'j',
    lab: {
      name: 'l',
      networks: [{ name: 'prod', subnet: '192.168.77.0/24', gateway: '192.168.77.1', masquerade: subnet('api/host-limits') }],
    },
    verify: { vms: ['web'], role: 'web', tests: [{ kind: 'script', path, ...(args ? { args } : {}) }] },
  });
  const put = (body: Record<string, unknown>): request.Test =>
    request(a.app).put('/api/v1/jobs/j').set('authorization', a.auth.admin).send(body);
  for (const [path, args] of [
    ['/bin/sh', ['-c', 'id > /tmp/pwned']],
    [evil],
    [join(scripts, 'sh'), ['-c', 'id']],
    [`${scripts}/${relative(scripts, evil)}`],
  ] as const) {
    const r = await put(job(path, args ? [...args] : undefined)).expect(403);
    t.equal(r.body.error.code, 'SCRIPT_NOT_ALLOWED', path);
    t.match(r.body.error.message, `is outside the scripts directory ${scripts}`);
    t.match(r.body.error.hint, /api\.scriptsDir/);
  }
  t.same(
    (await request(a.app).get('/api/v1/jobs').set('authorization', a.auth.viewer).expect(200)).body,
    { jobs: [] },
    'no refused job was written',
  );
  const ok = await put(job(join(scripts, 'check.sh'))).expect(201);
  t.equal(ok.body.definition.verify.tests[0].path, join(scripts, 'check.sh'));
});

t.test('a malformed lab or job file: the error names the file and the spot, never its bytes', async (t) => {
  const g = await guest();
  const labsDir = join(work, 'labs');
  mkdirSync(labsDir);
  writeFileSync(join(labsDir, 'broken.json'), `{"name": "x", "password": ${SECRET}}\n`);
  const before = process.env.RESTORELAB_LABS_DIR;
  process.env.RESTORELAB_LABS_DIR = labsDir;
  t.teardown(() => {
    if (before === undefined) delete process.env.RESTORELAB_LABS_DIR;
    else process.env.RESTORELAB_LABS_DIR = before;
  });
  const a = await testApi({ env: { RESTORELAB_REPO: g.repo } });
  t.teardown(a.close);

  // A file the admin names as the job's lab, as if it were /etc/shadow.
  const shadow = join(outside, 'shadow');
  writeFileSync(shadow, `root:${SECRET}:19000:0:99999:7:::\n`);
  await request(a.app)
    .put('/api/v1/jobs/leak')
    .set('authorization', a.auth.admin)
    .send({ name: 'leak', lab: shadow, verify: { vms: ['web'], role: 'web' } })
    .expect(201);
  const run = await request(a.app).post('/api/v1/jobs/leak/run').set('authorization', a.auth.operator).expect(202);
  const op = await a.ctx.operations.wait(run.body.id as string);
  t.equal(op?.state, 'failed');
  t.match(op?.error, {
    code: 'JSON_INVALID',
    message: `lab definition ${shadow} is not valid JSON: unexpected character at line 1, column 1`,
  });
  const ops = await request(a.app).get('/api/v1/operations').set('authorization', a.auth.viewer).expect(200);
  t.match(JSON.stringify(ops.body), /not valid JSON/, 'the failure is listed');
  t.notMatch(JSON.stringify(ops.body), SECRET, "but not the file's bytes");
  const runs = await request(a.app).get('/api/v1/runs').set('authorization', a.auth.viewer).expect(200);
  t.notMatch(JSON.stringify(runs.body), SECRET, 'nor in the run history');

  // Invalid files in the directories the server lists.
  writeFileSync(join(a.ctx.jobsDir, 'bad.json'), `{"name": "bad",\n  "token": ${SECRET}\n}\n`);
  const jobs = await request(a.app).get('/api/v1/jobs').set('authorization', a.auth.viewer).expect(200);
  t.match(jobs.body.invalid, [
    { file: join(a.ctx.jobsDir, 'bad.json'), error: /is not valid JSON: unexpected character at line 2, column 12/ },
  ]);
  t.notMatch(JSON.stringify(jobs.body), SECRET);
  const labs = await request(a.app).get('/api/v1/labs').set('authorization', a.auth.viewer).expect(200);
  t.match(labs.body.invalidTemplates, [
    { file: join(labsDir, 'broken.json'), error: /is not valid JSON: unexpected character at line 1, column 27/ },
  ]);
  t.notMatch(JSON.stringify(labs.body), SECRET);
});

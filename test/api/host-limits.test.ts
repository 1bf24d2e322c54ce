/**
 * What API roles may do to the host (docs/security-h5.md), in process: an
 * operator backs up only under api.sourceRoots and restores only under
 * api.restoreRoots (a symlink or `..` pointing out does not help); an admin's
 * job may start only scripts inside api.scriptsDir; a file the server was
 * pointed at never shows its bytes in an error, in the response or in
 * /operations. The script user itself is tested for real in
 * test/verify/script-policy.test.ts.
 */
import t from 'tap';
import request from 'supertest';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { guestRepository } from '../helpers/repository.js';
import { testApi } from '../helpers/api.js';

const work = mkdtempSync(join(tmpdir(), 'rl-api-limits-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));
const outside = join(work, 'outside');
mkdirSync(outside);
writeFileSync(join(outside, 'victim.raw'), 'not for operators\n');

const SECRET = 'SECRET-h5-7c1e9b42';

t.test('backup: image paths only under api.sourceRoots; the default root is <state>/sources', async (t) => {
  const a = await testApi();
  t.teardown(a.close);
  const root = join(a.config.stateDir, 'sources');
  t.same(a.config.api.sourceRoots, [root], 'the default');
  symlinkSync(join(outside, 'victim.raw'), join(root, 'link.raw'));
  symlinkSync(outside, join(root, 'linkdir'));
  const post = (path: string): request.Test => request(a.app).post('/api/v1/backups').set('authorization', a.auth.operator).send({ vm: 'web', disks: { root: path } });
  for (const path of ['/etc/shadow', join(outside, 'victim.raw'), join(root, 'link.raw'), join(root, 'linkdir', 'victim.raw'), `${root}/../../outside/victim.raw`]) {
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
  for (const to of ['/etc/passwd', '/root/new.raw', join(outside, 'victim.raw'), join(root, 'linkdir', 'new.raw'), join(root, 'victim.raw'), `${root}/../outside.raw`, `${root}/no-dir/../../x.raw`, `${root}/${relative(root, join(outside, 'new.raw'))}`]) {
    const r = await request(a.app).post('/api/v1/points/20260101T000000Z-deadbeef/restore').set('authorization', a.auth.operator).send({ to }).expect(403);
    t.equal(r.body.error.code, 'PATH_NOT_ALLOWED', to);
    t.match(r.body.error.hint, /api\.restoreRoots/);
  }
  // A target inside the root passes the limit and reaches the point lookup.
  const inside = await request(a.app).post('/api/v1/points/20260101T000000Z-deadbeef/restore').set('authorization', a.auth.operator).send({ to: join(root, 'sub', 'x.raw') });
  t.not(inside.status, 403, JSON.stringify(inside.body));
});

t.test('jobs: an admin\'s job may only start scripts inside api.scriptsDir', async (t) => {
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
    lab: { name: 'l', networks: [{ name: 'prod', subnet: '192.168.77.0/24', gateway: '192.168.77.1', masquerade: '172.18.92.0/24' }] },
    verify: { vms: ['web'], role: 'web', tests: [{ kind: 'script', path, ...(args ? { args } : {}) }] },
  });
  const put = (body: Record<string, unknown>): request.Test => request(a.app).put('/api/v1/jobs/j').set('authorization', a.auth.admin).send(body);
  for (const [path, args] of [['/bin/sh', ['-c', 'id > /tmp/pwned']], [evil], [join(scripts, 'sh'), ['-c', 'id']], [`${scripts}/${relative(scripts, evil)}`]] as const) {
    const r = await put(job(path, args ? [...args] : undefined)).expect(403);
    t.equal(r.body.error.code, 'SCRIPT_NOT_ALLOWED', path);
    t.match(r.body.error.message, `is outside the scripts directory ${scripts}`);
    t.match(r.body.error.hint, /api\.scriptsDir/);
  }
  t.same((await request(a.app).get('/api/v1/jobs').set('authorization', a.auth.viewer).expect(200)).body, { jobs: [] }, 'no refused job was written');
  const ok = await put(job(join(scripts, 'check.sh'))).expect(201);
  t.equal(ok.body.definition.verify.tests[0].path, join(scripts, 'check.sh'));
});

t.test('a malformed lab or job file: the error names the file and the spot, never its bytes', async (t) => {
  const guest = await guestRepository(work);
  const labsDir = join(work, 'labs');
  mkdirSync(labsDir);
  writeFileSync(join(labsDir, 'broken.json'), `{"name": "x", "password": ${SECRET}}\n`);
  const before = process.env.RESTORELAB_LABS_DIR;
  process.env.RESTORELAB_LABS_DIR = labsDir;
  t.teardown(() => { if (before === undefined) delete process.env.RESTORELAB_LABS_DIR; else process.env.RESTORELAB_LABS_DIR = before; });
  const a = await testApi({ env: { RESTORELAB_REPO: guest.repo } });
  t.teardown(a.close);

  // A file the admin names as the job's lab, as if it were /etc/shadow.
  const shadow = join(outside, 'shadow');
  writeFileSync(shadow, `root:${SECRET}:19000:0:99999:7:::\n`);
  await request(a.app).put('/api/v1/jobs/leak').set('authorization', a.auth.admin)
    .send({ name: 'leak', lab: shadow, verify: { vms: ['web'], role: 'web' } }).expect(201);
  const run = await request(a.app).post('/api/v1/jobs/leak/run').set('authorization', a.auth.operator).expect(202);
  const op = await a.ctx.operations.wait(run.body.id as string);
  t.equal(op?.state, 'failed');
  t.match(op?.error, { code: 'JSON_INVALID', message: `lab definition ${shadow} is not valid JSON: unexpected character at line 1, column 1` });
  const ops = await request(a.app).get('/api/v1/operations').set('authorization', a.auth.viewer).expect(200);
  t.match(JSON.stringify(ops.body), /not valid JSON/, 'the failure is listed');
  t.notMatch(JSON.stringify(ops.body), SECRET, 'but not the file\'s bytes');
  const runs = await request(a.app).get('/api/v1/runs').set('authorization', a.auth.viewer).expect(200);
  t.notMatch(JSON.stringify(runs.body), SECRET, 'nor in the run history');

  // Invalid files in the directories the server lists.
  writeFileSync(join(a.ctx.jobsDir, 'bad.json'), `{"name": "bad",\n  "token": ${SECRET}\n}\n`);
  const jobs = await request(a.app).get('/api/v1/jobs').set('authorization', a.auth.viewer).expect(200);
  t.match(jobs.body.invalid, [{ file: join(a.ctx.jobsDir, 'bad.json'), error: /is not valid JSON: unexpected character at line 2, column 12/ }]);
  t.notMatch(JSON.stringify(jobs.body), SECRET);
  const labs = await request(a.app).get('/api/v1/labs').set('authorization', a.auth.viewer).expect(200);
  t.match(labs.body.invalidTemplates, [{ file: join(labsDir, 'broken.json'), error: /is not valid JSON: unexpected character at line 1, column 27/ }]);
  t.notMatch(JSON.stringify(labs.body), SECRET);
});

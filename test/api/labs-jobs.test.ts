/**
 * /api/v1/labs, /api/v1/jobs and /api/v1/runs for real: a lab template of
 * this file's own brought up and down; a job written through the API, run
 * against a real repository of the `web` guest (TCG) with its run, report and
 * screenshot read back; a second run cancelled through the operation; and
 * auth and validation of every route.
 */
import t from 'tap';
import request from 'supertest';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { readLabState } from '../../src/lab/lab.js';
import { binary, isPng, labApi, settled } from './fixtures/lab-api.js';
import { leftovers } from '../surebackup/fixtures/guest-lab.js';
import { subnet } from '../helpers/subnets.js';

const fx = labApi(t, { prefix: 'aj', masquerade: subnet('api/labs-jobs:template') });

type Verb = 'get' | 'post' | 'put' | 'delete';
const call = (app: unknown, m: Verb, p: string): request.Test =>
  (request(app as never) as unknown as Record<Verb, (p: string) => request.Test>)[m](`/api/v1${p}`);

function jobBody(name: string, lab: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    name,
    lab: {
      name: lab,
      networks: [{ name: 'prod', subnet: '192.168.77.0/24', gateway: '192.168.77.1', masquerade: subnet('api/labs-jobs:job') }],
    },
    verify: { vms: ['web'], role: 'web' },
    ...extra,
  };
}

t.test('auth: 401 without a token; viewer reads, operator runs, admin writes jobs', async (t) => {
  const { api } = await fx;
  const routes: [Verb, string][] = [
    ['get', '/labs'],
    ['post', '/labs/x/up'],
    ['post', '/labs/x/down'],
    ['get', '/jobs'],
    ['get', '/jobs/x'],
    ['put', '/jobs/x'],
    ['delete', '/jobs/x'],
    ['post', '/jobs/x/run'],
    ['get', '/runs'],
    ['get', '/runs/x'],
    ['get', '/runs/x/report'],
    ['get', '/runs/x/vms/web/screenshot'],
  ];
  for (const [m, p] of routes) t.equal((await call(api.app, m, p)).status, 401, `${m} ${p}`);
  for (const [m, p, role, needs] of [
    ['post', '/labs/x/up', 'viewer', 'operator'],
    ['post', '/labs/x/down', 'viewer', 'operator'],
    ['post', '/jobs/x/run', 'viewer', 'operator'],
    ['put', '/jobs/x', 'operator', 'admin'],
    ['delete', '/jobs/x', 'operator', 'admin'],
  ] as const) {
    const res = await call(api.app, m, p).set('authorization', api.auth[role]).send(jobBody('x', 'l'));
    t.equal(res.status, 403, `${m} ${p} as ${role}`);
    t.match(res.body.error.message, new RegExp(`needs ${needs}`));
  }
});

t.test('labs: listed from the templates, up, 409 when up, down, idempotent down', async (t) => {
  const { api, lab } = await fx;
  const list = await call(api.app, 'get', '/labs').set('authorization', api.auth.viewer).expect(200);
  const mine = list.body.labs.find((l: { name: string }) => l.name === lab);
  t.ok(mine, 'the template is listed');
  t.equal(mine.up, false);
  t.equal(mine.state, null);
  t.equal(mine.template.definition.networks[0].masquerade, subnet('api/labs-jobs:template'));

  await call(api.app, 'post', '/labs/no-such-lab/up').set('authorization', api.auth.operator).expect(404);
  const bad = await call(api.app, 'post', '/labs/a..b/up').set('authorization', api.auth.operator).expect(400);
  t.match(bad.body.error.message, /params\/name/);

  const up = await call(api.app, 'post', `/labs/${lab}/up`).set('authorization', api.auth.operator).expect(200);
  t.equal(up.body.name, lab);
  t.equal(up.body.ready, true);
  t.ok(
    (await call(api.app, 'get', '/labs').set('authorization', api.auth.viewer)).body.labs.find(
      (l: { name: string; up: boolean }) => l.name === lab && l.up,
    ),
    'listed as up',
  );
  const again = await call(api.app, 'post', `/labs/${lab}/up`).set('authorization', api.auth.operator).expect(409);
  t.match(again.body.error.message, /already up/);
  const netns = readLabState(api.config.stateDir, lab)?.netns;
  t.ok(netns);

  const down = await call(api.app, 'post', `/labs/${lab}/down`).set('authorization', api.auth.operator).expect(200);
  t.same(down.body, { name: lab, removed: true });
  t.equal(readLabState(api.config.stateDir, lab), undefined);
  t.notOk(readFileSync('/proc/net/dev', 'utf8').includes(up.body.hostVeth), 'the uplink is gone');
  const twice = await call(api.app, 'post', `/labs/${lab}/down`).set('authorization', api.auth.operator).expect(200);
  t.same(twice.body, { name: lab, removed: false });
});

t.test('jobs: validation, create, replace, list with an invalid file beside', async (t) => {
  const { api, lab } = await fx;
  const admin = api.auth.admin;
  t.same((await call(api.app, 'get', '/jobs').set('authorization', api.auth.viewer).expect(200)).body, { jobs: [] });
  const cases: [Record<string, unknown>, string, RegExp][] = [
    [{ ...jobBody('j1', lab), colour: 'red' }, 'VALIDATION_FAILED', /colour/],
    [jobBody('j1', lab, { concurrency: 'three' }), 'VALIDATION_FAILED', /body\/concurrency/],
    [jobBody('j1', lab, { verify: { vms: 'some' } }), 'VALIDATION_FAILED', /body\/verify\/vms/],
    [jobBody('other', lab), 'VALIDATION_FAILED', /body\/name/],
    [jobBody('j1', lab, { schedule: '0 25 * * *' }), 'BAD_SCHEDULE', /schedule/],
    [jobBody('j1', lab, { verify: { vms: ['web'], tests: [{ kind: 'script', path: 'missing.sh' }] } }), 'SCRIPT_NOT_FOUND', /missing\.sh/],
  ];
  for (const [body, code, msg] of cases) {
    const res = await call(api.app, 'put', '/jobs/j1').set('authorization', admin).send(body);
    t.equal(res.status, 400, `${code}: 400`);
    t.equal(res.body.error.code, code);
    t.match(res.body.error.message, msg, res.body.error.message);
  }
  await call(api.app, 'put', '/jobs/.hidden').set('authorization', admin).send(jobBody('.hidden', lab)).expect(400);
  const malformed = await call(api.app, 'put', '/jobs/j1')
    .set('authorization', admin)
    .set('content-type', 'application/json')
    .send('{"name": ')
    .expect(400);
  t.equal(malformed.body.error.code, 'MALFORMED_JSON');
  t.notOk(existsSync(join(api.ctx.jobsDir, 'j1.json')), 'nothing was written');

  const created = await call(api.app, 'put', '/jobs/j1')
    .set('authorization', admin)
    .send(jobBody('j1', lab, { schedule: '0 3 * * *' }))
    .expect(201);
  t.equal(created.body.name, 'j1');
  t.equal(created.body.schedule, '0 3 * * *');
  t.equal(created.body.next.length, 3);
  t.equal(created.body.lastRun, null);
  t.equal(JSON.parse(readFileSync(join(api.ctx.jobsDir, 'j1.json'), 'utf8')).schedule, '0 3 * * *', 'the file the scheduler reads');
  const replaced = await call(api.app, 'put', '/jobs/j1').set('authorization', admin).send(jobBody('j1', lab)).expect(200);
  t.equal(replaced.body.schedule, null);
  writeFileSync(join(api.ctx.jobsDir, 'broken.json'), '{"name": "broken"}');
  const list = await call(api.app, 'get', '/jobs').set('authorization', api.auth.viewer).expect(200);
  t.same(
    list.body.jobs.map((j: { name: string }) => j.name),
    ['j1'],
  );
  t.equal(list.body.invalid.length, 1);
  t.match(list.body.invalid[0].file, /broken\.json$/);
  const one = await call(api.app, 'get', '/jobs/j1').set('authorization', api.auth.viewer).expect(200);
  t.same(one.body.definition.verify, { vms: ['web'], role: 'web' });
  await call(api.app, 'get', '/jobs/nosuch').set('authorization', api.auth.viewer).expect(404);
  await call(api.app, 'post', '/jobs/nosuch/run').set('authorization', api.auth.operator).expect(404);
  const del = await call(api.app, 'delete', '/jobs/broken').set('authorization', admin).expect(200);
  t.same(del.body, { name: 'broken', deleted: true });
  await call(api.app, 'delete', '/jobs/broken').set('authorization', admin).expect(404);
});

t.test('run a job: 202, the run, its report and screenshot; runs listing and its query', async (t) => {
  const { api, lab } = await fx;
  await call(api.app, 'put', '/jobs/webcheck')
    .set('authorization', api.auth.admin)
    .send(jobBody('webcheck', `${lab}j`))
    .expect(201);
  const started = await call(api.app, 'post', '/jobs/webcheck/run').set('authorization', api.auth.operator).expect(202);
  t.equal(started.body.kind, 'job-run');
  const overlap = await call(api.app, 'post', '/jobs/webcheck/run').set('authorization', api.auth.operator).expect(409);
  t.match(overlap.body.error.message, /already running/);
  const op = await settled(api, started.body.id);
  t.equal(op.state, 'succeeded', JSON.stringify(op.error));
  const result = op.result as { run: string; result: string; vms: { name: string; result: string }[]; report: string };
  t.equal(result.result, 'success', JSON.stringify(result));
  t.same(
    result.vms.map((v) => [v.name, v.result]),
    [['web', 'success']],
  );
  t.equal(op.resource, `/api/v1/runs/${result.run}`);

  const runs = await call(api.app, 'get', '/runs').set('authorization', api.auth.viewer).expect(200);
  t.equal(runs.body.runs[0].id, result.run, 'newest first');
  t.same(Object.keys(runs.body.runs[0]).sort(), ['detail', 'dueAt', 'endedAt', 'id', 'job', 'report', 'startedAt', 'status', 'trigger']);
  t.equal(runs.body.runs[0].trigger, 'manual');
  t.equal(runs.body.runs[0].status, 'success');
  t.equal((await call(api.app, 'get', '/runs?job=webcheck&limit=1').set('authorization', api.auth.viewer).expect(200)).body.runs.length, 1);
  t.same((await call(api.app, 'get', '/runs?job=other').set('authorization', api.auth.viewer).expect(200)).body.runs, []);
  for (const q of ['limit=0', 'limit=abc', 'bogus=1', 'job=a/b']) {
    const res = await call(api.app, 'get', `/runs?${q}`).set('authorization', api.auth.viewer).expect(400);
    t.match(res.body.error.message, /query/, `${q}: ${res.body.error.message}`);
  }

  const detail = await call(api.app, 'get', op.resource!.replace('/api/v1', '')).set('authorization', api.auth.viewer).expect(200);
  t.equal(detail.body.run.id, result.run);
  t.equal(detail.body.run.report, `/api/v1/runs/${result.run}/report`);
  const web = detail.body.vms[0];
  t.equal(web.name, 'web');
  t.equal(web.point, (await fx).guest.point.id);
  t.ok(web.recoverySeconds > 0);
  t.ok(
    web.tests.some((x: { kind: string; result: string }) => x.kind === 'http' && x.result === 'passed'),
    "the web role's HTTP test passed",
  );
  t.same(Object.keys(web.tests[0]).sort(), ['detail', 'kind', 'name', 'result', 'seconds']);
  t.equal(web.screenshot, `/api/v1/runs/${result.run}/vms/web/screenshot`);

  const report = await call(api.app, 'get', `/runs/${result.run}/report`).set('authorization', api.auth.viewer).expect(200);
  t.match(report.headers['content-type'], /^text\/html/);
  t.match(report.text, /webcheck/);
  t.match(report.text, /data:image\/png;base64,/, 'self-contained, with the screenshot');
  const shot = await request(api.app).get(web.screenshot).set('authorization', api.auth.viewer).buffer(true).parse(binary).expect(200);
  t.equal(shot.headers['content-type'], 'image/png');
  t.ok(isPng(shot.body as Buffer), 'PNG magic');
  await call(api.app, 'get', `/runs/${result.run}/vms/db/screenshot`).set('authorization', api.auth.viewer).expect(404);
  await call(api.app, 'get', '/runs/20990101T000000Z-00000000').set('authorization', api.auth.viewer).expect(404);
  await call(api.app, 'get', '/runs/20990101T000000Z-00000000/report').set('authorization', api.auth.viewer).expect(404);

  const job = await call(api.app, 'get', '/jobs/webcheck').set('authorization', api.auth.viewer).expect(200);
  t.equal(job.body.lastRun.id, result.run);
  t.equal(job.body.lastRun.status, 'success');
  t.same(await leftovers(api.config.stateDir, undefined, `${lab}j`), [], 'the run left nothing behind');
});

t.test('cancel a run through its operation: cancelled, torn down', async (t) => {
  const { api, lab } = await fx;
  // Each VM of a run has a work directory under surebackup/vms while it is up; the directory
  // itself stays from the run before, so only an entry in it says that this run is booting one.
  const vmsDir = join(api.config.stateDir, 'surebackup', 'vms');
  const booting = (): string[] => (existsSync(vmsDir) ? readdirSync(vmsDir) : []);
  t.same(booting(), [], 'nothing left up from the run before');
  const started = await call(api.app, 'post', '/jobs/webcheck/run').set('authorization', api.auth.operator).expect(202);
  // Cancel once the VM is being booted, so teardown has something to undo.
  const end = Date.now() + 120_000;
  while (booting().length === 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 200));
  t.equal(booting().length, 1, "the run's VM was being brought up when the cancel came");
  const cancel = await call(api.app, 'post', `/operations/${started.body.id}/cancel`).set('authorization', api.auth.operator).expect(202);
  t.equal(cancel.body.id, started.body.id);
  const op = await settled(api, started.body.id);
  t.equal(op.state, 'cancelled');
  const runs = await call(api.app, 'get', '/runs?job=webcheck&limit=1').set('authorization', api.auth.viewer).expect(200);
  t.equal(runs.body.runs[0].status, 'cancelled', 'the run is recorded as cancelled');
  t.same(await leftovers(api.config.stateDir, undefined, `${lab}j`), [], 'the lab and the VM are gone');
  t.same(booting(), [], "and the VM's work directory");
  await call(api.app, 'post', `/operations/${started.body.id}/cancel`).set('authorization', api.auth.operator).expect(409);
  await call(api.app, 'delete', '/jobs/webcheck').set('authorization', api.auth.admin).expect(200);
  await call(api.app, 'get', '/jobs/webcheck').set('authorization', api.auth.viewer).expect(404);
});

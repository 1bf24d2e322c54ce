/**
 * /api/v1/sessions and /api/v1/publications for real: a repository holding
 * the `web` guest, a recovery booted under TCG in a lab of this file's own
 * (its own masquerade subnet, test/helpers/subnets.ts), its live console as PNG, a live migration,
 * stop; publications over a datastore (as the NFS export serves it) and over
 * FUSE. Auth by role and validation of every body and query too.
 */
import t from 'tap';
import request from 'supertest';
import { readFileSync, existsSync, openSync, readSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { open } from 'node:fs/promises';
import { readLabState } from '../../src/lab/lab.js';
import { PublicationDatastore } from '../../src/datastore/publication-datastore.js';
import type { RecoverySession } from '../../src/session/session.js';
import { binary, isPng, labApi, settled } from './fixtures/lab-api.js';
import { httpGet, residue, WEB_EXPECT } from '../session/fixtures/recovery.js';
import { address, subnet } from '../helpers/subnets.js';
import { TEST_RULES } from '../helpers/planted-guest.js';
import { listPublications } from '../../src/publish/publish.js';

const fx = labApi(t, { prefix: 'as', masquerade: subnet('api/sessions') });

t.test('auth: no token is 401, a viewer may not act (403)', async (t) => {
  const { api } = await fx;
  for (const [m, p] of [
    ['get', '/sessions'],
    ['get', '/sessions/abc'],
    ['post', '/sessions'],
    ['post', '/sessions/abc/stop'],
    ['post', '/sessions/abc/migrate'],
    ['get', '/sessions/abc/screenshot'],
    ['get', '/publications'],
    ['get', '/publications/x'],
    ['post', '/publications'],
    ['delete', '/publications/x'],
  ] as const) {
    const res = await request(api.app)[m](`/api/v1${p}`).expect(401);
    t.equal(res.body.error.code, 'UNAUTHENTICATED', `${m} ${p}`);
  }
  for (const [m, p, body] of [
    ['post', '/sessions', { vm: 'web' }],
    ['post', '/sessions/abc/stop', undefined],
    ['post', '/sessions/abc/migrate', { dir: '/tmp/x' }],
    ['post', '/publications', { point: 'p' }],
    ['delete', '/publications/x', undefined],
  ] as const) {
    const res = await request(api.app)[m](`/api/v1${p}`).set('authorization', api.auth.viewer).send(body).expect(403);
    t.match(res.body.error.message, /needs operator/, `${m} ${p}`);
  }
  await request(api.app).get('/api/v1/sessions').set('authorization', api.auth.viewer).expect(200);
  await request(api.app).get('/api/v1/publications').set('authorization', api.auth.viewer).expect(200);
});

t.test('bad input: 400 with the schema path, 404 for what does not exist, nothing recorded', async (t) => {
  const { api, lab } = await fx;
  const op = api.auth.operator;
  const bad: [string, string, unknown, RegExp][] = [
    ['post', '/sessions', { vm: 'web', colour: 'red' }, /body\/colour|colour/],
    ['post', '/sessions', { vm: 5 }, /body\/vm/],
    ['post', '/sessions', {}, /vm/],
    ['post', '/sessions', { vm: 'web', driver: 'xen' }, /body\/driver/],
    ['post', '/sessions', { vm: '../etc' }, /body\/vm/],
    ['post', '/sessions/abc/migrate', { dir: 'relative/dir' }, /body\/dir/],
    ['post', '/sessions/abc/migrate', { dir: '/tmp/x', format: 'vmdk' }, /body\/format/],
    ['post', '/publications', { point: 'p', fuse: '/tmp/x', extra: true }, /extra/],
    ['post', '/publications', { point: 7 }, /body\/point/],
    ['delete', '/publications/x?discard=maybe', undefined, /query\/discard/],
    ['delete', '/publications/x?force=1', undefined, /query\/force|force/],
    ['get', '/sessions/bad$id', undefined, /params\/id/],
  ];
  for (const [m, p, body, msg] of bad) {
    const res = await (request(api.app) as unknown as Record<string, (p: string) => request.Test>)[m]!(`/api/v1${p}`)
      .set('authorization', op)
      .send(body as object);
    t.equal(res.status, 400, `${m} ${p} ${JSON.stringify(body)}: 400`);
    t.equal(res.body.error.code, 'VALIDATION_FAILED');
    t.match(res.body.error.message, msg, res.body.error.message);
  }
  const missing: [string, string, unknown, string][] = [
    ['post', '/sessions', { vm: 'nosuch' }, 'VM_NOT_FOUND'],
    ['post', '/sessions', { vm: 'web', point: '20990101T000000Z-000000' }, 'POINT_NOT_FOUND'],
    ['post', '/sessions', { vm: 'web', lab: 'no-such-lab' }, 'NOT_FOUND'],
    ['get', '/sessions/abcdef12', undefined, 'NOT_FOUND'],
    ['get', '/sessions/abcdef12/screenshot', undefined, 'NOT_FOUND'],
    ['post', '/sessions/abcdef12/stop', undefined, 'SESSION_NOT_FOUND'],
    ['post', '/sessions/abcdef12/migrate', { dir: join(api.config.stateDir, 'restores', 'x') }, 'NOT_FOUND'],
    ['get', '/publications/nothing', undefined, 'NOT_FOUND'],
    ['delete', '/publications/nothing', undefined, 'NOT_FOUND'],
    ['post', '/publications', { point: '20990101T000000Z-000000', fuse: join(api.config.stateDir, 'mnt', 'x') }, 'POINT_NOT_FOUND'],
  ];
  for (const [m, p, body, code] of missing) {
    const res = await (request(api.app) as unknown as Record<string, (p: string) => request.Test>)[m]!(`/api/v1${p}`)
      .set('authorization', op)
      .send(body as object);
    t.equal(res.status, 404, `${m} ${p}: 404`);
    t.equal(res.body.error.code, code, res.body.error.message);
  }
  const bridge = await request(api.app).post('/api/v1/sessions').set('authorization', op).send({ vm: 'web', network: 'nobr0' }).expect(400);
  t.equal(bridge.body.error.code, 'BRIDGE_NOT_FOUND');
  const noFrontend = await request(api.app)
    .post('/api/v1/publications')
    .set('authorization', op)
    .send({ point: (await fx).guest.point.id })
    .expect(400);
  t.equal(noFrontend.body.error.code, 'PUBLISH_NO_FRONTEND', 'no NFS in this server and no fuse directory');
  // The recovery gate's rules: the API's rule policy and yarac before the 202, so nothing is mounted.
  const badRules: [unknown, number, string, RegExp][] = [
    [{ rules: 'rule broken { condition: }' }, 400, 'YARA_RULES_INVALID', /syntax error|rules/],
    [{ rules: 'include "/etc/passwd"\nrule x { condition: true }' }, 400, 'YARA_RULES_INVALID', /include/],
    [{ rules: 'import "console"\nrule x { condition: true }' }, 400, 'YARA_RULES_INVALID', /console/],
    [{ rules: `rule big { condition: true }\n//${'x'.repeat(200_000)}` }, 400, 'VALIDATION_FAILED', /body\/scan\/rules/],
    [{ rules: '' }, 400, 'VALIDATION_FAILED', /body\/scan\/rules/],
    [{ allowInfected: true }, 400, 'VALIDATION_FAILED', /rules/],
    [{ rules: TEST_RULES, allowInfected: 'yes' }, 400, 'VALIDATION_FAILED', /body\/scan\/allowInfected/],
    [{ rules: TEST_RULES, file: '/etc/rules.yar' }, 400, 'VALIDATION_FAILED', /file/],
  ];
  for (const [scan, status, code, msg] of badRules) {
    const res = await request(api.app).post('/api/v1/sessions').set('authorization', op).send({ vm: 'web', lab, scan });
    t.equal(res.status, status, `scan ${JSON.stringify(scan).slice(0, 80)}: ${status}`);
    t.equal(res.body.error.code, code, res.body.error.message);
    t.match(res.body.error.message, msg);
    t.notOk(res.body.error.message.includes(api.config.stateDir), "the server's paths are not named");
  }
  t.notOk(readFileSync('/proc/mounts', 'utf8').includes(api.config.stateDir), 'nothing was mounted');
  t.same(listPublications(api.config.stateDir), [], 'nothing was published');
  const listed = await request(api.app).get('/api/v1/sessions').set('authorization', api.auth.viewer).expect(200);
  t.same(listed.body.sessions, [], 'no session was recorded');
  t.equal(readLabState(api.config.stateDir, lab), undefined, 'no lab was brought up');
  t.same(api.ctx.operations.list(), [], 'no operation was started');
});

// Over NBD: the API's FUSE path is the dashboard end-to-end test's (test/api/dashboard-e2e.test.ts).
t.test('recover web in a lab over NBD behind the scan gate: 202, clean, running, screenshot, HTTP, metrics, migrate, stop', async (t) => {
  const { api, lab, guest } = await fx;
  const wrongVia = await request(api.app)
    .post('/api/v1/sessions')
    .set('authorization', api.auth.operator)
    .send({ vm: 'web', lab, publish: 'nfs' })
    .expect(400);
  t.equal(wrongVia.body.error.code, 'VALIDATION_FAILED', 'NFS is not offered: the server holds the NFS ports');
  const started = await request(api.app)
    .post('/api/v1/sessions')
    .set('authorization', api.auth.operator)
    .send({ vm: 'web', lab, publish: 'nbd', scan: { rules: TEST_RULES } })
    .expect(202);
  const events: string[] = [];
  api.ctx.operations.subscribe(started.body.id, (e) => {
    if (e.message) events.push(e.message);
  });
  t.equal(started.headers.location, `/api/v1/operations/${started.body.id}`);
  t.equal(started.body.kind, 'recover');
  t.equal(started.body.state, 'running');
  const op = await settled(api, started.body.id);
  t.equal(op.state, 'succeeded', JSON.stringify(op.error));
  const s = op.result as RecoverySession;
  t.equal(s.state, 'running');
  t.equal(s.lab, lab);
  t.match(s.publish, { via: 'nbd' });
  t.match(Object.values(s.disks), [/^nbd\+unix:\/\/\/root\?socket=\//], 'the VM runs on an NBD export');
  t.equal(op.resource, `/api/v1/sessions/${s.id}`);
  t.same(s.addresses, { nic0: address('api/sessions') }, 'the masquerade address of 192.168.77.10');
  t.match(s.scan, { verdict: 'clean', matches: [], files: { scanned: Number } }, 'the gate scanned the point: clean');
  t.ok(s.scan!.files.scanned + s.scan!.files.cached > 10, `every file of the guest (${JSON.stringify(s.scan?.files)})`);
  t.equal(s.quarantine, undefined, 'a clean point is not quarantined');
  t.ok(
    events.some((m) => /^scanning the point with the given YARA rules first$/.test(m)),
    `the scan shows in the operation's progress: ${events.join(' | ')}`,
  );
  const points = await request(api.app).get('/api/v1/points').set('authorization', api.auth.viewer).expect(200);
  t.match(points.body.points, [{ id: guest.point.id, scan: 'clean' }], "the server's catalog has the verdict: the point is clean");

  const viaOp = await request(api.app).get(`/api/v1/operations/${op.id}`).set('authorization', api.auth.viewer).expect(200);
  t.equal(viaOp.body.state, 'succeeded');
  const one = await request(api.app).get(op.resource!).set('authorization', api.auth.viewer).expect(200);
  t.equal(one.body.id, s.id);
  t.equal(one.body.state, 'running');
  t.match(one.body.scan, { verdict: 'clean', ruleset: s.scan!.ruleset }, 'GET /sessions/<id> says the verdict');
  const all = await request(api.app).get('/api/v1/sessions').set('authorization', api.auth.viewer).expect(200);
  t.same(
    all.body.sessions.map((x: RecoverySession) => [x.id, x.state]),
    [[s.id, 'running']],
  );

  const page = await httpGet(`http://${s.addresses.nic0}/`);
  t.match(page.body, WEB_EXPECT, 'the recovered VM answers HTTP through the lab');

  const shot = await request(api.app)
    .get(`/api/v1/sessions/${s.id}/screenshot`)
    .set('authorization', api.auth.viewer)
    .buffer(true)
    .parse(binary)
    .expect(200);
  t.equal(shot.headers['content-type'], 'image/png');
  t.equal(shot.headers['cache-control'], 'no-store');
  t.ok(isPng(shot.body as Buffer), 'PNG magic');
  t.ok((shot.body as Buffer).length > 1000, `a real console image (${(shot.body as Buffer).length} bytes)`);

  const metrics = await request(api.app).get('/metrics').set('authorization', api.auth.viewer).expect(200);
  t.match(metrics.text, /restorelab_recovery_seconds_count 1\b/, 'the recovery is in the histogram');
  t.match(metrics.text, /restorelab_sessions\{state="running"\} 1\b/);

  // Live migration off the backup, then the VM keeps running from the copies,
  // into a directory of the default restore root (api.restoreRoots).
  const target = join(api.config.stateDir, 'restores', 'production');
  const mig = await request(api.app)
    .post(`/api/v1/sessions/${s.id}/migrate`)
    .set('authorization', api.auth.operator)
    .send({ dir: target })
    .expect(202);
  const migOp = await settled(api, mig.body.id);
  t.equal(migOp.state, 'succeeded', JSON.stringify(migOp.error));
  const migrated = migOp.result as RecoverySession;
  t.equal(migrated.state, 'migrated');
  const disk = Object.values(migrated.disks)[0]!;
  t.ok(disk.startsWith(target) && existsSync(disk), `the disk now lives at ${disk}`);
  const mbr = Buffer.alloc(2);
  const fd = openSync(disk, 'r');
  readSync(fd, mbr, 0, 2, 510);
  closeSync(fd);
  t.same([...mbr], [0x55, 0xaa], "the migrated disk holds the guest's boot sector");
  const again = await request(api.app)
    .post(`/api/v1/sessions/${s.id}/migrate`)
    .set('authorization', api.auth.operator)
    .send({ dir: target })
    .expect(409);
  t.match(again.body.error.message, /migrated/);
  await request(api.app)
    .get(`/api/v1/sessions/${s.id}/screenshot`)
    .set('authorization', api.auth.viewer)
    .buffer(true)
    .parse(binary)
    .expect(200);

  const busyLab = await request(api.app).post(`/api/v1/labs/${lab}/down`).set('authorization', api.auth.operator).expect(409);
  t.match(busyLab.body.error.message, new RegExp(s.id), 'a lab in use is not taken down');

  const stop = await request(api.app).post(`/api/v1/sessions/${s.id}/stop`).set('authorization', api.auth.operator).expect(200);
  t.equal(stop.body.state, 'stopped');
  t.equal(stop.body.id, s.id);
  t.ok(existsSync(disk), 'stop keeps the migrated disks (production storage now)');
  const gone = await request(api.app).get(`/api/v1/sessions/${s.id}/screenshot`).set('authorization', api.auth.viewer).expect(404);
  t.match(gone.body.error.message, /stopped/);
  const twice = await request(api.app).post(`/api/v1/sessions/${s.id}/stop`).set('authorization', api.auth.operator).expect(200);
  t.equal(twice.body.state, 'stopped', 'stop is idempotent');
  t.same(await residue({ domain: s.domain, mount: join(api.config.stateDir, 'sessions', s.id) }), [], 'no QEMU process or mount remains');
  t.equal(readLabState(api.config.stateDir, lab), undefined, 'the lab the session brought up is down');
});

t.test('publications: over the server datastore (NFS), over FUSE, busy, discard', async (t) => {
  const { api, guest } = await fx;
  const point = guest.point.id;
  const datastore = new PublicationDatastore();
  // As `restorelab server` hands the NFS export's datastore to the API.
  (api.ctx as { datastore?: PublicationDatastore }).datastore = datastore;
  t.teardown(() => {
    delete (api.ctx as { datastore?: PublicationDatastore }).datastore;
  });

  const started = await request(api.app)
    .post('/api/v1/publications')
    .set('authorization', api.auth.operator)
    .send({ point, readOnly: true })
    .expect(202);
  const op = await settled(api, started.body.id);
  t.equal(op.state, 'succeeded', JSON.stringify(op.error));
  const pub = op.result as { id: string; frontend: string; point: string };
  t.equal(pub.frontend, 'nfs');
  t.equal(pub.point, point);
  t.equal(op.resource, `/api/v1/publications/${pub.id}`);
  t.same(
    datastore.publications().map((p) => p.id),
    [pub.id],
    "the NFS export's datastore serves it",
  );
  const listed = await request(api.app).get('/api/v1/publications').set('authorization', api.auth.viewer).expect(200);
  t.same(
    listed.body.publications.map((p: { id: string; running: boolean; frontend: string }) => [p.id, p.running, p.frontend]),
    [[pub.id, true, 'nfs']],
  );
  const one = await request(api.app).get(op.resource!).set('authorization', api.auth.viewer).expect(200);
  t.equal(one.body.id, pub.id);
  const busy = await request(api.app).post('/api/v1/publications').set('authorization', api.auth.operator).send({ point }).expect(409);
  t.match(busy.body.error.message, /already published/);
  const del = await request(api.app)
    .delete(`/api/v1/publications/${pub.id}?discard=true`)
    .set('authorization', api.auth.operator)
    .expect(200);
  t.same(del.body, { publication: pub.id, stopped: true, discarded: true });
  t.same(datastore.publications(), [], 'detached from the datastore');
  t.same(
    (await request(api.app).get('/api/v1/publications').set('authorization', api.auth.viewer).expect(200)).body.publications,
    [],
    'and gone, overlay discarded',
  );

  // Below the default mount root (api.mountRoots).
  const mnt = join(api.config.stateDir, 'mnt', 'fuse');
  const f = await request(api.app)
    .post('/api/v1/publications')
    .set('authorization', api.auth.operator)
    .send({ point, fuse: mnt })
    .expect(202);
  const fop = await settled(api, f.body.id);
  t.equal(fop.state, 'succeeded', JSON.stringify(fop.error));
  const fpub = fop.result as { id: string; frontend: string; disks: Record<string, string> };
  t.equal(fpub.frontend, 'fuse');
  t.same(datastore.publications(), [], 'a FUSE publication is not also on the NFS datastore');
  const raw = Object.values(fpub.disks)[0]!;
  t.ok(raw.startsWith(mnt), raw);
  // Asynchronously: this process serves the FUSE mount, a synchronous read would wait on itself.
  const fh = await open(raw, 'r');
  const head = Buffer.alloc(512);
  await fh.read(head, 0, 512, 0);
  await fh.close();
  t.same(head, readFileSync(guest.image).subarray(0, 512), 'the disk reads as the backed-up image');
  const keep = await request(api.app).delete(`/api/v1/publications/${fpub.id}`).set('authorization', api.auth.operator).expect(200);
  t.equal(keep.body.discarded, false);
  t.notOk(readFileSync('/proc/mounts', 'utf8').includes(mnt), 'unmounted');
  const stopped = (await request(api.app).get('/api/v1/publications').set('authorization', api.auth.viewer).expect(200)).body.publications;
  t.same(
    stopped.map((p: { id: string; running: boolean }) => [p.id, p.running]),
    [[fpub.id, false]],
    'kept (resumable), not running',
  );
  await request(api.app).delete(`/api/v1/publications/${fpub.id}?discard=true`).set('authorization', api.auth.operator).expect(200);
});

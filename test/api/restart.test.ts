/**
 * The server restarts while a recovery session runs: the session lives in
 * its own supervisor process, so after the API context is closed (server
 * stop) and a new one is created over the same home (server start), the
 * session is still listed as running, its console is still served, and it
 * can be stopped through the new server. Tokens outlive the restart too
 * (they are in the catalog).
 */
import t from 'tap';
import request from 'supertest';
import { join } from 'node:path';
import { readLabState } from '../../src/lab/lab.js';
import type { RecoverySession } from '../../src/session/session.js';
import { testApi } from '../helpers/api.js';
import { ENV, binary, isPng, labApi, settled } from './fixtures/lab-api.js';
import { residue } from '../session/fixtures/recovery.js';
import { subnet } from '../helpers/subnets.js';

t.test('a running session survives a server restart and is stopped by the new server', async (t) => {
  const { api, home, guest, lab } = await labApi(t, { prefix: 'ar', masquerade: subnet('api/restart') });
  const started = await request(api.app)
    .post('/api/v1/sessions')
    .set('authorization', api.auth.operator)
    .send({ vm: 'web', lab })
    .expect(202);
  const op = await settled(api, started.body.id);
  t.equal(op.state, 'succeeded', JSON.stringify(op.error));
  const s = op.result as RecoverySession;
  t.equal(s.state, 'running');

  await api.close(); // server stop

  const next = await testApi({ home, env: { RESTORELAB_REPO: guest.repo, ...ENV } }); // server start
  t.teardown(() => next.close());
  const listed = await request(next.app).get('/api/v1/sessions').set('authorization', next.auth.viewer).expect(200);
  t.same(
    listed.body.sessions.map((x: RecoverySession) => [x.id, x.state]),
    [[s.id, 'running']],
    'still listed as running',
  );
  const one = await request(next.app).get(`/api/v1/sessions/${s.id}`).set('authorization', api.auth.viewer).expect(200);
  t.equal(one.body.supervisorPid, s.supervisorPid, 'the same supervisor, found again (and the old token still works)');
  const shot = await request(next.app)
    .get(`/api/v1/sessions/${s.id}/screenshot`)
    .set('authorization', next.auth.viewer)
    .buffer(true)
    .parse(binary)
    .expect(200);
  t.ok(isPng(shot.body as Buffer), 'its console is served by the new server');

  const stop = await request(next.app).post(`/api/v1/sessions/${s.id}/stop`).set('authorization', next.auth.operator).expect(200);
  t.equal(stop.body.state, 'stopped');
  const after = await request(next.app).get('/api/v1/sessions').set('authorization', next.auth.viewer).expect(200);
  t.same(
    after.body.sessions.map((x: RecoverySession) => [x.id, x.state]),
    [[s.id, 'stopped']],
  );
  t.same(
    await residue({
      domain: s.domain,
      mount: join(next.config.stateDir, 'sessions', s.id),
      ...(s.supervisorPid ? { supervisorPid: s.supervisorPid } : {}),
    }),
    [],
    'no QEMU, supervisor or mount remains',
  );
  t.equal(readLabState(next.config.stateDir, lab), undefined, 'the lab the session brought up is down');
});

// The backup job routes in process: roles, 404/400/409, a run through an operation, and the history it leaves.
import t from 'tap';
import request from 'supertest';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { initRepository } from '../../src/repo/repository.js';
import { testApi } from '../helpers/api.js';
import type { Operation } from '../../src/api/operations.js';
import { jobFile, smallVm } from './fixtures.js';

const dir = t.testdir();
const jobs = join(dir, 'backup-jobs');
mkdirSync(jobs);
smallVm(dir, 'alpha', 1);
const repoDir = join(dir, 'repo');
await initRepository(repoDir, { chunkSize: 256 * 1024 });
jobFile(jobs, 'two.json', {
  name: 'two',
  vms: [{ vm: '../alpha.json', source: { disks: { root: '../alpha.raw' } } }],
  retention: { keepLast: 1 },
  schedule: '0 3 * * *',
});
jobFile(jobs, 'broken.json', { name: 'broken', vms: [] });
const a = await testApi({ env: { RESTORELAB_BACKUP_JOBS_DIR: jobs, RESTORELAB_REPO: repoDir } });
t.teardown(() => a.close());

async function finished(res: request.Response): Promise<Operation> {
  if (res.status !== 202) throw new Error(`expected 202, got ${res.status}: ${JSON.stringify(res.body)}`);
  const op = await a.ctx.operations.wait(res.body.id as string);
  if (!op) throw new Error('operation vanished');
  return op;
}

t.test('list: jobs with schedule and next fire times, invalid files named', async (t) => {
  const r = await request(a.app).get('/api/v1/backup-jobs').set('Authorization', a.auth.viewer);
  t.equal(r.status, 200);
  t.equal(r.body.backupJobsDir, jobs);
  t.same(
    r.body.jobs.map((j: { name: string }) => j.name),
    ['two'],
  );
  t.equal(r.body.jobs[0].schedule, '0 3 * * *');
  t.equal(r.body.jobs[0].next.length, 3);
  t.ok(r.body.jobs[0].next.every((n: string) => n.endsWith('T03:00:00.000Z')));
  t.equal(r.body.invalid.length, 1);
  t.match(r.body.invalid[0].error, /broken\.json/);
  t.equal((await request(a.app).get('/api/v1/backup-jobs')).status, 401);
  t.equal((await request(a.app).get('/api/v1/backup-jobs/nope').set('Authorization', a.auth.viewer)).status, 404);
  t.equal((await request(a.app).get('/api/v1/backup-jobs/..%2Fx').set('Authorization', a.auth.viewer)).status, 400);
});

t.test('run now: operator only, an operation whose result is the run; two runs prune by retention', async (t) => {
  t.equal((await request(a.app).post('/api/v1/backup-jobs/two/run').set('Authorization', a.auth.viewer)).status, 403);
  const first = await finished(await request(a.app).post('/api/v1/backup-jobs/two/run').set('Authorization', a.auth.operator));
  t.equal(first.state, 'succeeded', JSON.stringify(first.error));
  const r1 = first.result as { run: string; status: string; vms: { point: string }[] };
  t.equal(r1.status, 'success');
  t.equal(first.resource, `/api/v1/backup-job-runs/${r1.run}`);

  const started = await request(a.app).post('/api/v1/backup-jobs/two/run').set('Authorization', a.auth.operator);
  const overlap = await request(a.app).post('/api/v1/backup-jobs/two/run').set('Authorization', a.auth.operator);
  t.equal(overlap.status, 409, 'a second run while one is going');
  t.equal(overlap.body.error.code, 'CONFLICT');
  const second = await finished(started);
  const r2 = second.result as { run: string; vms: { point: string; pruned: string[] }[] };
  t.same(r2.vms[0]!.pruned, [r1.vms[0]!.point]);

  const runs = await request(a.app).get('/api/v1/backup-job-runs?job=two&limit=5').set('Authorization', a.auth.viewer);
  t.equal(runs.status, 200);
  t.same(
    runs.body.runs.map((r: { id: string; status: string; trigger: string }) => [r.id, r.status, r.trigger]),
    [
      [r2.run, 'success', 'manual'],
      [r1.run, 'success', 'manual'],
    ],
  );
  const one = await request(a.app).get(`/api/v1/backup-job-runs/${r2.run}`).set('Authorization', a.auth.viewer);
  t.equal(one.body.vms[0].vm, 'alpha');
  t.equal(one.body.vms[0].consistency, 'crash');
  t.equal((await request(a.app).get('/api/v1/backup-job-runs/nope').set('Authorization', a.auth.viewer)).status, 404);
  t.equal((await request(a.app).get('/api/v1/backup-job-runs?limit=0').set('Authorization', a.auth.viewer)).status, 400);
  const listed = await request(a.app).get('/api/v1/backup-jobs/two').set('Authorization', a.auth.viewer);
  t.same([listed.body.lastRun.id, listed.body.running], [r2.run, false]);
});

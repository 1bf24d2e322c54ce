// `restorelab backup-job run|list|history` as scripts call them: JSON, retention, exit codes.
import t from 'tap';
import { join } from 'node:path';
import { cliHome, jobFile, type RunJson } from './fixtures.js';

const dir = t.testdir();
const { jobs, cli, alphaVm } = await cliHome(dir);

t.test('run, list, history', async (t) => {
  jobFile(jobs, 'keep-one.json', { name: 'keep-one', vms: [alphaVm], retention: { keepLast: 1 } });
  const list0 = await cli(['backup-job', 'list', '--json']);
  t.equal(list0.code, 0, list0.stderr);
  const l0 = JSON.parse(list0.stdout) as {
    backupJobsDir: string;
    jobs: { name: string; lastRun: unknown; vms: { name: string; source: string }[] }[];
  };
  t.equal(l0.backupJobsDir, jobs, 'RESTORELAB_BACKUP_JOBS_DIR names the directory');
  t.same(
    l0.jobs.map((j) => [j.name, j.lastRun, j.vms[0]!.name]),
    [['keep-one', null, 'alpha']],
  );

  const first = await cli(['backup-job', 'run', 'keep-one', '--json']);
  t.equal(first.code, 0, first.stderr);
  const r1 = JSON.parse(first.stdout) as RunJson;
  t.equal(r1.status, 'success');
  t.ok(r1.vms[0]!.point);
  const second = await cli(['backup-job', 'run', join(jobs, 'keep-one.json'), '--json']);
  t.equal(second.code, 0, second.stderr);
  const r2 = JSON.parse(second.stdout) as RunJson;
  t.same(r2.vms[0]!.pruned, [r1.vms[0]!.point], 'keepLast 1: the second run pruned the first point');
  const points = JSON.parse((await cli(['points', '--json'])).stdout) as { points: { id: string }[] };
  t.same(
    points.points.map((p) => p.id),
    [r2.vms[0]!.point],
  );

  const hist = await cli(['backup-job', 'history', 'keep-one', '--json']);
  t.equal(hist.code, 0, hist.stderr);
  const h = JSON.parse(hist.stdout) as { runs: { id: string; trigger: string; status: string; vms: { point: string }[] }[] };
  t.same(
    h.runs.map((r) => [r.id, r.trigger, r.status]),
    [
      [r2.run, 'manual', 'success'],
      [r1.run, 'manual', 'success'],
    ],
    'newest first',
  );
  const human = await cli(['backup-job', 'history']);
  t.match(human.stdout, /keep-one\s+manual\s+success/);
  const list1 = JSON.parse((await cli(['backup-job', 'list', '--json'])).stdout) as { jobs: { lastRun: { id: string; status: string } }[] };
  t.same([list1.jobs[0]!.lastRun.id, list1.jobs[0]!.lastRun.status], [r2.run, 'success']);
});

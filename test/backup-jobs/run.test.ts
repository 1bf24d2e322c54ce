// A backup job over image files, run on a clock that walks ten days: retention keeps exactly the
// right points (checked with `restorelab points --json` and in the repository's own files), a VM
// whose backup failed is not pruned, every outcome is in the history, and the linked SureBackup
// job is fired through a real SureBackup scheduler after complete runs only.
import t from 'tap';
import { renameSync } from 'node:fs';
import { join } from 'node:path';
import { exec } from '../../src/host/exec.js';
import { projectPath } from '../../src/paths.js';
import { initRepository } from '../../src/repo/repository.js';
import { backupVm } from '../../src/backup/engine.js';
import { listPoints, recordPoint } from '../../src/catalog/catalog.js';
import { loadVmDefinition } from '../../src/vm/definition.js';
import { loadBackupJob } from '../../src/backup/jobs/job.js';
import { BackupJobHistory } from '../../src/backup/jobs/history.js';
import { runBackupJob } from '../../src/backup/jobs/runner.js';
import { fireThroughScheduler } from '../../src/backup/jobs/surebackup-link.js';
import { Scheduler } from '../../src/scheduler/scheduler.js';
import { History } from '../../src/surebackup/history.js';
import { loadJob } from '../../src/surebackup/job.js';
import { jobFile, smallVm } from './fixtures.js';

const cli = (args: string[], env: Record<string, string>) =>
  exec(process.execPath, [projectPath('bin', 'restorelab.js'), ...args], { timeoutMs: 60_000, env: { ...process.env, ...env } });

const dir = t.testdir();
const state = join(dir, 'state');
const repoDir = join(dir, 'repo');
smallVm(dir, 'alpha');
const beta = smallVm(dir, 'beta');
const repo = await initRepository(repoDir, { chunkSize: 256 * 1024 });
const file = jobFile(dir, 'daily.json', {
  name: 'daily',
  vms: [
    { vm: 'alpha.json', source: { disks: { root: 'alpha.raw' } } },
    { vm: 'beta.json', source: { disks: { root: 'beta.raw' } } },
  ],
  retention: { keepLast: 2, keepDaily: 3, keepWeekly: 2 },
  surebackup: ['verify-daily'],
});
const job = loadBackupJob(file);
const history = await BackupJobHistory.open(join(state, 'catalog.sqlite'));
t.teardown(() => history.close());

// The linked SureBackup job, fired through a real SureBackup scheduler whose run only records that it ran.
jobFile(dir, 'verify-daily.json', { name: 'verify-daily', lab: 'lab.json', verify: { vms: 'all' } });
const sbHistory = await History.on(history.catalog);
const verified: string[] = [];
const sureBackup = new Scheduler({
  jobs: [{ name: 'verify-daily', file: join(dir, 'verify-daily.json'), job: loadJob(join(dir, 'verify-daily.json')) }],
  history: sbHistory,
  run: async (_s, c) => {
    verified.push(c.runId);
  },
  log: { info: () => undefined, warn: () => undefined },
});
t.teardown(() => sureBackup.stop());

// Mon 2 Nov 2026 (ISO week 45) to Tue 10 Nov (week 46), 01:30 each day, and a second run at 13:00 on the 10th.
const clock = [2, 3, 4, 5, 6, 7, 8, 9, 10]
  .map((d) => new Date(Date.UTC(2026, 10, d, 1, 30)))
  .concat([new Date(Date.UTC(2026, 10, 10, 13, 0))]);
const pointsOf = async (vm: string) => (await repo.listPoints({ vm })).sort((a, b) => a.time.localeCompare(b.time));
const quiet = { info: () => undefined, warn: () => undefined };

const runs: Awaited<ReturnType<typeof runBackupJob>>[] = [];
let betaBefore: string[] = [];
let betaAfter: string[] = [];
for (const [i, at] of clock.entries()) {
  if (i === 4) {
    // Beta gets two points outside the job (a manual backup) on the 5th, then its image goes missing for run 5:
    // a prune now would remove its point of the 5th at 01:30 (the newest two and one per day keep the others).
    const vm = loadVmDefinition(beta.vm);
    for (const h of [2, 3])
      await recordPoint(
        history.catalog,
        repo.path,
        await backupVm({ repo, vm, disks: { root: beta.image }, time: new Date(Date.UTC(2026, 10, 5, h, 30)) }),
      );
    renameSync(beta.image, `${beta.image}.away`);
  }
  if (i === 5) renameSync(`${beta.image}.away`, beta.image);
  const runId = await history.startRun(job.name, 'schedule', at);
  const before = (await pointsOf('beta')).map((p) => p.id);
  const r = await runBackupJob({ job, repo, history, runId, now: () => at, log: quiet, fireSureBackup: fireThroughScheduler(sureBackup) });
  runs.push(r);
  if (i === 4) {
    betaBefore = before;
    betaAfter = (await pointsOf('beta')).map((p) => p.id);
  }
}

const ids = (vm: string) => runs.map((r) => r.vms.find((v) => v.vm === vm)!.point);

t.test('a VM whose backup failed is not pruned; the others are', async (t) => {
  const r = runs[4]!;
  t.equal(r.status, 'partial');
  const [a, b] = r.vms;
  t.equal(a!.status, 'success');
  t.same(a!.pruned, [ids('alpha')[1]], "alpha's retention went on: its point of the 3rd fell out of the last three days");
  t.equal(b!.status, 'failed');
  t.match(b!.error, /beta\.raw/, 'the error names the missing image');
  t.same(b!.pruned, []);
  t.equal(betaBefore.length, 5, 'beta had three job points and two manual ones');
  t.same(betaAfter, betaBefore, 'beta keeps every point, also the one its retention would remove');
  t.same((await history.run(r.run))!.vms[1]!.pruned, [], 'recorded so');
  t.match(r.detail, /1 of 2 VM\(s\) not backed up: beta; linked SureBackup job\(s\) verify-daily not fired/);
  t.same(r.surebackup, [], 'a partial run fires no verification');
  // The next run (beta backed up again) pruned what the failed one left: its point of the 5th at 01:30 among them.
  t.ok(runs[5]!.vms[1]!.pruned.includes(ids('beta')[3]!), 'the next successful run prunes it');
});

t.test('retention kept exactly the newest two, one per day for three days, one per week for two weeks', async (t) => {
  const a = ids('alpha');
  // 10th 13:00 and 01:30 (last 2), 9th and 8th (daily), 8th = newest of week 45 (weekly).
  const expected = [a[6], a[7], a[8], a[9]];
  t.same(
    (await pointsOf('alpha')).map((p) => p.id),
    expected,
    'the repository holds these alpha points',
  );
  const b = ids('beta');
  t.same(
    (await pointsOf('beta')).map((p) => p.id),
    [b[6], b[7], b[8], b[9]],
    'and these beta points',
  );
  t.same(
    (await listPoints(history.catalog, repo.path, { vm: 'alpha' })).map((p) => p.id),
    expected,
    'the runner kept the catalog in step',
  );
  const out = await cli(['points', '--json'], { RESTORELAB_STATE_DIR: state, RESTORELAB_REPO: repoDir });
  t.equal(out.code, 0, out.stderr);
  const listed = (JSON.parse(out.stdout) as { points: { id: string; vm: string; time: string; consistency: string }[] }).points;
  t.same(
    listed.filter((p) => p.vm === 'alpha').map((p) => p.id),
    expected,
    'points --json (the catalog) agrees',
  );
  t.same(
    listed.filter((p) => p.vm === 'alpha').map((p) => p.time),
    ['2026-11-08T01:30:00.000Z', '2026-11-09T01:30:00.000Z', '2026-11-10T01:30:00.000Z', '2026-11-10T13:00:00.000Z'],
  );
  t.equal(listed.length, 8, 'no other point is listed');
  t.ok(listed.every((p) => p.consistency === 'crash'));
});

t.test('the history has every run, VM and pruned point', async (t) => {
  const rows = await history.lastRuns({ job: 'daily', limit: 50 });
  t.equal(rows.length, 10);
  t.same(rows.map((r) => r.status).reverse(), [
    'success',
    'success',
    'success',
    'success',
    'partial',
    'success',
    'success',
    'success',
    'success',
    'success',
  ]);
  const first = (await history.run(runs[3]!.run))!;
  const a = ids('alpha');
  t.same(
    first.vms.find((v) => v.vm === 'alpha')!.pruned,
    [a[0]],
    'run 4 pruned the oldest alpha point: neither among the last two, nor the last three days, nor the newest of its week',
  );
  const v = (await history.run(runs[9]!.run))!.vms[0]!;
  t.equal(v.point, a[9]);
  t.equal(v.consistency, 'crash');
  t.equal(v.changedBlockTracking, null, 'image files: no bitmap');
  t.equal(v.bytesRead, 2 * 1024 * 1024);
  t.equal(v.bytesNew, 0, 'the same image again: nothing new');
  t.ok(v.seconds >= 0);
  const pruned = runs.flatMap((r) => r.vms.flatMap((x) => x.pruned));
  t.equal(new Set(pruned).size, pruned.length, 'no point is pruned twice');
  t.equal(pruned.length, 6 + 7, 'alpha lost 6 points, beta 5 of its job points and both manual ones');
});

t.test('the linked SureBackup job ran after each complete run, as an after-backup trigger', async (t) => {
  const fired = runs.filter((r) => r.surebackup.length > 0);
  t.equal(fired.length, 9);
  t.ok(fired.every((r) => r.surebackup[0]!.job === 'verify-daily' && r.surebackup[0]!.run !== null));
  const sb = await sbHistory.lastRuns({ job: 'verify-daily', limit: 50 });
  t.equal(sb.length, 9);
  t.ok(sb.every((r) => r.trigger === 'after-backup'));
  t.equal(verified.length, 9, 'each one ran (none overlapped: the backup runs came one after the other)');
});

t.test('a linked SureBackup job that does not exist: the run is a warning naming it', async (t) => {
  const other = loadBackupJob(
    jobFile(dir, 'other.json', {
      name: 'other',
      vms: [{ vm: 'alpha.json', source: { disks: { root: 'alpha.raw' } } }],
      surebackup: ['nope'],
    }),
  );
  const r = await runBackupJob({
    job: other,
    repo,
    history,
    runId: await history.startRun('other', 'manual'),
    log: quiet,
    fireSureBackup: fireThroughScheduler(sureBackup),
  });
  t.equal(r.status, 'warning');
  t.match(r.detail, /SureBackup job\(s\) not started: nope \(no SureBackup job named nope\)/);
  t.equal((await history.run(r.run))!.status, 'warning');
});

// The backup job scheduler's rules, with a run function that waits until told: no overlap in one
// process or across processes (the run lock), stale locks taken over, missed runs reported, errors recorded.
import t from 'tap';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { BackupJobHistory } from '../../src/backup/jobs/history.js';
import { BackupJobScheduler, type RunBackupJobFn } from '../../src/backup/jobs/scheduler.js';
import { loadBackupJob, type BackupJob } from '../../src/backup/jobs/job.js';
import { runLockFile } from '../../src/backup/jobs/run-lock.js';
import type { BackupJobRunResult } from '../../src/backup/jobs/runner.js';
import { jobFile, smallVm } from './fixtures.js';

const dir = t.testdir();
const state = join(dir, 'state');
mkdirSync(state);
smallVm(dir, 'alpha', 1);
const job = (extra: Record<string, unknown> = {}): BackupJob =>
  loadBackupJob(jobFile(dir, 'j.json', { name: 'j', vms: [{ vm: 'alpha.json', source: { disks: { root: 'alpha.raw' } } }], ...extra }));
const quiet = { info: () => undefined, warn: () => undefined };

/** A run that ends when `finish()` is called, recording it as a success. */
function gatedRun(history: BackupJobHistory): { run: RunBackupJobFn; finish(): void; started: string[] } {
  let open: (() => void) | undefined;
  const started: string[] = [];
  return {
    started,
    finish: () => open?.(),
    run: async (j, ctx) => {
      started.push(ctx.runId);
      await new Promise<void>((r) => {
        open = r;
      });
      await history.finishRun(ctx.runId, 'success', null);
      return { run: ctx.runId, job: j.name, status: 'success', detail: null, vms: [], surebackup: [] } satisfies BackupJobRunResult;
    },
  };
}

t.test('in one process: a trigger while the job runs is recorded skipped-overlap, not queued', async (t) => {
  const history = await BackupJobHistory.open(join(dir, 'a.db'));
  t.teardown(() => history.close());
  const g = gatedRun(history);
  const s = new BackupJobScheduler({ jobs: [job()], history, run: g.run, log: quiet, stateDir: state });
  const first = await s.trigger('j', 'manual');
  t.equal(first.status, 'started');
  t.ok(existsSync(runLockFile(state, 'j')), 'the run lock is taken');
  const second = await s.trigger('j', 'schedule');
  t.equal(second.status, 'skipped-overlap');
  t.match((await history.run(second.runId))!.detail, /schedule trigger arrived while the previous run was still going/);
  t.ok(s.isRunning('j'));
  g.finish();
  t.equal((await (first as { done: Promise<BackupJobRunResult | undefined> }).done)?.status, 'success');
  t.notOk(s.isRunning('j'));
  t.notOk(existsSync(runLockFile(state, 'j')), 'and given back');
  t.equal(g.started.length, 1);
  await t.rejects(s.trigger('nope', 'manual'), { code: 'BACKUP_JOB_NOT_FOUND' });
  await s.stop();
});

t.test('across processes: a live holder of the run lock makes a trigger skip; a dead one is taken over', async (t) => {
  const history = await BackupJobHistory.open(join(dir, 'b.db'));
  t.teardown(() => history.close());
  const g = gatedRun(history);
  const s = new BackupJobScheduler({ jobs: [job()], history, run: g.run, log: quiet, stateDir: state });
  t.teardown(() => s.stop());
  const other = spawn('sleep', ['60'], { stdio: 'ignore' });
  t.teardown(() => {
    other.kill('SIGKILL');
  });
  mkdirSync(join(state, 'backup-jobs'), { recursive: true });
  writeFileSync(runLockFile(state, 'j'), `${other.pid}\n`);
  const skipped = await s.trigger('j', 'schedule');
  t.equal(skipped.status, 'skipped-overlap');
  t.match((await history.run(skipped.runId))!.detail, new RegExp(`while process ${other.pid} was still running the job`));
  t.notOk(s.isRunning('j'), 'the gate was given back');
  other.kill('SIGKILL');
  await new Promise((r) => other.once('exit', r));
  const taken = await s.trigger('j', 'schedule');
  t.equal(taken.status, 'started', 'a lock of a dead process is stale');
  g.finish();
  await (taken as { done: Promise<unknown> }).done;
  t.same(
    (await history.lastRuns({ job: 'j' })).map((r) => r.status),
    ['success', 'skipped-overlap'],
  );
});

t.test('a run that throws is recorded as error; stop() cancels and records cancelled', async (t) => {
  const history = await BackupJobHistory.open(join(dir, 'c.db'));
  t.teardown(() => history.close());
  const s = new BackupJobScheduler({
    jobs: [job()],
    history,
    log: quiet,
    run: async () => {
      throw new Error('repository gone');
    },
  });
  const r = await s.trigger('j', 'manual');
  t.equal(await (r as { done: Promise<unknown> }).done, undefined);
  t.same([(await history.run(r.runId))!.status, (await history.run(r.runId))!.detail], ['error', 'repository gone']);
  const waiting = new BackupJobScheduler({
    jobs: [job()],
    history,
    log: quiet,
    run: (_j, ctx) => new Promise((_res, reject) => ctx.signal.addEventListener('abort', () => reject(new Error('stopped')))),
  });
  const w = await waiting.trigger('j', 'manual');
  await waiting.stop();
  t.equal((await history.run(w.runId))!.status, 'cancelled');
});

t.test('missed runs while the server was down: one entry, reported once, not run late', async (t) => {
  const history = await BackupJobHistory.open(join(dir, 'd.db'));
  t.teardown(() => history.close());
  const ran: string[] = [];
  const now = new Date('2026-11-10T12:00:30Z');
  const id = await history.startRun('j', 'schedule', new Date('2026-11-10T11:50:00Z'));
  await history.finishRun(id, 'success', null);
  const s = new BackupJobScheduler({
    jobs: [job({ schedule: '*/5 * * * *' })],
    history,
    log: quiet,
    now: () => now,
    run: async (_j, c) => {
      ran.push(c.runId);
      return { run: c.runId, job: 'j', status: 'success', detail: null, vms: [], surebackup: [] };
    },
  });
  const missed = await s.reportMissed();
  t.same(
    missed.map((m) => [m.job, m.count, m.first.toISOString()]),
    [['j', 2, '2026-11-10T11:55:00.000Z']],
    '11:55 and 12:00',
  );
  t.match(
    (await history.lastRuns({ job: 'j' }))[0]!.detail,
    /2 scheduled run\(s\) missed while the server was down: 2026-11-10T11:55:00.000Z … 2026-11-10T12:00:00.000Z/,
  );
  t.same(await s.reportMissed(), [], 'reported once');
  t.same(ran, [], 'nothing run late');
  const never = new BackupJobScheduler({
    jobs: [{ ...job({ schedule: '*/5 * * * *' }), name: 'fresh' }],
    history,
    log: quiet,
    now: () => now,
    run: async () => {
      throw new Error('unused');
    },
  });
  t.same(await never.reportMissed(), [], 'a job that never ran has nothing to compare with');
});

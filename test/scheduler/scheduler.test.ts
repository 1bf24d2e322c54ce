import t from 'tap';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { History } from '../../src/surebackup/history.js';
import { covers, loadJobsDir, startScheduler, Scheduler } from '../../src/scheduler/scheduler.js';
import type { RunJobFn } from '../../src/scheduler/run.js';
import { runJob } from '../../src/surebackup/runner.js';
import { fakeLab } from '../surebackup/fixtures/fake-lab.js';
import { JobGate } from '../../src/surebackup/gate.js';
import { systemClock } from '../../src/scheduler/clock.js';
import { ManualClock } from './fixtures/manual-clock.js';
import { settle } from '../helpers/ready.js';

function jobsDir(dir: string, jobs: Record<string, unknown>[]): string {
  for (const j of jobs)
    writeFileSync(join(dir, `${j.name as string}.json`), JSON.stringify({ lab: 'lab.json', verify: { vms: ['web'], role: 'web' }, ...j }));
  return dir;
}

t.test('a schedule every second fires at each second of the clock and records real runs', async (t) => {
  const dir = t.testdir();
  const history = await History.open(join(dir, 'c.db'));
  const f = fakeLab({ vms: ['web'] });
  const started: Promise<unknown>[] = [];
  const run: RunJobFn = async (s, ctx) => {
    const p = runJob(s.job, f.backend, f.runTest, { signal: ctx.signal });
    started.push(p);
    return p;
  };
  const clock = new ManualClock(new Date('2026-03-01T12:00:00.400Z'));
  const sch = await startScheduler({
    jobsDir: jobsDir(dir, [
      { name: 'every-second', schedule: '* * * * * *' },
      { name: 'nightly', schedule: '0 2 * * *' },
    ]),
    history,
    run,
    clock,
  });
  t.teardown(async () => {
    await sch.stop();
    history.close();
  });
  t.equal(clock.pending, 2, 'one timer per scheduled job');
  clock.advance(500);
  // trigger() records the run before it starts it: give a firing the turns it would need.
  await settle(() => started.length > 0, 200, 1);
  t.equal(started.length, 0, 'nothing before the first whole second');
  // A run is over once the scheduler has recorded it and released the job, a few turns after it returns.
  const settled = async (): Promise<void> => {
    await Promise.all(started);
    for (let i = 0; i < 1000 && sch.isRunning('every-second'); i++) await new Promise((r) => setImmediate(r));
  };
  for (let i = 1; i <= 3; i++) {
    clock.advance(1000);
    await settle(() => started.length >= i, 5_000, 1);
    t.equal(started.length, i, `fired at second ${i}`);
    await settled();
  }
  const runs = await history.lastRuns({ job: 'every-second' });
  t.equal(runs.length, 3, 'one run per second passed');
  t.ok(
    runs.every((r) => r.trigger === 'schedule' && r.status === 'success'),
    runs.map((r) => `${r.trigger}:${r.status}`).join(' '),
  );
  t.same(await history.lastRuns({ job: 'nightly' }), [], 'the nightly job did not fire');
  const list = sch.list(new Date('2026-03-01T12:00:00Z'));
  t.same(list.find((j) => j.name === 'nightly')!.next, [
    '2026-03-02T02:00:00.000Z',
    '2026-03-03T02:00:00.000Z',
    '2026-03-04T02:00:00.000Z',
  ]);
  t.same(sch.list().find((j) => j.name === 'nightly')!.next[0], '2026-03-02T02:00:00.000Z', 'list counts from the clock by default');
  await sch.stop();
  t.equal(clock.pending, 0, 'stop disarms every timer');
});

t.test('on the system clock a schedule fires on its own', async (t) => {
  const dir = t.testdir();
  const history = await History.open(join(dir, 'c.db'));
  const sch = await startScheduler({
    jobsDir: jobsDir(dir, [{ name: 'every-second', schedule: '* * * * * *' }]),
    history,
    run: async () => ({ result: 'success', vms: [], labKept: false }),
  });
  t.teardown(async () => {
    await sch.stop();
    history.close();
  });
  // Readiness, not a guess: wait until two runs are recorded (a second apart), with a generous deadline.
  const passed = async (): Promise<number> =>
    (await history.lastRuns({ job: 'every-second' })).filter((r) => r.status === 'success').length;
  await settle(async () => (await passed()) >= 2, 15_000, 50);
  const runs = await history.lastRuns({ job: 'every-second' });
  t.ok((await passed()) >= 2, `two scheduled runs within 15 s (${runs.length} recorded)`);
  t.ok(runs.every((r) => r.trigger === 'schedule'));
});

t.test('systemClock: fires at its time, not before; cancel keeps it from firing', async (t) => {
  const t0 = Date.now();
  const fired: string[] = [];
  const cancel = systemClock.at(new Date(t0 + 20), () => fired.push('cancelled'));
  cancel();
  await new Promise<void>((resolve) =>
    systemClock.at(new Date(t0 + 60), () => {
      fired.push('due');
      resolve();
    }),
  );
  t.ok(Date.now() >= t0 + 60 - 1, 'not before its time');
  t.same(fired, ['due'], 'the cancelled timer, due earlier, never fired');
  await new Promise<void>((resolve) => systemClock.at(new Date(t0 - 1000), resolve));
  t.pass('a time already passed fires at once');
});

t.test('overlapping triggers do not double-run; the extra ones are recorded as skipped-overlap', async (t) => {
  const dir = t.testdir();
  const history = await History.open(join(dir, 'c.db'));
  let live = 0;
  let peak = 0;
  let runs = 0;
  // The run lasts until the test ends it: the overlap is a state, not a race with a timer.
  let finish = (): void => undefined;
  const slow: RunJobFn = async (_s, ctx) => {
    live++;
    runs++;
    peak = Math.max(peak, live);
    try {
      await new Promise<void>((r, j) => {
        finish = r;
        ctx.signal.addEventListener('abort', () => j(ctx.signal.reason));
      });
    } finally {
      live--;
    }
    return { result: 'success', vms: [], labKept: false };
  };
  const clock = new ManualClock(new Date('2026-03-01T12:00:00.500Z'));
  const sch = await startScheduler({
    jobsDir: jobsDir(dir, [{ name: 'slow', schedule: '* * * * * *', afterBackup: true }]),
    history,
    run: slow,
    clock,
  });
  t.teardown(() => history.close());
  clock.advance(1000);
  await settle(() => runs >= 1, 5_000, 1);
  t.equal(runs, 1, 'the schedule started a run');
  const manual = await sch.trigger('slow', 'manual');
  t.equal(manual.status, 'skipped-overlap');
  const hooked = await sch.notifyBackup([{ name: 'web' }]);
  t.same(
    hooked.map((o) => [o.job, o.status]),
    [['slow', 'skipped-overlap']],
    'a backup during the run is recorded, not queued',
  );
  clock.advance(2000);
  finish();
  await settle(() => !sch.isRunning('slow'), 10_000, 10);
  clock.advance(1000);
  await settle(() => runs >= 2, 5_000, 1);
  t.equal(runs, 2, 'the next fire time after the run ended starts a new run');
  finish();
  await sch.stop();
  t.equal(peak, 1, 'never two runs of one job at once');
  const all = await history.lastRuns({ job: 'slow', limit: 100 });
  const skipped = all.filter((r) => r.status === 'skipped-overlap');
  t.equal(
    skipped.length,
    4,
    `the manual, the after-backup and two scheduled triggers during the run were skipped: ${skipped.map((r) => r.trigger).join(' ')}`,
  );
  t.ok(
    skipped.some((r) => r.trigger === 'after-backup') &&
      skipped.some((r) => r.trigger === 'manual') &&
      skipped.some((r) => r.trigger === 'schedule'),
  );
  t.equal(all.filter((r) => r.status !== 'skipped-overlap').length, runs, 'each real run has one row');
  t.ok(all.some((r) => r.status === 'success'));
});

t.test('missed runs while the server was down are reported once', async (t) => {
  const dir = t.testdir();
  const history = await History.open(join(dir, 'c.db'));
  t.teardown(() => history.close());
  const jobs = loadJobsDir(
    jobsDir(dir, [
      { name: 'nightly', schedule: '0 2 * * *' },
      { name: 'fresh', schedule: '0 2 * * *' },
    ]),
  );
  const id = await history.startRun('nightly', 'schedule', new Date('2026-01-07T02:00:00Z'));
  await history.finishRun(id, { result: 'success', vms: [], labKept: false });
  const warnings: string[] = [];
  const clock = new ManualClock(new Date('2026-01-10T12:00:00Z'));
  const s1 = new Scheduler({
    jobs,
    history,
    run: async () => undefined,
    clock,
    log: { info: () => undefined, warn: (l) => warnings.push(l) },
  });
  const missed = await s1.reportMissed();
  t.same(
    missed.map((m) => [m.job, m.count, m.first.toISOString()]),
    [['nightly', 3, '2026-01-08T02:00:00.000Z']],
    'a job that never ran reports nothing',
  );
  const row = (await history.lastRuns({ job: 'nightly' }))[0]!;
  t.equal(row.status, 'missed');
  t.equal(row.dueAt, '2026-01-08T02:00:00.000Z');
  t.match(row.detail!, /3 scheduled run\(s\) missed .* 2026-01-08T02:00:00.000Z … 2026-01-10T02:00:00.000Z/);
  t.match(warnings[0]!, /job nightly: 3 scheduled run/);
  t.same(await new Scheduler({ jobs, history, run: async () => undefined, clock }).reportMissed(), [], 'not reported twice');
  t.same(await history.passRate({ job: 'nightly' }), { runs: 1, passed: 1, rate: 1 }, 'a missed run is not counted as a run');
});

t.test('after-backup triggers only jobs covering a backed-up VM; errors are recorded', async (t) => {
  const dir = t.testdir();
  const history = await History.open(join(dir, 'c.db'));
  const sch = await startScheduler({
    history,
    run: async (s) => {
      if (s.name === 'db-job') throw new Error('lab exploded');
    },
    jobsDir: jobsDir(dir, [
      { name: 'web-job', afterBackup: true },
      { name: 'db-job', afterBackup: true, verify: { vms: ['db'] } },
      { name: 'plain' },
    ]),
  });
  t.teardown(async () => {
    await sch.stop();
    history.close();
  });
  const out = await sch.notifyBackup([{ name: 'db' }]);
  t.equal(out.length, 1);
  if (out[0]!.status === 'started') await out[0]!.done;
  const r = (await history.lastRuns({ job: 'db-job' }))[0]!;
  t.equal(r.trigger, 'after-backup');
  t.equal(r.status, 'error');
  t.equal(r.detail, 'lab exploded');
  t.same(await history.lastRuns({ job: 'plain' }), []);
  await t.rejects(sch.trigger('nope', 'manual'), { code: 'JOB_NOT_FOUND' });
});

t.test('covers: the VMs a job names, its application group, every VM, or those with its tag', (t) => {
  const job = (verify: Record<string, unknown>, group: string[] = []): Parameters<typeof covers>[0] => ({
    name: 'j',
    file: 'j.json',
    job: { name: 'j', lab: {}, point: 'latest', concurrency: 1, applicationGroup: group.map((name) => ({ name })), verify },
  });
  const web = { name: 'web', tags: ['frontend'] };
  const db = { name: 'db', tags: ['backend'] };
  t.ok(covers(job({ vms: ['web'] }), web));
  t.notOk(covers(job({ vms: ['web'] }), db), 'a named list covers only its VMs');
  t.ok(covers(job({ vms: ['web'] }, ['db']), db), 'the application group boots the new point of db too');
  t.ok(covers(job({ vms: 'all' }), db));
  t.ok(covers(job({}), web), 'no list is every VM');
  t.ok(covers(job({ tag: 'frontend' }), web));
  t.notOk(covers(job({ tag: 'frontend' }), db), 'a tag covers only the VMs carrying it');
  t.notOk(covers(job({ vms: 'all', tag: 'frontend' }), { name: 'untagged' }));
  t.notOk(covers(job({ vms: ['web'], tag: 'backend' }), db), 'a named list wins over the tag, as in the runner');
  t.end();
});

t.test('await startScheduler({jobsDir}) alone: configured catalog and real runs (here: bad input recorded, nothing booted)', async (t) => {
  const dir = t.testdir();
  const saved = { ...process.env };
  process.env.RESTORELAB_STATE_DIR = join(dir, 'state');
  process.env.RESTORELAB_REPO = join(dir, 'no-repo');
  t.teardown(() => {
    process.env = saved;
  });
  const sch = await startScheduler({ jobsDir: jobsDir(dir, [{ name: 'after', afterBackup: true }]) });
  const [o] = await sch.notifyBackup([{ name: 'web' }]);
  t.equal(o?.status, 'started');
  if (o?.status === 'started') await o.done;
  await sch.stop();
  const { loadConfig } = await import('../../src/config/config.js');
  const h = await History.open(loadConfig().catalog);
  t.teardown(() => h.close());
  const r = (await h.lastRuns({ job: 'after' }))[0]!;
  t.equal(r.trigger, 'after-backup');
  t.equal(r.status, 'error');
  t.match(r.detail!, /no-repo/, `the repository error is recorded: ${r.detail}`);
});

t.test(
  'a shared JobGate: a run started elsewhere (the API) makes a scheduled trigger skip; reload picks up new and deleted jobs',
  async (t) => {
    const dir = t.testdir();
    const history = await History.open(join(dir, 'c.db'));
    const gate = new JobGate(3, 8192);
    let runs = 0;
    const sch = await startScheduler({
      jobsDir: jobsDir(dir, [{ name: 'nightly', schedule: '0 2 * * *' }]),
      history,
      gate,
      run: async () => {
        runs++;
      },
    });
    t.teardown(async () => {
      await sch.stop();
      history.close();
    });
    const release = gate.claim('nightly', new AbortController());
    t.ok(release, 'the API claims the job');
    t.equal(gate.claim('nightly', new AbortController()), undefined, 'a second claim is refused');
    t.ok(sch.isRunning('nightly'), 'the scheduler sees the run it did not start');
    t.equal((await sch.trigger('nightly', 'schedule')).status, 'skipped-overlap');
    release!();
    const started = await sch.trigger('nightly', 'schedule');
    t.equal(started.status, 'started');
    if (started.status === 'started') await started.done;
    t.equal(runs, 1);
    t.notOk(gate.isRunning('nightly'), 'released after the run');

    jobsDir(dir, [{ name: 'hourly', schedule: '0 * * * *' }]);
    t.same(
      sch.jobs.map((j) => j.name),
      ['nightly'],
      'not seen before reload',
    );
    sch.reload();
    t.same(sch.jobs.map((j) => j.name).sort(), ['hourly', 'nightly']);
    rmSync(join(dir, 'nightly.json'));
    sch.reload();
    t.same(
      sch.jobs.map((j) => j.name),
      ['hourly'],
    );
    await t.rejects(sch.trigger('nightly', 'manual'), /no SureBackup job named nightly/);
  },
);

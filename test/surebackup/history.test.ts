import t from 'tap';
import { join } from 'node:path';
import { History } from '../../src/surebackup/history.js';
import { runJob, type Job } from '../../src/surebackup/runner.js';
import { fakeLab } from './fixtures/fake-lab.js';

const job = (over: Partial<Job> = {}): Job => ({
  name: 'nightly',
  lab: {},
  point: 'latest',
  concurrency: 2,
  applicationGroup: [],
  verify: { vms: 'all', role: 'ssh' },
  ...over,
});

t.test('runs, VM and test rows; cap of 2 over 5 VMs holds in the catalog timings', async (t) => {
  const path = join(t.testdir(), 'catalog.db');
  const h = History.open(path);
  t.teardown(() => h.close());
  h.recordJob('nightly', job(), '/jobs/nightly.json');
  const f = fakeLab({ delayMs: 25 });
  const id = h.startRun('nightly', 'manual');
  const r = await runJob(job(), f.backend, f.runTest);
  h.finishRun(id, r, { html: '/x/report.html' });

  const timings = h.vmTimings(id);
  t.equal(timings.length, 5);
  const edges = timings
    .flatMap(
      (v) =>
        [
          [v.startedMs, 1],
          [v.endedMs, -1],
        ] as const,
    )
    .sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let cur = 0;
  let peak = 0;
  for (const [, d] of edges) {
    cur += d;
    peak = Math.max(peak, cur);
  }
  t.equal(peak, 2, 'never more than 2 at once, and the cap was used');

  const stored = h.run(id)!;
  t.equal(stored.status, 'success');
  t.equal(stored.reportHtml, '/x/report.html');
  t.equal(stored.vms[0]!.tests.length, 5);
  t.same(
    stored.vms[0]!.tests.map((x) => x.kind),
    ['heartbeat', 'ping', 'tcp', 'screenshot', 'integrity'],
  );
});

t.test('history queries: last N, pass rate, recovery trend; migrations are idempotent', async (t) => {
  const path = join(t.testdir(), 'catalog.db');
  const h = History.open(path);
  const good = fakeLab({ delayMs: 5, vms: ['web'] });
  const bad = fakeLab({ delayMs: 5, vms: ['web'], failing: ['web'] });
  for (const f of [good, bad, good, good]) {
    const id = h.startRun('nightly', 'schedule');
    h.finishRun(id, await runJob(job({ verify: { vms: 'all', role: 'ssh' } }), f.backend, f.runTest));
  }
  h.recordNonRun('nightly', 'schedule', 'skipped-overlap', 'previous run still going');
  h.recordNonRun('other', 'schedule', 'missed', 'server down', new Date('2026-01-01T02:00:00Z'));
  h.close();

  const h2 = History.open(path); // reopening runs no migration twice
  t.teardown(() => h2.close());
  const last = h2.lastRuns({ job: 'nightly', limit: 3 });
  t.equal(last.length, 3);
  t.equal(last[0]!.status, 'skipped-overlap');
  t.same(h2.passRate({ job: 'nightly' }), { runs: 4, passed: 3, rate: 0.75 });
  t.same(h2.passRate({ job: 'nightly', lastN: 2 }), { runs: 2, passed: 2, rate: 1 });
  const trend = h2.recoveryTrend('web');
  t.equal(trend.length, 4);
  t.same(
    trend.map((p) => p.result),
    ['success', 'failed', 'success', 'success'],
    'oldest first',
  );
  t.ok(trend.every((p) => p.recoverySeconds > 0));
  t.equal(h2.lastRuns({ job: 'other' })[0]!.dueAt, '2026-01-01T02:00:00.000Z');
  t.ok(h2.lastRunTime('nightly'));
  t.equal(h2.lastRunTime('other'), undefined, 'a missed run is not a run');
  const steps = h2.db.prepare("SELECT COUNT(*) AS n FROM schema_migrations WHERE area = 'surebackup'").get() as { n: number };
  t.equal(steps.n, 1);
});

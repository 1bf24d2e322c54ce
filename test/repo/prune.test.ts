import t from 'tap';
import { join } from 'node:path';
import { planPrune, pruneRepository } from '../../src/repo/prune.js';
import { initRepository } from '../../src/repo/repository.js';
import type { RestorePoint } from '../../src/repo/contract.js';
import { makePoint, SMALL, tmpDir } from './fixtures/points.js';

function point(id: string, vm: string, time: string): RestorePoint {
  return {
    id,
    vm: { name: vm, memoryMiB: 1, vcpus: 1, disks: [], nics: [] },
    disks: [],
    consistency: 'crash',
    time,
    source: 's',
    stats: { bytesRead: 0, bytesNew: 0, bytesReused: 0, bytesZero: 0, seconds: 0 },
  };
}

// Two points a day for 10 days in Nov 2026, plus one each in Jan 2025 and Jun 2026.
const series: RestorePoint[] = [point('y2025', 'web', '2025-01-15T12:00:00Z'), point('jun', 'web', '2026-06-10T12:00:00Z')];
for (let day = 1; day <= 10; day++) {
  for (const h of ['06', '18']) series.push(point(`d${day}-${h}`, 'web', `2026-11-${String(day).padStart(2, '0')}T${h}:00:00Z`));
}
series.push(point('db1', 'db', '2026-11-10T18:00:00Z'));

const ids = (ds: { id: string }[]): string[] => ds.map((d) => d.id).sort();

t.test('keep-last keeps the newest N per VM', async (t) => {
  const plan = planPrune(series, { keepLast: 3 });
  t.same(ids(plan.kept), ['d10-06', 'd10-18', 'd9-18', 'db1']);
  t.equal(plan.removed.length, series.length - 4);
  t.same(plan.kept.find((k) => k.id === 'd10-18')?.reasons, ['last 1']);
});

t.test('daily keeps the newest point of each of the last N days', async (t) => {
  const plan = planPrune(series, { keepDaily: 3 });
  t.same(ids(plan.kept.filter((k) => k.vm === 'web')), ['d10-18', 'd8-18', 'd9-18']);
  t.same(plan.kept.find((k) => k.id === 'd9-18')?.reasons, ['daily 2026-11-09']);
});

t.test('hourly, weekly, monthly, yearly, and rules combined', async (t) => {
  t.same(ids(planPrune(series, { keepHourly: 2 }).kept.filter((k) => k.vm === 'web')), ['d10-06', 'd10-18']);
  // 2026-11-10 is in ISO week 46, 11-01 (a Sunday) in week 44.
  const weekly = planPrune(series, { keepWeekly: 3 }).kept.filter((k) => k.vm === 'web');
  t.same(ids(weekly), ['d1-18', 'd10-18', 'd8-18']);
  t.same(weekly.find((k) => k.id === 'd1-18')?.reasons, ['weekly 2026-W44']);
  t.same(ids(planPrune(series, { keepMonthly: 5 }).kept.filter((k) => k.vm === 'web')), ['d10-18', 'jun', 'y2025']);
  t.same(ids(planPrune(series, { keepYearly: 5 }).kept.filter((k) => k.vm === 'web')), ['d10-18', 'y2025']);
  const both = planPrune(series, { keepLast: 1, keepMonthly: 2 });
  t.same(both.kept.find((k) => k.id === 'd10-18')?.reasons, ['last 1', 'monthly 2026-11']);
  t.same(ids(both.kept.filter((k) => k.vm === 'web')), ['d10-18', 'jun']);
});

t.test('no rule at all is refused', async (t) => {
  t.throws(() => planPrune(series, {}), /no keep rule given/);
  t.throws(() => planPrune(series, { keepLast: 0 }), /no keep rule given/);
  t.throws(() => planPrune(series, { keepLast: -1 }), /whole numbers/);
});

t.test('dry run removes nothing; a real run removes only manifests', async (t) => {
  const repo = await initRepository(join(tmpDir(t), 'repo'), { chunkSize: SMALL });
  const p1 = await makePoint(repo, 'web', [1], { time: '2026-11-01T00:00:00Z' });
  const p2 = await makePoint(repo, 'web', [2], { time: '2026-11-02T00:00:00Z' });
  const p3 = await makePoint(repo, 'db', [3], { time: '2026-11-01T00:00:00Z' });
  const dry = await pruneRepository(repo, { keepLast: 1, dryRun: true });
  t.equal(dry.dryRun, true);
  t.same(ids(dry.removed), [p1.id]);
  t.equal((await repo.listPoints()).length, 3);
  const onlyDb = await pruneRepository(repo, { keepLast: 1, vm: 'db' });
  t.same(onlyDb.removed, []);
  const real = await pruneRepository(repo, { keepLast: 1 });
  t.same(ids(real.removed), [p1.id]);
  t.same(ids(await repo.listPoints()), [p2.id, p3.id].sort());
  let chunks = 0;
  for await (const _ of repo.chunks.list()) chunks++;
  t.equal(chunks, 3, 'chunks stay until gc');
  const lock = await repo.lock('shared', 'backup');
  await t.rejects(pruneRepository(repo, { keepLast: 1 }), /busy/);
  t.ok(await pruneRepository(repo, { keepLast: 1, dryRun: true }), 'a dry run runs beside a backup');
  await lock.release();
});

// `surebackup schedule list` and `surebackup history` as scripts call them.
import t from 'tap';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { exec } from '../../src/host/exec.js';
import { projectPath } from '../../src/paths.js';
import { loadConfig } from '../../src/config/config.js';
import { History } from '../../src/surebackup/history.js';
import { runJob } from '../../src/surebackup/runner.js';
import { fakeLab } from '../surebackup/fixtures/fake-lab.js';

const cli = (args: string[], env: Record<string, string>) =>
  exec(process.execPath, [projectPath('bin', 'restorelab.js'), ...args], { timeoutMs: 60_000, env: { ...process.env, ...env } });

t.test('schedule list --json: every job with its next fire times', async (t) => {
  const dir = t.testdir();
  writeFileSync(join(dir, 'a.json'), JSON.stringify({ name: 'hourly', lab: 'l.json', verify: { vms: ['web'] }, schedule: '0 * * * *' }));
  writeFileSync(join(dir, 'b.json'), JSON.stringify({ name: 'on-backup', lab: 'l.json', verify: { vms: 'all' }, afterBackup: true }));
  const r = await cli(['surebackup', 'schedule', 'list', '--jobs', dir, '--json'], { RESTORELAB_STATE_DIR: join(dir, 'state') });
  t.equal(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout) as { jobs: { name: string; schedule: string | null; afterBackup: boolean; next: string[] }[] };
  t.same(
    out.jobs.map((j) => [j.name, j.schedule, j.afterBackup, j.next.length]),
    [
      ['hourly', '0 * * * *', false, 3],
      ['on-backup', null, true, 0],
    ],
  );
  t.ok(out.jobs[0]!.next.every((n) => n.endsWith(':00:00.000Z')));
  writeFileSync(join(dir, 'c.json'), JSON.stringify({ name: 'bad', lab: 'l.json', verify: { vms: ['web'] }, schedule: '61 * * * *' }));
  const bad = await cli(['surebackup', 'schedule', 'list', '--jobs', dir, '--json'], { RESTORELAB_STATE_DIR: join(dir, 'state') });
  t.equal(bad.code, 2);
  t.match(bad.stdout, /BAD_SCHEDULE/);
});

t.test('history --job NAME --json: runs newest first, pass rate, trend', async (t) => {
  const state = t.testdir();
  const cfg = loadConfig({ env: { ...process.env, RESTORELAB_STATE_DIR: state } });
  const h = await History.open(cfg.catalog);
  const f = fakeLab({ vms: ['web'] });
  for (let i = 0; i < 2; i++) {
    const id = await h.startRun('nightly', 'schedule');
    await h.finishRun(
      id,
      await runJob(
        { name: 'nightly', lab: {}, point: 'latest', concurrency: 1, applicationGroup: [], verify: { vms: 'all', role: 'web' } },
        f.backend,
        f.runTest,
      ),
    );
  }
  await h.recordNonRun('nightly', 'schedule', 'missed', '1 scheduled run(s) missed');
  await h.recordNonRun('other', 'manual', 'skipped-overlap', 'busy');
  h.close();
  const r = await cli(['surebackup', 'history', '--job', 'nightly', '--json'], { RESTORELAB_STATE_DIR: state });
  t.equal(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout) as {
    passRate: { rate: number };
    runs: { status: string; vms: { name: string }[] }[];
    recoveryTrend: Record<string, unknown[]>;
  };
  t.same(
    out.runs.map((x) => x.status),
    ['missed', 'success', 'success'],
  );
  t.equal(out.passRate.rate, 1);
  t.equal(out.recoveryTrend.web!.length, 2);
  const all = JSON.parse((await cli(['surebackup', 'history', '--json'], { RESTORELAB_STATE_DIR: state })).stdout) as { runs: unknown[] };
  t.equal(all.runs.length, 4);
});

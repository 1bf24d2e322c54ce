// `restorelab server` fires a scheduled backup job (a cron of every second), waited for in the
// history, not slept for; runs of the job never overlap; retention holds across runs.
import t from 'tap';
import { spawn } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { projectPath } from '../../src/paths.js';
import { BackupJobHistory } from '../../src/backup/jobs/history.js';
import { cliHome, jobFile } from './fixtures.js';

const dir = t.testdir();
const { state, env, cli, alphaVm } = await cliHome(dir);

t.test('the server fires a scheduled job; runs of one job never overlap', async (t) => {
  const tickDir = join(dir, 'tick-jobs');
  mkdirSync(tickDir);
  jobFile(tickDir, 'tick.json', { name: 'tick', vms: [alphaVm], schedule: '* * * * * *', retention: { keepLast: 2 } });
  const server = spawn(
    process.execPath,
    [projectPath('bin', 'restorelab.js'), 'server', '--no-nfs', '--no-api', '--backup-jobs', tickDir, '--json'],
    { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let stdout = '';
  let stderr = '';
  server.stdout.on('data', (d: Buffer) => {
    stdout += d.toString();
  });
  server.stderr.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  const exited = new Promise<number | null>((resolve) => server.on('exit', (code) => resolve(code)));
  t.teardown(() => {
    if (server.exitCode === null) server.kill('SIGKILL');
  });

  const history = await BackupJobHistory.open(join(state, 'catalog.sqlite'));
  t.teardown(() => history.close());
  const deadline = Date.now() + 90_000;
  let done: Awaited<ReturnType<typeof history.lastRuns>> = [];
  while (Date.now() < deadline && server.exitCode === null) {
    done = (await history.lastRuns({ job: 'tick', limit: 100 })).filter((r) => r.status === 'success');
    if (done.length >= 3) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  t.ok(done.length >= 3, `three scheduled runs succeeded (server stderr: ${stderr.slice(-2000)})`);
  server.kill('SIGTERM');
  t.equal(await exited, 0, 'the server stops cleanly on SIGTERM');
  t.same((JSON.parse(stdout) as { backupJobs: string[] }).backupJobs, ['tick'], 'the server says which backup jobs it schedules');

  const all = await history.lastRuns({ job: 'tick', limit: 1000 });
  t.ok(all.every((r) => r.trigger === 'schedule'));
  const real = all.filter((r) => r.status !== 'skipped-overlap').sort((a, b) => a.startedAt.localeCompare(b.startedAt));
  for (let i = 1; i < real.length; i++) {
    const prev = real[i - 1]!;
    t.ok(prev.endedAt !== null && prev.endedAt <= real[i]!.startedAt, `run ${real[i]!.id} started after ${prev.id} ended`);
  }
  const skipped = all.filter((r) => r.status === 'skipped-overlap');
  t.ok(
    skipped.every((r) => /previous run was still going/.test(r.detail ?? '')),
    `${skipped.length} trigger(s) skipped while a run was going`,
  );
  const points = (JSON.parse((await cli(['points', '--json', '--vm', 'alpha'])).stdout) as { points: { id: string }[] }).points;
  t.equal(points.length, 2, 'keepLast 2 held across the scheduled runs');
  const newest = (await history.run(done[0]!.id))!;
  t.ok(
    points.some((p) => p.id === newest.vms[0]!.point),
    'the newest scheduled point is kept',
  );
});

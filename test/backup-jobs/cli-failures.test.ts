// `restorelab backup-job run` failing as scripts see it: exit codes, nothing pruned, linked SureBackup jobs that cannot run.
import t from 'tap';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { runLockFile } from '../../src/backup/jobs/run-lock.js';
import { cliHome, jobFile, type RunJson } from './fixtures.js';

const dir = t.testdir();
const { state, sureBackupJobs, cli, alphaVm } = await cliHome(dir);

t.test('failures: exit codes scripts can act on', async (t) => {
  const gone = jobFile(dir, 'gone.json', {
    name: 'gone',
    vms: [{ vm: 'alpha.json', source: { disks: { root: 'missing.raw' } } }],
    retention: { keepLast: 1 },
  });
  const before = JSON.parse((await cli(['points', '--json'])).stdout) as { points: unknown[] };
  const r = await cli(['backup-job', 'run', gone, '--json']);
  t.equal(r.code, 1, 'a VM not backed up is a failure');
  const out = JSON.parse(r.stdout) as RunJson;
  t.equal(out.status, 'failed');
  t.match(out.vms[0]!.error, /missing\.raw/);
  t.same(
    (JSON.parse((await cli(['points', '--json'])).stdout) as { points: unknown[] }).points,
    before.points,
    'nothing pruned, nothing added',
  );

  const bad = jobFile(dir, 'bad.json', { name: 'bad', vms: [alphaVm], schedule: '0 0 31 2 * * *' });
  const b = await cli(['backup-job', 'run', bad, '--json']);
  t.equal(b.code, 2, 'a bad job file is bad input');
  t.match(b.stdout, /BAD_SCHEDULE|SCHEMA_INVALID|BACKUP_DISK/);
  // Another process (here: a stand-in holding the run lock) runs the job: the CLI does not start a second run.
  const holder = spawn('sleep', ['60'], { stdio: 'ignore' });
  t.teardown(() => {
    holder.kill('SIGKILL');
  });
  mkdirSync(join(state, 'backup-jobs'), { recursive: true });
  writeFileSync(runLockFile(state, 'gone'), `${holder.pid}\n`);
  const busy = await cli(['backup-job', 'run', gone, '--json']);
  t.equal(busy.code, 6, 'busy');
  t.match(busy.stdout, /BACKUP_JOB_BUSY/);
  t.match(busy.stdout, new RegExp(`process ${holder.pid}`));
  holder.kill('SIGKILL');
  const hist = JSON.parse((await cli(['backup-job', 'history', 'gone', '--json'])).stdout) as {
    runs: { status: string; detail: string }[];
  };
  t.same(
    hist.runs.map((r) => r.status),
    ['skipped-overlap', 'failed'],
    'the refused trigger is in the history',
  );

  const unknown = await cli(['backup-job', 'run', 'nope', '--json']);
  t.equal(unknown.code, 5);
  t.match(unknown.stdout, /BACKUP_JOB_NOT_FOUND/);

  const linked = jobFile(dir, 'linked.json', {
    name: 'linked',
    vms: [{ vm: 'alpha.json', source: { disks: { root: 'alpha.raw' } } }],
    surebackup: ['no-such-job'],
  });
  const l = await cli(['backup-job', 'run', linked, '--json']);
  t.equal(l.code, 3, 'backed up, but its verification could not run');
  const lo = JSON.parse(l.stdout) as RunJson;
  t.equal(lo.status, 'warning');
  t.same(
    lo.surebackup.map((s) => [s.job, s.status]),
    [['no-such-job', 'not-found']],
  );

  // A linked job that exists runs in this process (no server here): it names no role and no tests, so its run ends in error before anything boots.
  jobFile(sureBackupJobs, 'check.json', { name: 'check', lab: 'no-such-lab.json', verify: { vms: ['alpha'] } });
  const here = jobFile(dir, 'here.json', {
    name: 'here',
    vms: [{ vm: 'alpha.json', source: { disks: { root: 'alpha.raw' } } }],
    surebackup: ['check'],
  });
  const hr = await cli(['backup-job', 'run', here, '--json']);
  t.equal(hr.code, 3, hr.stderr);
  const ho = JSON.parse(hr.stdout) as RunJson & { surebackup: { run: string | null; detail: string | null }[] };
  t.equal(ho.status, 'success', 'the backup itself succeeded');
  t.equal(ho.surebackup[0]!.job, 'check');
  t.ok(ho.surebackup[0]!.run, 'this process started a SureBackup run');
  t.equal(ho.surebackup[0]!.status, 'error');
  t.match(ho.surebackup[0]!.detail, /VM alpha has no role and no tests/, "with the run's reason");
});

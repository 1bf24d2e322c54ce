// Backup job files: what loads, and every bad file refused before anything is read or written, with a code and the place to fix.
import t from 'tap';
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { findBackupJob, loadBackupJob, loadBackupJobsDir, scanBackupJobsDir } from '../../src/backup/jobs/job.js';
import { projectPath } from '../../src/paths.js';
import { jobFile, smallVm } from './fixtures.js';

t.test('a valid job: paths relative to the job file become absolute, defaults filled in', async (t) => {
  const dir = t.testdir();
  const a = smallVm(dir, 'alpha', 1);
  mkdirSync(join(dir, 'scripts'));
  writeFileSync(join(dir, 'scripts', 'pre.sh'), '#!/bin/sh\nexit 0\n');
  chmodSync(join(dir, 'scripts', 'pre.sh'), 0o755);
  const f = jobFile(dir, 'j.json', {
    name: 'j',
    vms: [
      { vm: 'alpha.json', source: { disks: { root: 'alpha.raw' } } },
      { vm: 'alpha2.json', source: { qmp: 'run/b.qmp', qga: '/run/b.qga' } },
    ],
    retention: { keepLast: 2 },
    schedule: '*/5 * * * *',
    hostScripts: { preFreeze: 'scripts/pre.sh' },
    surebackup: ['nightly'],
  });
  writeFileSync(join(dir, 'alpha2.json'), JSON.stringify({ name: 'beta', memoryMiB: 64, vcpus: 1, disks: [{ name: 'root' }], nics: [] }));
  const job = loadBackupJob(f);
  t.equal(job.consistency, 'crash');
  t.equal(job.requireConsistency, false);
  t.same(
    job.vms.map((v) => v.vm.name),
    ['alpha', 'beta'],
  );
  t.same(job.vms[0]!.source, { kind: 'disks', disks: { root: a.image } });
  t.same(job.vms[1]!.source, { kind: 'qmp', qmp: join(dir, 'run/b.qmp'), qga: '/run/b.qga' });
  t.same(job.hostScripts, { preFreeze: join(dir, 'scripts', 'pre.sh') });
  t.same(job.surebackup, ['nightly']);
  t.equal(job.repository, undefined, 'no repository: the configured one');
});

t.test('the shipped examples load', async (t) => {
  const jobs = loadBackupJobsDir(projectPath('lab-templates', 'backup-jobs'));
  t.ok(jobs.length >= 2);
  t.ok(jobs.some((j) => j.vms.some((v) => v.source.kind === 'disks')) && jobs.some((j) => j.vms.some((v) => v.source.kind === 'qmp')));
});

t.test('bad files: a code, and a message naming the file and the field', async (t) => {
  const dir = t.testdir();
  smallVm(dir, 'alpha', 1);
  const vm = { vm: 'alpha.json', source: { disks: { root: 'alpha.raw' } } };
  const cases: [string, unknown, string, RegExp][] = [
    ['unknown property', { name: 'x', vms: [vm], keep: 3 }, 'SCHEMA_INVALID', /unknown property "keep"/],
    ['no vms', { name: 'x', vms: [] }, 'SCHEMA_INVALID', /\/vms/],
    ['bad name', { name: '../x', vms: [vm] }, 'SCHEMA_INVALID', /\/name/],
    [
      'two sources',
      { name: 'x', vms: [{ vm: 'alpha.json', source: { disks: { root: 'a' }, domain: 'web' } }] },
      'BACKUP_JOB_SOURCE',
      /\/vms\/0\/source names 2 sources \(disks, domain\)/,
    ],
    ['no source', { name: 'x', vms: [{ vm: 'alpha.json', source: {} }] }, 'BACKUP_JOB_SOURCE', /no source/],
    [
      'qga without qmp',
      { name: 'x', vms: [{ vm: 'alpha.json', source: { domain: 'web', qga: '/q' } }] },
      'SCHEMA_INVALID',
      /\/vms\/0\/source/,
    ],
    [
      'bad consistency',
      { name: 'x', vms: [vm], consistency: 'perfect' },
      'SCHEMA_INVALID',
      /consistency: must be one of "crash", "filesystem", "application"/,
    ],
    ['negative keep', { name: 'x', vms: [vm], retention: { keepDaily: -1 } }, 'SCHEMA_INVALID', /\/retention\/keepDaily/],
    ['unknown keep rule', { name: 'x', vms: [vm], retention: { keepForever: 1 } }, 'SCHEMA_INVALID', /unknown property "keepForever"/],
    ['retention keeps nothing', { name: 'x', vms: [vm], retention: { keepLast: 0 } }, 'BACKUP_JOB_RETENTION', /retention keeps no point/],
    ['bad cron', { name: 'x', vms: [vm], schedule: '0 25 * * *' }, 'BAD_SCHEDULE', /schedule "0 25 \* \* \*"/],
    ['VM twice', { name: 'x', vms: [vm, vm] }, 'BACKUP_JOB_VM_TWICE', /\/vms\/1 .* is VM alpha again/],
    ['missing VM definition', { name: 'x', vms: [{ vm: 'nope.json', source: { disks: { root: 'a' } } }] }, 'FILE_UNREADABLE', /nope\.json/],
    [
      'unknown disk',
      { name: 'x', vms: [{ vm: 'alpha.json', source: { disks: { data: 'a.raw' } } }] },
      'BACKUP_DISK_UNKNOWN',
      /disk "data" is not in the definition of VM alpha/,
    ],
    ['missing script', { name: 'x', vms: [vm], hostScripts: { postThaw: 'thaw.sh' } }, 'SCRIPT_NOT_FOUND', /hostScripts\.postThaw/],
  ];
  for (const [what, body, code, msg] of cases) {
    const f = jobFile(dir, 'bad.json', body as Record<string, unknown>);
    t.throws(() => loadBackupJob(f), { code, message: msg }, what);
  }
  writeFileSync(join(dir, 'syntax.json'), '{"name": "x",');
  t.throws(() => loadBackupJob(join(dir, 'syntax.json')), { code: 'JSON_INVALID', message: /line 1/ });
});

t.test('a directory: strict for the server, tolerant for listings and finding one job by name', async (t) => {
  const dir = t.testdir();
  smallVm(dir, 'alpha', 1);
  const jobs = join(dir, 'jobs');
  mkdirSync(jobs);
  const vm = { vm: '../alpha.json', source: { disks: { root: '../alpha.raw' } } };
  jobFile(jobs, 'a.json', { name: 'a', vms: [vm] });
  jobFile(jobs, 'b.json', { name: 'b', vms: [vm], schedule: 'never' });
  t.throws(() => loadBackupJobsDir(jobs), { code: 'BAD_SCHEDULE' }, 'the server refuses a bad file');
  const scan = scanBackupJobsDir(jobs);
  t.same(
    scan.jobs.map((j) => j.name),
    ['a'],
  );
  t.equal(scan.invalid.length, 1);
  t.match(scan.invalid[0]!.file, /b\.json$/);
  t.equal(findBackupJob('a', jobs).name, 'a', 'found by name beside a broken file');
  t.throws(() => findBackupJob('c', jobs), { code: 'BACKUP_JOB_NOT_FOUND', message: /no backup job named c/ });
  t.equal(findBackupJob(join(jobs, 'a.json'), '/nonexistent').name, 'a', 'a path is a file');
  jobFile(jobs, 'b.json', { name: 'a', vms: [vm] });
  t.throws(() => loadBackupJobsDir(jobs), { code: 'BACKUP_JOB_NAME_TWICE' });
  t.throws(() => loadBackupJobsDir(join(dir, 'none')), { code: 'BACKUP_JOBS_DIR_NOT_FOUND' });
});

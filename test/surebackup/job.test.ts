import t from 'tap';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadJob } from '../../src/surebackup/job.js';
import { projectPath } from '../../src/paths.js';

t.test('example nightly job loads with defaults', async (t) => {
  const j = loadJob(projectPath('lab-templates', 'jobs', 'nightly.json'));
  t.equal(j.concurrency, 3);
  t.same(
    j.applicationGroup.map((g) => g.name),
    ['dns', 'db'],
  );
});

t.test('bad schema and bad cron are clear errors', async (t) => {
  const dir = t.testdir();
  const p = join(dir, 'j.json');
  writeFileSync(p, JSON.stringify({ name: 'x', lab: 'l', verify: { vms: ['web'] }, schedule: 'every tuesday' }));
  t.throws(() => loadJob(p), { code: 'BAD_SCHEDULE' });
  writeFileSync(p, JSON.stringify({ name: 'x', lab: 'l', verify: { vms: [] } }));
  t.throws(() => loadJob(p), { code: 'SCHEMA_INVALID' });
});

t.test('script paths resolve against the job file; a missing one fails at load', async (t) => {
  const dir = t.testdir({ 'check.sh': '#!/bin/sh\nexit 0\n' });
  const { chmodSync } = await import('node:fs');
  chmodSync(join(dir, 'check.sh'), 0o755);
  const p = join(dir, 'j.json');
  writeFileSync(p, JSON.stringify({ name: 'x', lab: 'l', verify: { vms: ['web'], tests: [{ kind: 'script', path: 'check.sh' }] } }));
  const j = loadJob(p);
  t.same(j.verify.tests, [{ kind: 'script', path: join(dir, 'check.sh') }]);
  writeFileSync(
    p,
    JSON.stringify({
      name: 'x',
      lab: 'l',
      applicationGroup: [{ name: 'db', tests: [{ kind: 'script', path: 'gone.sh' }] }],
      verify: { vms: ['web'] },
    }),
  );
  t.throws(() => loadJob(p), { code: 'SCRIPT_NOT_FOUND' });
});

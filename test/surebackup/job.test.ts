import t from 'tap';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadJob } from '../../src/surebackup/job.js';
import { projectPath } from '../../src/paths.js';

t.test('example nightly job loads with defaults', async (t) => {
  const j = loadJob(projectPath('lab-templates', 'jobs', 'nightly.json'));
  t.equal(j.concurrency, 3);
  t.same(j.applicationGroup.map((g) => g.name), ['dns', 'db']);
});

t.test('bad schema and bad cron are clear errors', async (t) => {
  const dir = t.testdir();
  const p = join(dir, 'j.json');
  writeFileSync(p, JSON.stringify({ name: 'x', lab: 'l', verify: { vms: ['web'] }, schedule: 'every tuesday' }));
  t.throws(() => loadJob(p), { code: 'BAD_SCHEDULE' });
  writeFileSync(p, JSON.stringify({ name: 'x', lab: 'l', verify: { vms: [] } }));
  t.throws(() => loadJob(p), { code: 'SCHEMA_INVALID' });
});

// The dashboard's backup jobs view: its formatting helper loaded as the page loads it, and the view reachable from the navigation.
import t from 'tap';
import { readFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { projectPath } from '../../src/paths.js';

type Fmt = { retentionText(r: unknown): string; badge(v: unknown): { label: string; tone: string } };
const f = (await import(pathToFileURL(projectPath('dashboard', 'js', 'format.js')).href)) as Fmt;

t.test('retention in words, in rule order, zero rules left out', async (t) => {
  t.equal(f.retentionText(null), 'keep all');
  t.equal(f.retentionText({ keepWeekly: 4, keepLast: 3, keepDaily: 0, keepYearly: 1 }), 'last 3, weekly 4, yearly 1');
  t.equal(f.retentionText({ keepDaily: 7, gc: true }), 'daily 7 (then gc)');
});

t.test('run statuses of backup jobs have a tone', async (t) => {
  t.equal(f.badge('partial').tone, 'busy');
  t.equal(f.badge('skipped-overlap').tone, 'busy');
  t.equal(f.badge('failed').tone, 'bad');
});

t.test('the view is routed and in the navigation', async (t) => {
  t.match(readFileSync(projectPath('dashboard', 'js', 'app.js'), 'utf8'), /'backup-jobs': \{ module: backupJobs, title: 'Backup jobs' \}/);
  t.match(readFileSync(projectPath('dashboard', 'index.html'), 'utf8'), /<a href="#\/backup-jobs">Backup jobs<\/a>/);
  const view = readFileSync(projectPath('dashboard', 'js', 'views', 'backup-jobs.js'), 'utf8');
  for (const route of ['/backup-jobs', '/backup-job-runs?', '/backup-jobs/${encodeURIComponent(name)}/run'])
    t.ok(view.includes(route), `calls ${route}`);
});

/* global URLSearchParams -- browser globals: the lint config targets Node, this module runs in the page */
/**
 * SureBackup jobs (with Run now for operators) and the run history. A run
 * started here is followed through its operation; the list refreshes on its
 * own so a scheduled run shows up too.
 */
import { h, replace } from '../dom.js';
import { relativeToApi } from '../api.js';
import { formatTime, shortId } from '../format.js';
import { actionButton, badgeEl, section, table } from '../ui.js';

export const RUNS_REFRESH_MS = 5000;

function lastRunCell(j) {
  const r = j.lastRun;
  if (!r) return 'never';
  if (typeof r === 'string') return h('a', { href: `#/runs/${encodeURIComponent(r)}` }, shortId(r));
  return h('span', {}, h('a', { href: `#/runs/${encodeURIComponent(r.id)}` }, formatTime(r.startedAt)), ' ', badgeEl(r.status));
}

function vmsOf(def) {
  const v = def?.verify?.vms;
  return Array.isArray(v) ? v.join(', ') : v === 'all' ? 'all VMs' : '—';
}

export async function render(ctx, route) {
  const jobFilter = route.query.get('job') ?? '';
  const canRun = ctx.can('operator');
  const progress = h('p', { id: 'job-progress', class: 'progress', role: 'status', 'aria-live': 'polite' });
  const runsBox = h('div', { id: 'runs' });

  async function runNow(name) {
    let op;
    try {
      op = await ctx.api.post(`/jobs/${encodeURIComponent(name)}/run`);
    } catch (err) {
      ctx.fail(err);
      return;
    }
    replace(progress, `Job ${name} started (operation ${shortId(op.id, 8)})…`);
    void refreshRuns();
    const done = await ctx.api
      .waitOperation(op.id, {
        intervalMs: 2000,
        onProgress: (o) => {
          if (ctx.live() && o.progress?.message) replace(progress, `Job ${name}: ${o.progress.message}`);
        },
      })
      .catch((err) => {
        ctx.fail(err);
        return null;
      });
    if (!done || !ctx.live()) return;
    const runPath = relativeToApi(done.resource);
    replace(progress, `Job ${name} ${done.state}. `, runPath ? h('a', { href: `#${runPath}` }, 'Open the run') : null);
    if (done.state !== 'succeeded' && done.error) ctx.fail(done.error);
    await refreshRuns();
  }

  async function refreshRuns() {
    const q = new URLSearchParams({ limit: '50' });
    if (jobFilter) q.set('job', jobFilter);
    const { runs = [] } = await ctx.api.get(`/runs?${q}`);
    if (!ctx.live()) return;
    replace(
      runsBox,
      table(
        jobFilter ? `Runs of ${jobFilter}` : 'Recent runs',
        ['Run', 'Job', 'Trigger', 'Status', 'Started', 'Ended'],
        runs.map((r) => [
          h('a', { href: `#/runs/${encodeURIComponent(r.id)}`, 'data-run': r.id }, shortId(r.id)),
          r.job,
          r.trigger ?? '—',
          badgeEl(r.status, { 'data-status': r.status }),
          formatTime(r.startedAt),
          formatTime(r.endedAt),
        ]),
        'no runs yet.',
      ),
    );
  }

  const { jobs = [], invalid = [] } = await ctx.api.get('/jobs');
  if (!ctx.live()) return;
  // A job file that does not load is shown with its error, not hidden: it is the one someone is waiting for.
  const broken = invalid.length
    ? h(
        'div',
        { class: 'warning', role: 'note' },
        h('p', {}, h('strong', {}, 'Job files that do not load:')),
        h(
          'ul',
          {},
          invalid.map((j) => h('li', {}, h('code', {}, j.file), ': ', j.error)),
        ),
      )
    : null;
  replace(
    ctx.main,
    h('h2', {}, 'Jobs & runs'),
    canRun ? null : h('p', { class: 'role-note' }, `Your role (${ctx.who.role}) may look but not run jobs; that needs an operator token.`),
    section(
      'Jobs',
      table(
        'SureBackup jobs',
        ['Job', 'Verifies', 'Schedule', 'Last run', ...(canRun ? ['Action'] : [])],
        jobs.map((j) => [
          h('a', { href: `#/jobs?job=${encodeURIComponent(j.name)}` }, j.name),
          vmsOf(j.definition),
          j.schedule ?? 'on demand',
          lastRunCell(j),
          ...(canRun ? [actionButton('Run now', () => runNow(j.name), { 'aria-label': `Run job ${j.name} now`, 'data-job': j.name })] : []),
        ]),
        'no jobs are defined.',
      ),
      broken,
      progress,
    ),
    section(
      jobFilter ? `Runs of ${jobFilter}` : 'Runs',
      jobFilter ? h('p', {}, h('a', { href: '#/jobs' }, "Show all jobs' runs")) : null,
      runsBox,
    ),
  );
  await refreshRuns();
  ctx.every(RUNS_REFRESH_MS, refreshRuns);
}

/* global URLSearchParams -- browser globals: the lint config targets Node, this module runs in the page */
/**
 * Backup jobs: each job with its VMs, schedule, retention, last and next
 * run (Run now for operators), and the run history with every VM's point,
 * consistency and pruned points. The page refreshes on its own, so a
 * scheduled run shows up while it is looked at.
 */
import { h, replace } from '../dom.js';
import { relativeToApi } from '../api.js';
import { formatBytes, formatSeconds, formatTime, retentionText, shortId } from '../format.js';
import { actionButton, badgeEl, section, table } from '../ui.js';

export const BACKUP_RUNS_REFRESH_MS = 5000;

function lastRunCell(r) {
  if (!r) return 'never';
  return h('span', {}, formatTime(r.startedAt), ' ', badgeEl(r.status, { 'data-status': r.status }));
}

/** One VM of a run: its outcome in a line. */
function vmLine(v) {
  if (v.status !== 'success') return h('li', {}, h('strong', {}, v.vm), ' ', badgeEl(v.status), ' ', v.error ?? '');
  const cbt = v.changedBlockTracking ? `, CBT ${v.changedBlockTracking.used ? 'used' : `not used (${v.changedBlockTracking.reason})`}` : '';
  return h(
    'li',
    {},
    h('strong', {}, v.vm),
    ' ',
    h('a', { href: `#/points?vm=${encodeURIComponent(v.vm)}` }, shortId(v.point)),
    ` ${v.consistency}, read ${formatBytes(v.bytesRead)}, new ${formatBytes(v.bytesNew)}, ${formatSeconds(v.seconds)}${cbt}`,
    v.pruned.length ? `, pruned ${v.pruned.length}` : '',
    v.pruneError ? h('span', { class: 'warning' }, ` retention failed: ${v.pruneError}`) : null,
  );
}

export async function render(ctx, route) {
  const jobFilter = route.query.get('job') ?? '';
  const canRun = ctx.can('operator');
  const progress = h('p', { id: 'backup-job-progress', class: 'progress', role: 'status', 'aria-live': 'polite' });
  const jobsBox = h('div', { id: 'backup-jobs' });
  const runsBox = h('div', { id: 'backup-job-runs' });

  async function runNow(name) {
    let op;
    try {
      op = await ctx.api.post(`/backup-jobs/${encodeURIComponent(name)}/run`);
    } catch (err) {
      ctx.fail(err);
      return;
    }
    replace(progress, `Backup job ${name} started (operation ${shortId(op.id, 8)})…`);
    void refresh();
    const done = await ctx.api
      .waitOperation(op.id, {
        intervalMs: 2000,
        onProgress: (o) => {
          if (ctx.live() && o.progress?.message) replace(progress, `Backup job ${name}: ${o.progress.message}`);
        },
      })
      .catch((err) => {
        ctx.fail(err);
        return null;
      });
    if (!done || !ctx.live()) return;
    replace(
      progress,
      `Backup job ${name} ${done.state}${done.result?.status ? `: ${done.result.status}` : ''}. `,
      done.resource ? h('code', {}, relativeToApi(done.resource)) : null,
    );
    if (done.state !== 'succeeded' && done.error) ctx.fail(done.error);
    await refresh();
  }

  async function refresh() {
    const q = new URLSearchParams({ limit: '30' });
    if (jobFilter) q.set('job', jobFilter);
    const [{ jobs = [], invalid = [] }, { runs = [] }] = await Promise.all([
      ctx.api.get('/backup-jobs'),
      ctx.api.get(`/backup-job-runs?${q}`),
    ]);
    if (!ctx.live()) return;
    replace(
      jobsBox,
      table(
        'Backup jobs',
        ['Job', 'VMs', 'Schedule', 'Retention', 'Last run', 'Next run', 'Verified by', ...(canRun ? ['Action'] : [])],
        jobs.map((j) => [
          h('a', { href: `#/backup-jobs?job=${encodeURIComponent(j.name)}` }, j.name),
          j.vms.map((v) => v.name).join(', '),
          j.schedule ?? 'on demand',
          retentionText(j.retention),
          j.running ? badgeEl('running') : lastRunCell(j.lastRun),
          j.next[0] ? formatTime(j.next[0]) : '—',
          j.surebackup.length ? j.surebackup.map((s) => h('a', { href: `#/jobs?job=${encodeURIComponent(s)}` }, s)) : '—',
          ...(canRun
            ? [
                actionButton('Run now', () => runNow(j.name), {
                  'aria-label': `Run backup job ${j.name} now`,
                  'data-backup-job': j.name,
                  disabled: j.running,
                }),
              ]
            : []),
        ]),
        'no backup jobs are defined.',
      ),
      // A file that does not load is shown with its error: it is the job someone is waiting for.
      invalid.length
        ? h(
            'div',
            { class: 'warning', role: 'note' },
            h('p', {}, h('strong', {}, 'Backup job files that do not load:')),
            h(
              'ul',
              {},
              invalid.map((x) => h('li', {}, h('code', {}, x.file), ': ', x.error)),
            ),
          )
        : null,
    );
    replace(
      runsBox,
      table(
        jobFilter ? `Backup runs of ${jobFilter}` : 'Recent backup runs',
        ['Run', 'Job', 'Trigger', 'Status', 'Started', 'Ended', 'VMs'],
        runs.map((r) => [
          h('span', { 'data-backup-run': r.id }, shortId(r.id)),
          r.job,
          r.trigger,
          badgeEl(r.status, { 'data-status': r.status }),
          formatTime(r.startedAt),
          formatTime(r.endedAt),
          r.vms.length ? h('ul', { class: 'plain' }, r.vms.map(vmLine)) : (r.detail ?? '—'),
        ]),
        'no backup runs yet.',
      ),
    );
  }

  replace(
    ctx.main,
    h('h2', {}, 'Backup jobs'),
    canRun
      ? null
      : h('p', { class: 'role-note' }, `Your role (${ctx.who.role}) may look but not run backup jobs; that needs an operator token.`),
    section('Jobs', jobsBox, progress),
    section(
      jobFilter ? `Runs of ${jobFilter}` : 'Runs',
      jobFilter ? h('p', {}, h('a', { href: '#/backup-jobs' }, 'Show all backup runs')) : null,
      runsBox,
    ),
  );
  await refresh();
  ctx.every(BACKUP_RUNS_REFRESH_MS, refresh);
}

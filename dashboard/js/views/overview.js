/**
 * At a glance: what is published, what runs in labs, and how each VM's
 * latest restore point fared in verification (last night's run, normally).
 */
import { h, replace } from '../dom.js';
import { formatBytes, formatSeconds, formatTime, groupPointsByVm, isActiveSession, shortId } from '../format.js';
import { actionButton, badgeEl, section, table } from '../ui.js';

export async function render(ctx) {
  const [pub, ses, pts, runs, state] = await Promise.all([
    ctx.api.get('/publications'),
    ctx.api.get('/sessions'),
    ctx.api.get('/points'),
    ctx.api.get('/runs?limit=10'),
    ctx.api.get('/state/stale'),
  ]);
  if (!ctx.live()) return;
  const live = (ses.sessions ?? []).filter(isActiveSession);
  const publications = pub.publications ?? [];

  const verification = groupPointsByVm(pts.points).map(([vm, list]) => {
    const latest = list[0];
    const v = latest.verification;
    return [
      h('a', { href: `#/points?vm=${encodeURIComponent(vm)}` }, vm),
      formatTime(latest.time),
      badgeEl(v?.result ?? null),
      v ? h('a', { href: `#/runs/${encodeURIComponent(v.run)}` }, formatTime(v.at)) : '—',
    ];
  });

  replace(
    ctx.main,
    h('h2', {}, 'Overview'),
    h(
      'ul',
      { class: 'counters' },
      h('li', {}, h('strong', {}, String(live.length)), ' live recovery sessions'),
      h('li', {}, h('strong', {}, String(publications.filter((p) => p.running).length)), ' publications served'),
      h('li', {}, h('strong', {}, String(verification.length)), ' VMs with restore points'),
    ),
    section(
      "Verification of each VM's latest restore point",
      table(
        'Latest verification per VM',
        ['VM', 'Latest point', 'Verification', 'Verified at'],
        verification,
        'the repository holds no restore points.',
      ),
    ),
    section(
      'Live sessions',
      table(
        'Live recovery sessions',
        ['Session', 'VM', 'State', 'Lab', 'Started'],
        live.map((s) => [
          h('a', { href: '#/sessions' }, shortId(s.id)),
          s.vm,
          badgeEl(s.state),
          s.lab ?? s.network ?? '—',
          formatTime(s.createdAt),
        ]),
        'no VM is running from a backup.',
      ),
    ),
    section(
      'Publications',
      table(
        'Published restore points',
        ['Publication', 'VM', 'Point', 'State', 'Served over', 'Path'],
        publications.map((p) => [
          p.name,
          p.vm,
          h('code', { title: p.point }, shortId(p.point)),
          badgeEl(p.running ? 'running' : 'stopped'),
          p.frontend ? p.frontend.toUpperCase() : p.path ? 'FUSE' : '—',
          p.path ? h('code', {}, p.path) : '—',
        ]),
        'nothing is published.',
      ),
    ),
    section(
      'Stale state',
      table(
        'Stale records and leftovers',
        ['Item', 'Reason', 'Writes held', 'Age', ''],
        (state.stale ?? []).map((i) => [
          h('code', {}, i.id),
          i.reason,
          i.bytes ? formatBytes(i.bytes) : '—',
          i.ageSeconds !== undefined ? formatSeconds(i.ageSeconds) : '—',
          // Cleaning is an admin's; an item holding writes says so before they are discarded.
          ctx.can('admin')
            ? actionButton(
                i.bytes ? 'Discard writes and clean' : 'Clean',
                async () => {
                  try {
                    const r = await ctx.api.post('/state/cleanup', { items: [i.id], discardWrites: Boolean(i.bytes) });
                    const done = (r.stale ?? []).find((x) => x.id === i.id);
                    ctx.notify(`${i.id}: ${done?.outcome?.action ?? 'done'}${done?.outcome?.detail ? ` (${done.outcome.detail})` : ''}`);
                    await render(ctx);
                  } catch (err) {
                    ctx.fail(err);
                  }
                },
                { 'aria-label': `Clean ${i.id}`, class: i.bytes ? 'danger' : '' },
              )
            : '',
        ]),
        'nothing stale: every record matches the host.',
      ),
    ),
    section(
      'Recent verification runs',
      table(
        'Recent runs',
        ['Run', 'Job', 'Trigger', 'Status', 'Started', 'Ended'],
        (runs.runs ?? []).map((r) => [
          h('a', { href: `#/runs/${encodeURIComponent(r.id)}` }, shortId(r.id)),
          r.job,
          r.trigger ?? '—',
          badgeEl(r.status),
          formatTime(r.startedAt),
          formatTime(r.endedAt),
        ]),
        'no job has run yet.',
      ),
    ),
  );
}

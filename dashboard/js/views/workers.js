/**
 * The lab workers (docs/workers.md): who is there, how loaded, what each
 * runs, refreshed every few seconds. A server without a PostgreSQL catalog
 * has none and says how to get them.
 */
import { h, replace } from '../dom.js';
import { formatTime, memoryText, shortId } from '../format.js';
import { badgeEl, section, table } from '../ui.js';

/** Workers beat every 5 s; a slower refresh would show a live worker as stale. */
export const REFRESH_MS = 5000;

export function workerRows(workers) {
  return workers.map((w) => [
    w.name,
    badgeEl(w.alive ? 'up' : 'gone', { 'data-alive': String(w.alive) }),
    `${w.running} / ${w.slots}`,
    memoryText(w.memoryUsedMiB, w.memoryMiB),
    w.host,
    (w.networks ?? []).join(', ') || '—',
    w.tasks.length ? w.tasks.map((t) => h('code', { title: t }, shortId(t, 8))) : '—',
    formatTime(w.lastSeen),
  ]);
}

export async function render(ctx) {
  const box = h('div', { id: 'workers' });
  replace(ctx.main, section('Lab workers', box));
  async function refresh() {
    const out = await ctx.api.get('/workers');
    if (!ctx.live()) return;
    if (!out.enabled) {
      replace(box, h('p', { class: 'empty' }, `No lab workers: ${out.hint}`));
      return;
    }
    replace(
      box,
      table(
        'Lab workers',
        ['Name', 'State', 'Running / slots', 'Memory (used / budget)', 'Host', 'Networks', 'Tasks', 'Last seen'],
        workerRows(out.workers),
        'none registered yet (restorelab worker --name NAME).',
      ),
    );
  }
  await refresh();
  ctx.every(REFRESH_MS, refresh);
}

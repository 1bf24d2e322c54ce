/**
 * Live recovery sessions with console screenshots refreshed every few
 * seconds, and Stop and Migrate for operators. The list is polled and each
 * session's card is updated in place, so a half-typed migration target is
 * not wiped by the next refresh.
 */
import { h, replace } from '../dom.js';
import { formatSeconds, formatTime, isActiveSession, shortId } from '../format.js';
import { actionButton, authImage, badgeEl, section, table } from '../ui.js';

/** Screenshots and the list refresh this often: a console changes slowly, and each one is a QMP screendump. */
export const REFRESH_MS = 4000;

export async function render(ctx) {
  const cards = new Map(); // session id → { el, state, shot, details }
  const liveList = h('div', { class: 'cards', id: 'live-sessions' });
  const endedBox = h('div', { id: 'ended-sessions' });
  const canOperate = ctx.can('operator');

  ctx.onCleanup(() => {
    for (const c of cards.values()) c.shot?.dispose();
    cards.clear();
  });

  function details(s) {
    const addrs = Object.entries(s.addresses ?? {})
      .map(([nic, a]) => `${nic} ${a}`)
      .join(', ');
    return h(
      'dl',
      { class: 'facts' },
      h('dt', {}, 'State'),
      h('dd', {}, badgeEl(s.state, { 'data-state': s.state })),
      h('dt', {}, 'Restore point'),
      h('dd', {}, h('code', { title: s.point }, shortId(s.point))),
      h('dt', {}, 'Runs in'),
      h('dd', {}, s.lab ? `lab ${s.lab}` : s.network ? `bridge ${s.network}` : '—'),
      s.scan
        ? [
            h('dt', {}, 'Scan'),
            h(
              'dd',
              { 'data-scan': s.scan.verdict },
              badgeEl(s.scan.verdict),
              s.quarantine ? h('strong', {}, ' quarantined: no uplink at all') : null,
              s.scan.matches.length ? ` ${s.scan.matches.map((m) => `${m.rule} ${m.path}`).join('; ')}` : null,
            ),
          ]
        : null,
      h('dt', {}, 'Addresses'),
      h('dd', {}, addrs || '—'),
      h('dt', {}, 'Heartbeat after'),
      h('dd', {}, formatSeconds(s.heartbeatSeconds)),
      h('dt', {}, 'Started'),
      h('dd', {}, formatTime(s.createdAt)),
      s.migratedTo ? [h('dt', {}, 'Migrated to'), h('dd', {}, s.migratedTo)] : null,
      s.error ? [h('dt', {}, 'Error'), h('dd', {}, s.error.message)] : null,
    );
  }

  async function stop(s) {
    try {
      const out = await ctx.api.post(`/sessions/${encodeURIComponent(s.id)}/stop`);
      ctx.notify(`Session ${shortId(s.id, 8)} (${s.vm}) is ${out?.state ?? 'stopped'}.`);
    } catch (err) {
      ctx.fail(err);
    }
    await refresh();
  }

  function migrateForm(s) {
    const idp = `mig-${s.id}`;
    const dir = h('input', { id: `${idp}-dir`, name: 'dir', type: 'text', required: true, placeholder: '/var/lib/vms/web' });
    const format = h(
      'select',
      { id: `${idp}-format`, name: 'format' },
      h('option', { value: 'qcow2' }, 'qcow2'),
      h('option', { value: 'raw' }, 'raw'),
    );
    const form = h(
      'form',
      { class: 'inline migrate' },
      h('label', { for: `${idp}-dir` }, 'Target directory'),
      ' ',
      dir,
      ' ',
      h('label', { for: `${idp}-format` }, 'Format'),
      ' ',
      format,
      ' ',
      h('button', { type: 'submit' }, 'Migrate'),
    );
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      try {
        const op = await ctx.api.post(`/sessions/${encodeURIComponent(s.id)}/migrate`, { dir: dir.value.trim(), format: format.value });
        ctx.notify(`Migrating ${s.vm} to ${dir.value.trim()} (operation ${shortId(op.id, 8)})…`);
        const done = await ctx.api.waitOperation(op.id, {
          onProgress: (o) => {
            if (o.progress?.message) ctx.notify(`Migrating ${s.vm}: ${o.progress.message}`);
          },
        });
        if (done.state === 'succeeded') ctx.notify(`${s.vm} now runs on its migrated disks in ${dir.value.trim()}.`);
        else {
          ctx.notify('');
          ctx.fail(done.error ?? { message: `the migration ${done.state}` });
        }
      } catch (err) {
        ctx.notify('');
        ctx.fail(err);
      }
      await refresh();
    });
    return form;
  }

  function card(s) {
    const titleId = `session-${s.id}-title`;
    const shot = ['running', 'migrating', 'migrated'].includes(s.state)
      ? authImage(ctx.api, `/sessions/${encodeURIComponent(s.id)}/screenshot`, `Console of ${s.vm} (session ${shortId(s.id, 8)})`)
      : null;
    const facts = h('div', { class: 'facts-box' }, details(s));
    const el = h(
      'article',
      { class: 'session card', 'data-session': s.id, 'data-vm': s.vm, 'aria-labelledby': titleId },
      h('h3', { id: titleId }, `${s.vm} `, h('small', {}, `session ${shortId(s.id, 8)}`)),
      shot?.el ?? null,
      facts,
      canOperate
        ? h(
            'div',
            { class: 'actions' },
            actionButton('Stop', () => stop(s), { 'aria-label': `Stop session ${shortId(s.id, 8)} of ${s.vm}`, class: 'danger' }),
            s.state === 'running' ? migrateForm(s) : null,
          )
        : null,
    );
    return { el, state: s.state, shot, facts };
  }

  async function refresh() {
    const { sessions = [] } = await ctx.api.get('/sessions');
    if (!ctx.live()) return;
    const active = sessions.filter(isActiveSession);
    const seen = new Set();
    for (const s of active) {
      seen.add(s.id);
      let c = cards.get(s.id);
      if (c && c.state !== s.state) {
        c.shot?.dispose();
        c.el.remove();
        c = undefined;
      }
      if (!c) {
        c = card(s);
        cards.set(s.id, c);
        liveList.append(c.el);
      } else {
        replace(c.facts, details(s));
      }
      void c.shot?.refresh();
    }
    for (const [id, c] of cards) {
      if (!seen.has(id)) {
        c.shot?.dispose();
        c.el.remove();
        cards.delete(id);
      }
    }
    if (!active.length) replace(liveList, h('p', { class: 'empty' }, 'No live sessions. Recover a VM from the Restore points view.'));
    else liveList.querySelector(':scope > p.empty')?.remove();
    const ended = sessions.filter((s) => !isActiveSession(s)).sort((a, b) => String(b.updatedAt).localeCompare(String(a.updatedAt)));
    replace(
      endedBox,
      table(
        'Ended sessions',
        ['Session', 'VM', 'State', 'Ended'],
        ended.map((s) => [h('code', {}, shortId(s.id, 8)), s.vm, badgeEl(s.state, { 'data-state': s.state }), formatTime(s.updatedAt)]),
        'none.',
      ),
    );
  }

  replace(
    ctx.main,
    h('h2', {}, 'Sessions'),
    canOperate
      ? null
      : h('p', { class: 'role-note' }, `Your role (${ctx.who.role}) may look but not stop or migrate; that needs an operator token.`),
    h('p', { class: 'help' }, `Console screenshots refresh every ${REFRESH_MS / 1000} s.`),
    section('Live sessions', liveList),
    section('Ended sessions', endedBox),
  );
  await refresh();
  ctx.every(REFRESH_MS, refresh);
}

/* global FormData -- browser globals: the lint config targets Node, this module runs in the page */
/**
 * Restore points per VM, with their verification and malware scan status
 * (clean, infected, suspect, unscanned: docs/secure-restore.md), and a Recover
 * button for operators: it starts a recovery session (202 + operation) and
 * follows the operation until the VM runs, then opens the Sessions view.
 */
import { h, replace } from '../dom.js';
import { formatBytes, formatTime, groupPointsByVm, shortId, signalsText } from '../format.js';
import { actionButton, badgeEl, section, signalsChart, table } from '../ui.js';

function scanTitle(status) {
  if (status === 'suspect') return 'not scanned, and newer than an infected point of this VM';
  if (status === 'infected') return 'its latest YARA scan matched (restorelab scan names the files)';
  if (status === 'clean') return 'its latest YARA scan matched nothing';
  return 'never scanned (restorelab scan)';
}

export async function render(ctx, route) {
  const vm = route.query.get('vm') ?? '';
  const canRecover = ctx.can('operator');
  const [data, labs] = await Promise.all([
    ctx.api.get(vm ? `/points?vm=${encodeURIComponent(vm)}` : '/points'),
    canRecover ? ctx.api.get('/labs') : { labs: [] },
  ]);
  if (!ctx.live()) return;
  const groups = groupPointsByVm(data.points);

  // The server knows lab templates by name; a client never names a file.
  const labNames = (labs.labs ?? []).filter((l) => l.template).map((l) => l.name);
  const labInput = h(
    'select',
    { id: 'recover-lab', name: 'lab', 'aria-describedby': 'recover-lab-help' },
    labNames.map((n) => h('option', { value: n }, n)),
    h('option', { value: '' }, 'no lab (no network)'),
  );
  // The recovery gate (docs/secure-restore.md): YARA rule text, never a file of the server.
  const rulesInput = h('textarea', {
    id: 'recover-rules',
    name: 'rules',
    rows: '4',
    cols: '60',
    spellcheck: 'false',
    maxlength: '200000',
    'aria-describedby': 'recover-rules-help',
  });
  const allowInput = h('input', { id: 'recover-allow-infected', name: 'allowInfected', type: 'checkbox' });
  const progress = h('p', { id: 'recover-progress', class: 'progress', role: 'status', 'aria-live': 'polite' });

  async function recover(p) {
    const body = { vm: p.vm, point: p.id };
    if (labInput.value.trim()) body.lab = labInput.value.trim();
    if (rulesInput.value.trim()) body.scan = { rules: rulesInput.value, allowInfected: allowInput.checked };
    const op = await ctx.api.post('/sessions', body).catch((err) => {
      ctx.fail(err);
      return null;
    });
    if (!op) return;
    replace(progress, `Recovering ${p.vm} from ${formatTime(p.time)} (operation ${shortId(op.id, 8)})…`);
    const done = await ctx.api
      .waitOperation(op.id, {
        onProgress: (o) => {
          if (ctx.live() && o.progress?.message) replace(progress, `Recovering ${p.vm}: ${o.progress.message}`);
        },
      })
      .catch((err) => {
        ctx.fail(err);
        return null;
      });
    if (!done || !ctx.live()) return;
    if (done.state === 'succeeded') {
      ctx.navigate('#/sessions', `${p.vm} is running from its backup (session ${shortId(done.result?.id ?? '', 8)}).`);
    } else {
      replace(progress, `Recovery of ${p.vm} ${done.state}.`);
      ctx.fail(done.error ?? { message: `the recovery ${done.state}` });
    }
  }

  const filter = h(
    'form',
    {
      class: 'inline',
      onsubmit: (ev) => {
        ev.preventDefault();
        const v = new FormData(ev.target).get('vm');
        ctx.navigate(v ? `#/points?vm=${encodeURIComponent(String(v))}` : '#/points');
      },
    },
    h('label', { for: 'points-vm' }, 'VM'),
    ' ',
    h('input', { id: 'points-vm', name: 'vm', type: 'text', value: vm }),
    ' ',
    h('button', { type: 'submit' }, 'Filter'),
  );

  replace(
    ctx.main,
    h('h2', {}, vm ? `Restore points of ${vm}` : 'Restore points'),
    filter,
    canRecover
      ? h(
          'fieldset',
          { class: 'options' },
          h('legend', {}, 'Recovery options'),
          h('label', { for: 'recover-lab' }, 'Lab'),
          ' ',
          labInput,
          h(
            'p',
            { id: 'recover-lab-help', class: 'help' },
            'The virtual lab (an isolated copy of the production network) the recovered VM runs in; it is brought up if it is not.',
          ),
          h('label', { for: 'recover-rules' }, 'YARA rules (optional)'),
          h('br', {}),
          rulesInput,
          h(
            'p',
            { id: 'recover-rules-help', class: 'help' },
            'Scan the point with these rules first: an infected point is not recovered. No include; imports only pe, elf, math, hash, dotnet, time.',
          ),
          allowInput,
          ' ',
          h('label', { for: 'recover-allow-infected' }, 'Recover an infected point anyway, quarantined with no uplink at all'),
        )
      : h('p', { class: 'role-note' }, `Your role (${ctx.who.role}) may look but not recover; recovering needs an operator token.`),
    progress,
    groups.length
      ? groups.map(([name, list]) =>
          section(
            name,
            signalsChart(name, list),
            table(
              `Restore points of ${name}`,
              ['Time', 'Point', 'Consistency', 'Size', 'Ransomware signals', 'Verification', 'Scan', ...(canRecover ? ['Action'] : [])],
              list.map((p) => [
                formatTime(p.time),
                h('code', { title: p.id }, shortId(p.id)),
                p.consistency ?? '—',
                formatBytes(p.size),
                h(
                  'span',
                  {
                    class: 'signals-cell',
                    'data-anomaly': p.signals ? String(Boolean(p.signals.anomaly)) : null,
                    title: p.signals?.reasons?.join('; ') || null,
                  },
                  signalsText(p.signals),
                  p.signals?.anomaly ? [' ', h('span', { class: 'badge badge-bad' }, 'anomaly')] : null,
                ),
                p.verification
                  ? h(
                      'a',
                      { href: `#/runs/${encodeURIComponent(p.verification.run)}`, title: `verified ${formatTime(p.verification.at)}` },
                      badgeEl(p.verification.result),
                    )
                  : badgeEl(null),
                badgeEl(p.scan ?? 'unscanned', { 'data-scan': p.id, title: scanTitle(p.scan) }),
                ...(canRecover
                  ? [
                      actionButton('Recover', () => recover(p), {
                        'aria-label': `Recover ${name} from ${formatTime(p.time)}`,
                        'data-vm': name,
                        'data-point': p.id,
                      }),
                    ]
                  : []),
              ]),
            ),
          ),
        )
      : h('p', { class: 'empty' }, vm ? `No restore points of ${vm}.` : 'The repository holds no restore points.'),
  );
}

/* global Blob, URL -- browser globals: the lint config targets Node, this module runs in the page */
/**
 * One job run: its VMs with their test results and screenshots, and the
 * run's HTML report. The report is fetched with the token and shown in a
 * sandboxed iframe (srcdoc, no scripts): it is self-contained, and the
 * sandbox keeps anything in it from reaching this page or the token.
 */
import { h, replace } from '../dom.js';
import { relativeToApi } from '../api.js';
import { formatSeconds, formatTime, shortId } from '../format.js';
import { authImage, badgeEl, section, table } from '../ui.js';

export async function render(ctx, route) {
  const id = route.args[0];
  if (!id) {
    ctx.navigate('#/jobs');
    return;
  }
  const enc = encodeURIComponent(id);
  const body = h('div', {});
  const reportBox = h('div', { id: 'report' });
  replace(ctx.main, h('h2', {}, `Run ${shortId(id)}`), h('p', {}, h('a', { href: '#/jobs' }, 'All jobs and runs')), body, reportBox);
  const shots = [];
  ctx.onCleanup(() => {
    for (const s of shots.splice(0)) s.dispose();
  });

  let lastStatus = null;
  async function load() {
    const data = await ctx.api.get(`/runs/${enc}`);
    if (!ctx.live()) return;
    const run = data.run ?? {};
    if (run.status === lastStatus && lastStatus !== 'running') return;
    lastStatus = run.status;
    for (const s of shots.splice(0)) s.dispose();
    replace(
      body,
      h(
        'dl',
        { class: 'facts' },
        h('dt', {}, 'Job'),
        h('dd', {}, h('a', { href: `#/jobs?job=${encodeURIComponent(run.job ?? '')}` }, run.job ?? '—')),
        h('dt', {}, 'Status'),
        h('dd', {}, badgeEl(run.status, { id: 'run-status', 'data-status': run.status })),
        h('dt', {}, 'Trigger'),
        h('dd', {}, run.trigger ?? '—'),
        h('dt', {}, 'Started'),
        h('dd', {}, formatTime(run.startedAt)),
        h('dt', {}, 'Ended'),
        h('dd', {}, formatTime(run.endedAt)),
        run.detail ? [h('dt', {}, 'Detail'), h('dd', {}, typeof run.detail === 'string' ? run.detail : JSON.stringify(run.detail))] : null,
      ),
      (data.vms ?? []).length
        ? (data.vms ?? []).map((vm) => {
            const shotPath = vm.screenshot ? relativeToApi(vm.screenshot) : null;
            const shot = shotPath ? authImage(ctx.api, shotPath, `Console of ${vm.name} during run ${shortId(id, 8)}`) : null;
            if (shot) {
              shots.push(shot);
              void shot.refresh();
            }
            return h(
              'section',
              { class: 'run-vm card', 'data-vm': vm.name, 'aria-labelledby': `vm-${vm.name}` },
              h('h3', { id: `vm-${vm.name}` }, `${vm.name} `, badgeEl(vm.result, { 'data-result': vm.result })),
              h('p', {}, `Restore point ${shortId(vm.point ?? '')}, recovered in ${formatSeconds(vm.recoverySeconds)}.`),
              shot ? shot.el : h('p', { class: 'empty' }, 'No screenshot was taken.'),
              table(
                `Tests of ${vm.name}`,
                ['Test', 'Kind', 'Result', 'Time', 'Detail'],
                (vm.tests ?? []).map((t) => [t.name, t.kind, badgeEl(t.result), formatSeconds(t.seconds), t.detail ?? '']),
                'no tests ran.',
              ),
            );
          })
        : h(
            'p',
            { class: 'empty' },
            run.status === 'running' ? 'The run is in progress; VMs appear as they finish.' : 'This run verified no VMs.',
          ),
    );
    if (run.status !== 'running') await loadReport();
  }

  async function loadReport() {
    replace(reportBox, h('p', {}, 'Loading the report…'));
    try {
      const html = await ctx.api.text(`/runs/${enc}/report`);
      if (!ctx.live()) return;
      const url = URL.createObjectURL(new Blob([html], { type: 'text/html' }));
      ctx.onCleanup(() => URL.revokeObjectURL(url));
      const frame = h('iframe', { title: `Report of run ${shortId(id, 8)}`, sandbox: '', class: 'report', id: 'report-frame' });
      frame.srcdoc = html;
      replace(
        reportBox,
        section(
          'Report',
          // Download only, no "open in a new tab": a blob: page would run with
          // this page's origin, outside the sandbox the iframe gives it.
          h('p', {}, h('a', { href: url, download: `run-${id}.html` }, 'Download the report')),
          frame,
        ),
      );
    } catch (err) {
      replace(reportBox, section('Report', h('p', { class: 'empty' }, `No report: ${err.message}`)));
    }
  }

  await load();
  ctx.every(5000, async () => {
    if (lastStatus === 'running') await load();
  });
}

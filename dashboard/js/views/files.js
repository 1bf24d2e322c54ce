/**
 * File-level restore: mount a restore point read-only on the server, browse
 * its directories and download files or whole directories as tar. Mounts
 * live on the server until Unmount; the view lists them, so moving to
 * another view and back (or another operator) reuses a mount instead of
 * mounting the point twice.
 */
import { h, replace } from '../dom.js';
import { downloadName, formatBytes, formatTime, groupPointsByVm, joinPath, parentPath, shortId } from '../format.js';
import { actionButton, saveBlob, section, table } from '../ui.js';

export async function render(ctx) {
  if (!ctx.can('operator')) {
    replace(
      ctx.main,
      h('h2', {}, 'File restore'),
      h('p', { class: 'role-note' }, `Your role (${ctx.who.role}) may not restore files; that needs an operator token.`),
    );
    return;
  }
  const browser = h('div', { id: 'file-browser' });
  let mount = null;

  async function download(path) {
    try {
      ctx.notify(`Preparing ${path}…`);
      const { blob, disposition } = await ctx.api.blob(
        `/file-restore/${encodeURIComponent(mount.id)}/download?path=${encodeURIComponent(path)}`,
      );
      saveBlob(blob, downloadName(disposition, path));
      ctx.notify(`Downloaded ${path} (${formatBytes(blob.size)}).`);
    } catch (err) {
      ctx.fail(err);
    }
  }

  async function browse(path) {
    let data;
    try {
      data = await ctx.api.get(`/file-restore/${encodeURIComponent(mount.id)}/entries?path=${encodeURIComponent(path)}`);
    } catch (err) {
      if (err.status === 404) {
        mount = null;
        await showPicker();
      }
      ctx.fail(err);
      return;
    }
    if (!ctx.live()) return;
    const crumbs = [h('button', { type: 'button', class: 'link', onclick: () => browse('/') }, '/')];
    let acc = '';
    for (const part of path.split('/').filter(Boolean)) {
      acc = `${acc}/${part}`;
      const target = acc;
      crumbs.push(' / ', h('button', { type: 'button', class: 'link', onclick: () => browse(target) }, part));
    }
    const entries = [...(data.entries ?? [])].sort((a, b) =>
      (a.type === 'directory') === (b.type === 'directory') ? a.name.localeCompare(b.name) : a.type === 'directory' ? -1 : 1,
    );
    replace(
      browser,
      h(
        'p',
        {},
        `Point ${shortId(mount.point)} of ${mount.vm ?? 'the VM'} is mounted read-only. `,
        actionButton('Unmount', () => unmount()),
        ' ',
        h(
          'button',
          {
            type: 'button',
            onclick: () => {
              mount = null;
              void showPicker();
            },
          },
          'Back to the mounts',
        ),
      ),
      h('nav', { 'aria-label': 'Path', class: 'crumbs' }, crumbs),
      path !== '/'
        ? h('p', {}, h('button', { type: 'button', class: 'link', onclick: () => browse(parentPath(path)) }, '↑ Parent directory'))
        : null,
      table(
        `Contents of ${path}`,
        ['Name', 'Type', 'Size', 'Modified', 'Action'],
        entries.map((e) => {
          const p = e.path ?? joinPath(path, e.name);
          const isDir = e.type === 'directory';
          return [
            isDir
              ? h(
                  'button',
                  { type: 'button', class: 'link', onclick: () => browse(p), 'aria-label': `Open directory ${e.name}` },
                  `${e.name}/`,
                )
              : e.name,
            e.type === 'symlink' && e.target ? `symlink → ${e.target}` : (e.type ?? '—'),
            isDir ? '—' : formatBytes(e.size),
            formatTime(e.mtime ?? e.modified ?? null),
            actionButton('Download', () => download(p), { 'aria-label': `Download ${p}${isDir ? ' as tar' : ''}`, 'data-path': p }),
          ];
        }),
        'empty directory.',
      ),
    );
  }

  async function unmount(m = mount) {
    try {
      await ctx.api.del(`/file-restore/${encodeURIComponent(m.id)}`);
      ctx.notify('Unmounted.');
    } catch (err) {
      ctx.fail(err);
    }
    mount = null;
    await showPicker();
  }

  async function showPicker() {
    const [{ points = [] }, { sessions = [] }] = await Promise.all([ctx.api.get('/points'), ctx.api.get('/file-restore')]);
    if (!ctx.live()) return;
    const vmOf = new Map(points.map((p) => [p.id, p.vm]));
    const open = async (s) => {
      mount = { id: s.id, point: s.point, vm: vmOf.get(s.point) ?? null };
      await browse('/');
    };
    const mounted = table(
      'Mounted restore points',
      ['Mount', 'VM', 'Point', 'Since', 'Action'],
      sessions.map((s) => [
        h('code', {}, shortId(s.id, 8)),
        vmOf.get(s.point) ?? '—',
        h('code', {}, shortId(s.point ?? '')),
        formatTime(s.created),
        h(
          'span',
          { class: 'actions' },
          s.complete
            ? actionButton('Browse', () => open(s), { 'aria-label': `Browse mount ${shortId(s.id, 8)}` })
            : h('span', {}, 'incomplete'),
          ' ',
          actionButton('Unmount', () => unmount(s), { 'aria-label': `Unmount ${shortId(s.id, 8)}` }),
        ),
      ]),
      'none.',
    );
    const select = h(
      'select',
      { id: 'flr-point', name: 'point', required: true },
      groupPointsByVm(points).map(([vm, list]) =>
        h(
          'optgroup',
          { label: vm },
          list.map((p) => h('option', { value: p.id, 'data-vm': vm }, `${vm} — ${formatTime(p.time)}`)),
        ),
      ),
    );
    const form = h(
      'form',
      { class: 'inline' },
      h('label', { for: 'flr-point' }, 'Restore point'),
      ' ',
      select,
      ' ',
      h('button', { type: 'submit' }, 'Mount'),
    );
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const opt = select.selectedOptions[0];
      try {
        ctx.notify('Mounting…');
        const out = await ctx.api.post('/file-restore', { point: select.value });
        mount = { id: out.id, point: select.value, vm: opt?.dataset.vm ?? null };
        ctx.notify('Mounted.');
        await browse('/');
      } catch (err) {
        ctx.fail(err);
      }
    });
    replace(browser, points.length ? form : h('p', { class: 'empty' }, 'The repository holds no restore points.'), mounted);
  }

  replace(
    ctx.main,
    h('h2', {}, 'File restore'),
    h(
      'p',
      { class: 'help' },
      'Mount a restore point read-only on the server, browse it, and download files or directories (directories come as tar).',
    ),
    section('Browser', browser),
  );
  await showPicker();
}

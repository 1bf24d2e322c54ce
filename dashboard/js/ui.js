/* global URL, document, setTimeout -- browser globals: the lint config targets Node, this module runs in the page */
/** Widgets every view uses: badges, tables, authenticated images, downloads. */
import { h, replace } from './dom.js';
import { badge, signalsTimeline } from './format.js';

export function badgeEl(value, extra = {}) {
  const b = badge(value);
  return h('span', { class: `badge badge-${b.tone}`, ...extra }, b.label);
}

/** A table with a caption and a header row; rows are arrays of cells (nodes or text). */
export function table(caption, headers, rows, empty = 'Nothing yet.') {
  if (!rows.length) return h('p', { class: 'empty' }, `${caption}: ${empty}`);
  return h(
    'table',
    {},
    h('caption', {}, caption),
    h(
      'thead',
      {},
      h(
        'tr',
        {},
        headers.map((t) => h('th', { scope: 'col' }, t)),
      ),
    ),
    h(
      'tbody',
      {},
      rows.map((r) =>
        h(
          'tr',
          {},
          r.map((c, i) => (i === 0 ? h('th', { scope: 'row' }, c) : h('td', {}, c))),
        ),
      ),
    ),
  );
}

export function section(title, ...children) {
  return h('section', { 'aria-label': title }, h('h2', {}, title), ...children);
}

/**
 * An <img> whose bytes come from an authenticated fetch. refresh() fetches
 * again and swaps the object URL, revoking the previous one so a page left
 * open all night does not pile up blobs. On failure the image keeps its last
 * picture and the caption says why.
 */
export function authImage(api, path, alt, { cls = 'shot' } = {}) {
  const img = h('img', { alt, class: cls, width: 320, height: 240, hidden: true });
  const note = h('span', { class: 'shot-note' }, 'Loading screenshot…');
  const fig = h('figure', { class: 'shot-figure' }, img, h('figcaption', {}, note));
  let url = null;
  let stopped = false;
  async function refresh() {
    try {
      const { blob } = await api.blob(path);
      if (stopped) return;
      const next = URL.createObjectURL(blob);
      img.src = next;
      img.hidden = false;
      if (url) URL.revokeObjectURL(url);
      url = next;
      replace(note, `Updated ${new Date().toLocaleTimeString()}`);
    } catch (err) {
      if (!stopped) replace(note, `No screenshot: ${err.message}`);
    }
  }
  function dispose() {
    stopped = true;
    if (url) URL.revokeObjectURL(url);
    url = null;
  }
  return { el: fig, img, refresh, dispose };
}

/** Saves a fetched blob under a file name, as a normal browser download. */
export function saveBlob(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = h('a', { href: url, download: name, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  // The download has started once click() returns; keep the URL a moment for slow browsers.
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

/** A button that runs an async action once at a time, disabled meanwhile. */
export function actionButton(label, action, attrs = {}) {
  const b = h('button', { type: 'button', ...attrs }, label);
  b.addEventListener('click', async () => {
    if (b.disabled) return;
    b.disabled = true;
    b.setAttribute('aria-busy', 'true');
    try {
      await action(b);
    } finally {
      b.disabled = false;
      b.removeAttribute('aria-busy');
    }
  });
  return b;
}

const SVG = 'http://www.w3.org/2000/svg';

/** An SVG element; like h(), every value is an attribute or a text node, never markup. */
function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== null && v !== undefined) el.setAttribute(k, String(v));
  for (const c of children) if (c !== null && c !== undefined) el.append(typeof c === 'string' ? document.createTextNode(c) : c);
  return el;
}

/**
 * The change-rate and entropy timeline of one VM's points (ransomware
 * signals, docs/secure-restore.md): two lines from 0 to 100 %, each point a
 * dot with its figures as a tooltip, an anomaly a larger red dot.
 */
export function signalsChart(vm, points) {
  const g = signalsTimeline(points);
  if (g.marks.length === 0)
    return h('p', { class: 'empty' }, `No ransomware signals for ${vm} yet (points backed up before they existed have none).`);
  const anomalies = g.marks.filter((m) => m.anomaly).length;
  const n = g.marks.length;
  const label = `Change rate and entropy of ${vm}: ${n} ${n === 1 ? 'point' : 'points'}, ${anomalies} ${anomalies === 1 ? 'anomaly' : 'anomalies'}`;
  const bottom = g.height - g.pad;
  const chart = svg(
    'svg',
    {
      class: 'signals-chart',
      role: 'img',
      'aria-label': label,
      viewBox: `0 0 ${g.width} ${g.height}`,
      width: g.width,
      height: g.height,
      'data-anomalies': anomalies,
    },
    svg('title', {}, label),
    svg('line', { class: 'axis', x1: g.pad, y1: bottom, x2: g.width - g.pad, y2: bottom }),
    svg('line', { class: 'grid', x1: g.pad, y1: g.pad, x2: g.width - g.pad, y2: g.pad }),
    svg('text', { class: 'tick', x: 2, y: g.pad + 4 }, '100%'),
    svg('text', { class: 'tick', x: 2, y: bottom + 4 }, '0%'),
    svg('polyline', { class: 'change', points: g.change }),
    svg('polyline', { class: 'entropy', points: g.entropy }),
    ...g.marks.flatMap((m) => [
      svg(
        'circle',
        {
          class: `change${m.anomaly ? ' anomaly' : ''}`,
          cx: m.x.toFixed(1),
          cy: m.yChange.toFixed(1),
          r: m.anomaly ? 6 : 3,
          'data-point': m.id,
        },
        svg('title', {}, m.label),
      ),
      svg(
        'circle',
        {
          class: `entropy${m.anomaly ? ' anomaly' : ''}`,
          cx: m.x.toFixed(1),
          cy: m.yEntropy.toFixed(1),
          r: m.anomaly ? 6 : 3,
          'data-point': m.id,
        },
        svg('title', {}, m.label),
      ),
    ]),
  );
  return h(
    'figure',
    { class: 'signals' },
    chart,
    h(
      'figcaption',
      {},
      h('span', { class: 'key change' }, 'changed share of the disk'),
      ' · ',
      h('span', { class: 'key entropy' }, 'incompressible share of new data'),
      ' · ',
      h('span', { class: 'key anomaly' }, 'anomaly'),
    ),
  );
}

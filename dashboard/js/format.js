/* global URLSearchParams -- browser globals: the lint config targets Node, this module runs in the page */
/**
 * Pure helpers: formatting and the role order. No DOM and no fetch here, so
 * the unit test imports this module in Node as it is.
 */

/** Roles in order; a token may do what its role and every lower role may. */
export const ROLES = ['viewer', 'operator', 'admin'];

export function roleAllows(have, need) {
  const i = ROLES.indexOf(have);
  return i >= 0 && i >= ROLES.indexOf(need);
}

/** 1536 → "1.5 KiB" (binary units, as `restorelab points` prints them). */
export function formatBytes(n) {
  if (typeof n !== 'number' || !Number.isFinite(n) || n < 0) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${v} B` : `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

/**
 * A worker's memory: what its running VMs hold against its budget, as the
 * placement judges it (docs/workers.md). 768, 4096 → "768 MiB / 4.0 GiB (19%)".
 */
export function memoryText(usedMiB, budgetMiB) {
  const MiB = 1024 * 1024;
  if (typeof budgetMiB !== 'number' || !Number.isFinite(budgetMiB) || budgetMiB <= 0) return '—';
  const used = typeof usedMiB === 'number' && Number.isFinite(usedMiB) && usedMiB > 0 ? usedMiB : 0;
  return `${formatBytes(used * MiB)} / ${formatBytes(budgetMiB * MiB)} (${Math.round((used / budgetMiB) * 100)}%)`;
}

/** 75.2 → "1 min 15 s"; null → "—". */
export function formatSeconds(s) {
  if (typeof s !== 'number' || !Number.isFinite(s) || s < 0) return '—';
  if (s < 60) return `${s < 10 ? s.toFixed(1) : Math.round(s)} s`;
  const m = Math.floor(s / 60);
  const rest = Math.round(s - m * 60);
  return m < 60 ? `${m} min ${rest} s` : `${Math.floor(m / 60)} h ${m % 60} min`;
}

/** An ISO time as "2026-12-01 03:04:05 UTC": one zone for everyone reading the same night's runs. */
export function formatTime(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return `${d.toISOString().slice(0, 19).replace('T', ' ')} UTC`;
}

/** The first characters of an id, enough to tell points and sessions apart on screen. */
export function shortId(id, n = 12) {
  if (typeof id !== 'string') return String(id ?? '');
  // Restore point and run ids are `<UTC time>-<random>`: cut after the
  // seconds, so two points of one minute stay apart (the title has it all).
  const timed = /^(\d{8}T\d{6}Z)-/.exec(id);
  if (timed) return timed[1];
  return id.length > n ? id.slice(0, n) : id;
}

/**
 * What a verification, run, test or session state looks like: the word is
 * always shown (colour is only a second cue), and `tone` picks the style.
 */
export function badge(value) {
  const v = value === null || value === undefined ? 'not verified' : String(value);
  // clean, infected and suspect are a point's malware scan status (docs/secure-restore.md).
  const good = ['passed', 'success', 'succeeded', 'running', 'ok', 'clean', 'up'];
  const bad = ['failed', 'error', 'dependency-failed', 'cancelled', 'missed', 'infected', 'gone'];
  const busy = ['starting', 'migrating', 'queued', 'pending', 'warning', 'partial', 'skipped-overlap', 'suspect'];
  const tone = good.includes(v) ? 'good' : bad.includes(v) ? 'bad' : busy.includes(v) ? 'busy' : 'neutral';
  return { label: v, tone };
}

/** A backup job's retention in words: "last 3, daily 7, weekly 4 (then gc)"; "keep all" without one. */
export function retentionText(r) {
  if (!r) return 'keep all';
  const rules = [
    ['keepLast', 'last'],
    ['keepHourly', 'hourly'],
    ['keepDaily', 'daily'],
    ['keepWeekly', 'weekly'],
    ['keepMonthly', 'monthly'],
    ['keepYearly', 'yearly'],
  ]
    .filter(([k]) => r[k] > 0)
    .map(([k, w]) => `${w} ${r[k]}`);
  return rules.join(', ') + (r.gc ? ' (then gc)' : '');
}

/** Session states that still hold a VM (the same list as src/session/session.ts ACTIVE_STATES). */
export const ACTIVE_SESSION_STATES = ['starting', 'running', 'migrating', 'migrated'];

export function isActiveSession(s) {
  return ACTIVE_SESSION_STATES.includes(s?.state);
}

/** Points grouped by VM name, each group newest first, groups by name. */
export function groupPointsByVm(points) {
  const by = new Map();
  for (const p of points ?? []) {
    const list = by.get(p.vm) ?? [];
    list.push(p);
    by.set(p.vm, list);
  }
  for (const list of by.values()) list.sort((a, b) => String(b.time).localeCompare(String(a.time)));
  return [...by.entries()].sort((a, b) => a[0].localeCompare(b[0]));
}

/** A directory path one level up: "/etc/ssh" → "/etc", "/etc" → "/". */
export function parentPath(p) {
  const parts = String(p).split('/').filter(Boolean);
  parts.pop();
  return `/${parts.join('/')}`;
}

export function joinPath(dir, name) {
  return `${dir.endsWith('/') ? dir : `${dir}/`}${name}`;
}

/** The file name a download should get, from Content-Disposition or the path. */
export function downloadName(contentDisposition, path) {
  const m = /filename\*?=(?:UTF-8'')?"?([^";]+)"?/i.exec(contentDisposition ?? '');
  if (m) {
    try {
      return decodeURIComponent(m[1]);
    } catch {
      return m[1];
    }
  }
  const base = String(path).split('/').filter(Boolean).pop() ?? 'root';
  return `${base}.tar`;
}

/** The route a hash names: "#/runs/abc" → { view: 'runs', args: ['abc'], query }. */
export function parseHash(hash) {
  const raw = String(hash ?? '').replace(/^#\/?/, '');
  const [path, qs] = raw.split('?');
  const parts = (path ?? '')
    .split('/')
    .filter(Boolean)
    .map((s) => decodeURIComponent(s));
  return { view: parts[0] ?? 'overview', args: parts.slice(1), query: new URLSearchParams(qs ?? '') };
}

const pct = (x) => `${(Number(x) * 100).toFixed(1)}%`;

/** A point's ransomware signals in a few words, as `restorelab points` prints them; "—" for a point without. */
export function signalsText(s) {
  if (!s) return '—';
  const changed = s.full ? 'full backup' : `changed ${formatBytes(s.changedBytes)} (${pct(s.changeRate)})`;
  return `${changed} · ${pct(s.incompressibleRatio)} of new data incompressible`;
}

/**
 * The per-VM timeline of the ransomware signals as chart geometry (an
 * inline SVG draws it, see ui.js): the points with signals, oldest left,
 * spread evenly; y is 0 to 100 % for both the change rate (share of the
 * disk changed) and the entropy (share of new data incompressible).
 */
export function signalsTimeline(points, { width = 480, height = 140, pad = 28 } = {}) {
  const list = [...(points ?? [])].filter((p) => p && p.signals).sort((a, b) => String(a.time).localeCompare(String(b.time)));
  const n = list.length;
  const x = (i) => (n === 1 ? width / 2 : pad + (i * (width - 2 * pad)) / (n - 1));
  const y = (r) => height - pad - Math.min(1, Math.max(0, Number(r) || 0)) * (height - 2 * pad);
  const line = (key) => list.map((p, i) => `${x(i).toFixed(1)},${y(p.signals[key]).toFixed(1)}`).join(' ');
  return {
    width,
    height,
    pad,
    change: line('changeRate'),
    entropy: line('incompressibleRatio'),
    marks: list.map((p, i) => ({
      id: p.id,
      time: p.time,
      x: x(i),
      yChange: y(p.signals.changeRate),
      yEntropy: y(p.signals.incompressibleRatio),
      anomaly: Boolean(p.signals.anomaly),
      label: `${p.time}: ${signalsText(p.signals)}${p.signals.anomaly ? ` · ANOMALY: ${(p.signals.reasons ?? []).join('; ')}` : ''}`,
    })),
  };
}

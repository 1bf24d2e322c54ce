/**
 * The run report: one JSON document (the shape `surebackup run --json`
 * prints, plus timings) and one self-contained HTML file per run, written to
 * <stateDir>/surebackup/runs/<run>/. The HTML needs nothing but itself:
 * screenshots are inline data: PNGs, the recovery-time trend is an inline SVG,
 * the style sheet is in the file, and there is no script.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { RunResult, TestResult, VmResult } from '../verify/contract.js';
import type { PointSignals } from '../repo/contract.js';

/** One run's recovery time of a VM, as the history keeps it (src/surebackup/history.ts) and the sparkline draws it. */
export interface TrendPoint {
  run: string;
  at: string;
  recoverySeconds: number;
  result: string;
}

export interface VmReport {
  name: string;
  point: string;
  result: VmResult['result'];
  group: boolean;
  tests: TestResult[];
  recoverySeconds: number;
  bootToHeartbeatSeconds: number | null;
  toFirstAnswerSeconds: number | null;
  screenshot: string | null;
  /** The screenshot of the VM's last passing run, when this run's screen looks very different (a warning). */
  baselineScreenshot?: string | null;
  /** The VM's serial console log, kept in the run's directory. */
  console: string | null;
  /** Ransomware signals of the point the VM booted (src/backup/signals.ts); null when the point has none. */
  signals?: PointSignals | null;
  /** The lab worker that ran the VM (runs through workers only). */
  worker?: string;
}
export interface RunReport {
  run: string;
  job: string;
  result: RunResult['result'];
  startedAt: string;
  endedAt: string;
  labKept: boolean;
  vms: VmReport[];
  report: string;
}

export function runReport(run: string, job: string, r: RunResult, o: { startedAt: Date; endedAt: Date; htmlPath: string }): RunReport {
  return {
    run,
    job,
    result: r.result,
    startedAt: o.startedAt.toISOString(),
    endedAt: o.endedAt.toISOString(),
    labKept: r.labKept,
    vms: r.vms.map((v) => ({
      name: v.name,
      point: v.point,
      result: v.result,
      group: v.group,
      tests: v.tests.map((t) => ({ name: t.name, kind: t.kind, result: t.result, seconds: round(t.seconds), detail: t.detail })),
      recoverySeconds: round(v.recoverySeconds),
      bootToHeartbeatSeconds: v.bootToHeartbeatSeconds === null ? null : round(v.bootToHeartbeatSeconds),
      toFirstAnswerSeconds: v.toFirstAnswerSeconds === null ? null : round(v.toFirstAnswerSeconds),
      screenshot: v.screenshot,
      baselineScreenshot: v.tests.find((t) => t.kind === 'screenshot' && t.baseline !== undefined)?.baseline ?? null,
      console: v.console ?? null,
      ...(v.worker !== undefined ? { worker: v.worker } : {}),
    })),
    report: o.htmlPath,
  };
}

const round = (s: number): number => Math.round(s * 1000) / 1000;

export function runDir(stateDir: string, run: string): string {
  return join(stateDir, 'surebackup', 'runs', run);
}

/** Writes report.json and report.html into `dir`; returns their paths. */
export function writeReports(dir: string, rep: RunReport, extra: HtmlExtra = {}): { json: string; html: string } {
  mkdirSync(dir, { recursive: true });
  const json = join(dir, 'report.json');
  writeFileSync(json, JSON.stringify(rep, null, 2) + '\n');
  writeFileSync(rep.report, renderHtml(rep, extra));
  return { json, html: rep.report };
}

export interface HtmlExtra {
  /** Recovery time per VM across runs, oldest first (this run included). */
  trends?: Record<string, TrendPoint[]>;
  passRate?: { runs: number; passed: number; rate: number | null };
}

const esc = (s: string): string =>
  s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
const cls = (r: string): string => (r === 'passed' || r === 'success' ? 'ok' : r === 'warning' || r === 'skipped' ? 'warn' : 'bad');

/**
 * The report's one style sheet, inline so the file stands alone. Exported
 * so the dashboard's Content-Security-Policy can allow exactly this sheet by
 * its hash (the report is shown in a srcdoc iframe, which inherits the
 * dashboard's policy) instead of every inline style. The hash covers the
 * element's whole text, so the sheet is exactly this string, newlines included.
 */
export const REPORT_CSS = `
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1 .verdict{padding:.1em .5em;border-radius:4px;color:#fff}
.verdict.ok,h1 .ok{background:#2a7;color:#fff}.verdict.warn,h1 .warn{background:#d90;color:#fff}.verdict.bad,h1 .bad{background:#c33;color:#fff}
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:.5em;vertical-align:top;text-align:left}
ul{margin:0;padding-left:1em}li.ok b{color:#2a7}li.warn b{color:#b80}li.bad b{color:#c33}
.detail{color:#555;font-size:12px;white-space:pre-wrap;word-break:break-word;max-width:40em}
.muted{color:#888;font-size:12px}.tag{background:#eef;border-radius:3px;padding:0 .3em;font-size:11px}
.shot img{max-width:320px;border:1px solid #ccc}.shot.flagged img{border:3px solid #c33}div.bad{color:#c33;font-weight:bold}
.shot.changed img{border:3px solid #d90}div.warn{color:#b80;font-weight:bold}.shot figure{margin:0 0 .5em}
`;

/** An inline SVG sparkline of recovery seconds; failed runs are red dots. */
export function sparkline(points: TrendPoint[], w = 160, h = 32): string {
  if (points.length === 0) return '';
  const max = Math.max(...points.map((p) => p.recoverySeconds), 1e-9);
  const x = (i: number): number => (points.length === 1 ? w / 2 : 3 + (i * (w - 6)) / (points.length - 1));
  const y = (v: number): number => h - 3 - (v / max) * (h - 6);
  const line = points.map((p, i) => `${x(i).toFixed(1)},${y(p.recoverySeconds).toFixed(1)}`).join(' ');
  const dots = points
    .map(
      (p, i) =>
        `<circle cx="${x(i).toFixed(1)}" cy="${y(p.recoverySeconds).toFixed(1)}" r="2" fill="${p.result === 'success' || p.result === 'warning' ? '#2a7' : '#c33'}"><title>${esc(p.at)}: ${p.recoverySeconds.toFixed(1)} s (${esc(p.result)})</title></circle>`,
    )
    .join('');
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}" viewBox="0 0 ${w} ${h}" role="img" aria-label="recovery time trend"><polyline fill="none" stroke="#888" stroke-width="1.5" points="${line}"/>${dots}</svg>`;
}

function inlinePng(path: string | null, alt = 'console'): string {
  if (path === null) return '<span class="muted">none</span>';
  let data: Buffer;
  try {
    data = readFileSync(path);
  } catch {
    return `<span class="muted">missing: ${esc(path)}</span>`;
  }
  return `<img alt="${esc(alt)}" src="data:image/png;base64,${data.toString('base64')}">`;
}

/** The console cell: the screenshot, flagged when the console check failed, beside the last passing run's when the screen changed. */
function consoleCell(v: VmReport): string {
  const kept = v.console ? `<div class="muted">serial console: ${esc(v.console)}</div>` : '';
  const flaggedTest = v.tests.find((t) => (t.kind === 'screenshot' || t.kind === 'console') && t.result === 'failed');
  if (flaggedTest) {
    return `<td class="shot flagged"><div class="bad">flagged: ${esc(flaggedTest.detail.split('; ')[0] ?? '')}</div>${inlinePng(v.screenshot)}${kept}</td>`;
  }
  if (v.baselineScreenshot) {
    return (
      `<td class="shot changed"><div class="warn">screen changed since the last passing run</div>` +
      `<figure>${inlinePng(v.screenshot)}<figcaption class="muted">this run</figcaption></figure>` +
      `<figure>${inlinePng(v.baselineScreenshot, 'console in the last passing run')}<figcaption class="muted">last passing run</figcaption></figure>${kept}</td>`
    );
  }
  return `<td class="shot">${inlinePng(v.screenshot)}${kept}</td>`;
}

export function renderHtml(rep: RunReport, extra: HtmlExtra = {}): string {
  const secs = (s: number | null): string => (s === null ? '–' : `${s.toFixed(1)} s`);
  const counts = { ok: rep.vms.filter((v) => v.result === 'success').length, warn: rep.vms.filter((v) => v.result === 'warning').length };
  const rate = extra.passRate?.rate;
  const rows = rep.vms
    .map((v) => {
      const tests = v.tests
        .map(
          (t) =>
            `<li class="${cls(t.result)}"><b>${esc(t.name)}</b> ${esc(t.result)} <span class="muted">${t.seconds.toFixed(1)} s</span><div class="detail">${esc(t.detail)}</div></li>`,
        )
        .join('');
      return `<tr class="${cls(v.result)}">
<td><b>${esc(v.name)}</b>${v.group ? ' <span class="tag">application group</span>' : ''}<div class="muted">${esc(v.point)}</div>${v.worker ? `<div class="muted">worker ${esc(v.worker)}</div>` : ''}${v.signals?.anomaly ? `<div class="bad"><b>ransomware anomaly:</b> ${esc(v.signals.reasons.join('; '))}</div>` : ''}</td>
<td class="verdict ${cls(v.result)}">${esc(v.result)}</td>
<td><ul>${tests}</ul></td>
<td>${secs(v.bootToHeartbeatSeconds)}<br>${secs(v.toFirstAnswerSeconds)}<br><b>${secs(v.recoverySeconds)}</b></td>
<td>${sparkline(extra.trends?.[v.name] ?? [])}</td>
${consoleCell(v)}
</tr>`;
    })
    .join('\n');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>SureBackup ${esc(rep.job)} ${esc(rep.run)}: ${esc(rep.result)}</title>
<style>${REPORT_CSS}</style></head><body>
<h1>SureBackup job ${esc(rep.job)}: <span class="verdict ${cls(rep.result)}">${esc(rep.result)}</span></h1>
<p>Run ${esc(rep.run)} · ${esc(rep.startedAt)} → ${esc(rep.endedAt)} · ${rep.vms.length} VMs: ${counts.ok} passed, ${counts.warn} with warnings, ${rep.vms.length - counts.ok - counts.warn} failed${rep.labKept ? ' · <b>lab kept running for troubleshooting</b>' : ''}${rate === undefined || rate === null ? '' : ` · pass rate ${(rate * 100).toFixed(0)}% over the last ${extra.passRate!.runs} runs`}</p>
<table><thead><tr><th>VM / point</th><th>result</th><th>tests</th><th>heartbeat / first answer / recovery</th><th>recovery trend</th><th>console</th></tr></thead>
<tbody>
${rows}
</tbody></table>
</body></html>
`;
}

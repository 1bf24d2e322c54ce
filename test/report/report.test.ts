import t from 'tap';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { encode } from 'fast-png';
import { renderHtml, runReport, sparkline, writeReports } from '../../src/report/report.js';
import type { RunResult } from '../../src/verify/contract.js';

function result(dir: string): RunResult {
  const png = join(dir, 'web.png');
  writeFileSync(png, encode({ width: 4, height: 2, data: new Uint8Array(24).fill(200), channels: 3, depth: 8 }));
  const test = (kind: string, result: 'passed' | 'failed', detail = 'ok') => ({ name: kind, kind, result, seconds: 1.5, detail });
  return {
    result: 'failed',
    labKept: false,
    vms: [
      {
        name: 'dns',
        point: 'p-dns',
        group: true,
        result: 'success',
        tests: [test('heartbeat', 'passed')],
        startedAt: 0,
        endedAt: 1000,
        screenshot: null,
        bootToHeartbeatSeconds: 10,
        toFirstAnswerSeconds: 12,
        recoverySeconds: 20,
      },
      {
        name: 'web',
        point: 'p-web',
        group: false,
        result: 'failed',
        tests: [
          test('http', 'failed', '<script>alert(1)</script> HTTP 0'),
          { ...test('screenshot', 'failed', `kernel panic on console: Kernel panic - not syncing; ${png}`), artifact: png },
        ],
        startedAt: 0,
        endedAt: 1000,
        screenshot: png,
        bootToHeartbeatSeconds: null,
        toFirstAnswerSeconds: null,
        recoverySeconds: 30.25,
      },
    ],
  };
}

t.test('JSON has the interface shape; HTML is one self-contained file', async (t) => {
  const dir = t.testdir();
  const rep = runReport('r1', 'nightly', result(dir), {
    startedAt: new Date(0),
    endedAt: new Date(60_000),
    htmlPath: join(dir, 'report.html'),
  });
  t.same(
    Object.keys(rep.vms[1]!).sort(),
    [
      'baselineScreenshot',
      'bootToHeartbeatSeconds',
      'console',
      'group',
      'name',
      'point',
      'recoverySeconds',
      'result',
      'screenshot',
      'tests',
      'toFirstAnswerSeconds',
    ].sort(),
  );
  t.equal(rep.vms[1]!.baselineScreenshot, null);
  t.same(Object.keys(rep.vms[1]!.tests[0]!).sort(), ['detail', 'kind', 'name', 'result', 'seconds']);
  const trend = [
    { run: 'a', at: '2026-01-01', recoverySeconds: 25, result: 'success' },
    { run: 'b', at: '2026-01-02', recoverySeconds: 40, result: 'failed' },
    { run: 'r1', at: '2026-01-03', recoverySeconds: 30.25, result: 'failed' },
  ];
  const paths = writeReports(dir, rep, { trends: { web: trend }, passRate: { runs: 3, passed: 1, rate: 1 / 3 } });
  t.same(JSON.parse(readFileSync(paths.json, 'utf8')), rep);
  const html = readFileSync(paths.html, 'utf8');
  t.match(html, /<img alt="console" src="data:image\/png;base64,iVBORw0KGgo/, 'screenshot inline');
  t.match(html, /<svg [^>]*aria-label="recovery time trend"><polyline/, 'trend inline');
  t.match(html, /flagged: kernel panic on console/);
  t.match(html, /pass rate 33% over the last 3 runs/);
  t.notMatch(html, /<script/, 'no script, and user text is escaped');
  t.match(html, /&lt;script&gt;alert\(1\)&lt;\/script&gt;/);
  t.notMatch(html, /<link|@import|url\(|src="(?!data:)|href=/, 'no external resource');
  t.match(html, /2 VMs: 1 passed, 0 with warnings, 1 failed/);
});

t.test("a screen that changed a lot shows beside the last passing run's, as a warning", async (t) => {
  const dir = t.testdir();
  const now = join(dir, 'now.png');
  const before = join(dir, 'before.png');
  writeFileSync(now, encode({ width: 2, height: 2, data: new Uint8Array(12).fill(10), channels: 3, depth: 8 }));
  writeFileSync(before, encode({ width: 2, height: 2, data: new Uint8Array(12).fill(250), channels: 3, depth: 8 }));
  const r: RunResult = {
    result: 'warning',
    labKept: false,
    vms: [
      {
        name: 'web',
        point: 'p',
        group: false,
        result: 'warning',
        startedAt: 0,
        endedAt: 1,
        screenshot: now,
        tests: [
          {
            name: 'screenshot',
            kind: 'screenshot',
            result: 'warning',
            seconds: 1,
            detail: `the screen changed a lot since run r0; ${now}`,
            artifact: now,
            baseline: before,
          },
        ],
        bootToHeartbeatSeconds: 1,
        toFirstAnswerSeconds: 1,
        recoverySeconds: 2,
      },
    ],
  };
  const rep = runReport('r1', 'j', r, { startedAt: new Date(0), endedAt: new Date(0), htmlPath: join(dir, 'report.html') });
  t.equal(rep.vms[0]!.baselineScreenshot, before);
  const html = renderHtml(rep);
  t.match(html, /<td class="shot changed"><div class="warn">screen changed since the last passing run<\/div>/);
  const imgs = [...html.matchAll(/<img alt="([^"]+)" src="data:image\/png;base64,([^"]+)"/g)].map((m) => [m[1], m[2]]);
  t.same(
    imgs,
    [
      ['console', readFileSync(now).toString('base64')],
      ['console in the last passing run', readFileSync(before).toString('base64')],
    ],
    'both pictures, inline',
  );
  t.notMatch(html, /flagged:/);
});

t.test('sparkline scales to the slowest run', async (t) => {
  t.equal(sparkline([]), '');
  const s = sparkline(
    [
      { run: 'a', at: 'x', recoverySeconds: 10, result: 'success' },
      { run: 'b', at: 'y', recoverySeconds: 20, result: 'success' },
    ],
    100,
    20,
  );
  t.match(s, 'points="3.0,10.0 97.0,3.0"');
  t.equal(
    renderHtml(
      runReport('r', 'j', { result: 'success', labKept: false, vms: [] }, { startedAt: new Date(0), endedAt: new Date(0), htmlPath: 'x' }),
    ).includes('0 VMs'),
    true,
  );
});

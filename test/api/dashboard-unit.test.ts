/**
 * The dashboard's browser-free modules, loaded in Node exactly as the page
 * loads them (no build step): formatting, routing, and the API client with a
 * fake fetch (unit test; the real server and browser are in
 * dashboard-e2e.test.ts). Plus the offline rule: no file of the dashboard
 * loads anything from another origin; and the server hands out the shell
 * without a token but no data.
 */
import t from 'tap';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { pathToFileURL } from 'node:url';
import request from 'supertest';
import { projectPath } from '../../src/paths.js';
import { testApi } from '../helpers/api.js';

const DASHBOARD = projectPath('dashboard');

type Fmt = {
  shortId(id: unknown, n?: number): string;
  roleAllows(have: string, need: string): boolean;
  formatBytes(n: unknown): string;
  memoryText(usedMiB: unknown, budgetMiB: unknown): string;
  formatSeconds(s: unknown): string;
  formatTime(iso: unknown): string;
  badge(v: unknown): { label: string; tone: string };
  groupPointsByVm(p: Array<{ vm: string; time: string; id: string }>): Array<[string, Array<{ id: string }>]>;
  parentPath(p: string): string;
  joinPath(d: string, n: string): string;
  downloadName(cd: string | null, path: string): string;
  parseHash(h: string): { view: string; args: string[]; query: URLSearchParams };
  isActiveSession(s: { state: string }): boolean;
  signalsText(s: unknown): string;
  signalsTimeline(
    points: unknown[],
    o?: { width?: number; height?: number; pad?: number },
  ): {
    change: string;
    entropy: string;
    marks: Array<{ id: string; x: number; yChange: number; yEntropy: number; anomaly: boolean; label: string }>;
  };
};

interface FakeResponse {
  ok: boolean;
  status: number;
  statusText: string;
  headers: Map<string, string>;
  json(): Promise<unknown>;
  text(): Promise<string>;
  blob(): Promise<Blob>;
}
type Api = {
  get(path: string): Promise<unknown>;
  post(path: string, body?: unknown): Promise<unknown>;
  blob(path: string): Promise<{ blob: Blob; type: string | null; disposition: string | null }>;
  setToken(t: string): void;
  token(): string | null;
  waitOperation(id: string, o?: { intervalMs?: number; onProgress?: (op: { state: string }) => void }): Promise<{ state: string }>;
};
type ApiMod = {
  createApi(o: {
    fetch: (url: string, init: RequestInit) => Promise<FakeResponse>;
    storage: unknown;
    onUnauthenticated?: (e?: unknown) => void;
  }): Api;
  relativeToApi(url: unknown): string | null;
  apiPath(path: string, q: Record<string, unknown>): string;
  ApiError: new (...a: unknown[]) => Error;
};

const load = async <T>(rel: string): Promise<T> => (await import(pathToFileURL(join(DASHBOARD, rel)).href)) as T;

function response(status: number, body: unknown, headers: Record<string, string> = {}): FakeResponse {
  const text = typeof body === 'string' ? body : JSON.stringify(body);
  return {
    ok: status >= 200 && status < 300,
    status,
    statusText: status === 200 ? 'OK' : 'Error',
    headers: new Map(Object.entries(headers)),
    json: async () => JSON.parse(text) as unknown,
    text: async () => text,
    blob: async () => new Blob([text], { type: headers['content-type'] ?? '' }),
  };
}

function memoryStorage(): { getItem(k: string): string | null; setItem(k: string, v: string): void; removeItem(k: string): void } {
  const m = new Map<string, string>();
  return {
    getItem: (k) => m.get(k) ?? null,
    setItem: (k, v) => {
      m.set(k, v);
    },
    removeItem: (k) => {
      m.delete(k);
    },
  };
}

t.test('formatting and roles', async (t) => {
  const f = await load<Fmt>('js/format.js');
  t.ok(f.roleAllows('admin', 'operator'));
  t.ok(f.roleAllows('operator', 'operator'));
  t.notOk(f.roleAllows('viewer', 'operator'));
  t.notOk(f.roleAllows('nobody', 'viewer'), 'an unknown role may nothing');
  t.equal(f.formatBytes(512), '512 B');
  t.equal(f.formatBytes(1536), '1.5 KiB');
  t.equal(f.formatBytes(3 * 1024 ** 3), '3.0 GiB');
  t.equal(f.formatBytes(undefined), '—');
  t.equal(f.memoryText(768, 4096), '768 MiB / 4.0 GiB (19%)', "a worker's memory against its budget");
  t.equal(f.memoryText(0, 2048), '0 B / 2.0 GiB (0%)', 'an idle worker');
  t.equal(f.memoryText(undefined, undefined), '—', 'a worker that reported no budget');
  t.equal(f.formatSeconds(4.25), '4.3 s');
  t.equal(f.formatSeconds(75), '1 min 15 s');
  t.equal(f.formatSeconds(null), '—');
  t.equal(f.formatTime('2026-12-01T03:04:05.678Z'), '2026-12-01 03:04:05 UTC');
  t.equal(f.formatTime(null), '—');
  t.same(f.badge('success'), { label: 'success', tone: 'good' });
  t.same(f.badge('dependency-failed'), { label: 'dependency-failed', tone: 'bad' });
  t.same(
    [f.badge('clean').tone, f.badge('infected').tone, f.badge('suspect').tone, f.badge('unscanned').tone],
    ['good', 'bad', 'busy', 'neutral'],
    "a point's scan status",
  );
  t.same(f.badge('warning'), { label: 'warning', tone: 'busy' });
  t.same(f.badge(null), { label: 'not verified', tone: 'neutral' }, 'a point never verified says so in words');
  t.equal(f.shortId('20261201T040951Z-bfe834'), '20261201T040951Z', 'time-based ids keep their seconds');
  t.equal(f.shortId('3f2c9a1e-0d4b-4c8e-9a77-5e1f00c2ab10'), '3f2c9a1e-0d4');
  t.equal(f.shortId('c0134c26'), 'c0134c26');
  t.ok(f.isActiveSession({ state: 'migrated' }));
  t.notOk(f.isActiveSession({ state: 'stopped' }));
});

t.test('points grouped per VM, newest first', async (t) => {
  const f = await load<Fmt>('js/format.js');
  const g = f.groupPointsByVm([
    { vm: 'web', time: '2026-01-01T00:00:00Z', id: 'w1' },
    { vm: 'db', time: '2026-01-02T00:00:00Z', id: 'd1' },
    { vm: 'web', time: '2026-01-03T00:00:00Z', id: 'w2' },
  ]);
  t.same(
    g.map(([vm, l]) => [vm, l.map((p) => p.id)]),
    [
      ['db', ['d1']],
      ['web', ['w2', 'w1']],
    ],
  );
});

t.test("ransomware signals: the words of a point, and the timeline chart's geometry", async (t) => {
  const f = await load<Fmt>('js/format.js');
  const sig = (changeRate: number, incompressibleRatio: number, o: { full?: boolean; anomaly?: boolean } = {}) => ({
    changedBytes: changeRate * 64 * 1048576,
    changeRate,
    incompressibleRatio,
    full: o.full ?? false,
    anomaly: o.anomaly ?? false,
    reasons: o.anomaly ? ['93.0 % of the new data is incompressible'] : [],
  });
  t.equal(f.signalsText(null), '—', 'a point from before signals');
  t.equal(f.signalsText(sig(0.5, 0.1, { full: true })), 'full backup · 10.0% of new data incompressible');
  t.equal(f.signalsText(sig(0.25, 0.05)), 'changed 16 MiB (25.0%) · 5.0% of new data incompressible');
  const g = f.signalsTimeline(
    [
      { id: 'c', time: '2026-01-03T00:00:00Z', signals: sig(1, 1, { anomaly: true }) },
      { id: 'old', time: '2026-01-00T00:00:00Z', signals: null },
      { id: 'a', time: '2026-01-01T00:00:00Z', signals: sig(0, 0, { full: true }) },
      { id: 'b', time: '2026-01-02T00:00:00Z', signals: sig(0.5, 0.25) },
    ],
    { width: 200, height: 100, pad: 10 },
  );
  t.same(
    g.marks.map((m) => m.id),
    ['a', 'b', 'c'],
    'oldest left; a point without signals is left out',
  );
  t.same(
    g.marks.map((m) => m.x),
    [10, 100, 190],
    'spread evenly between the paddings',
  );
  t.same(
    g.marks.map((m) => m.yChange),
    [90, 50, 10],
    '0 % at the bottom, 100 % at the top',
  );
  t.equal(g.change, '10.0,90.0 100.0,50.0 190.0,10.0');
  t.equal(g.entropy, '10.0,90.0 100.0,70.0 190.0,10.0');
  t.same(
    g.marks.map((m) => m.anomaly),
    [false, false, true],
  );
  t.match(g.marks[2]?.label, /ANOMALY: 93\.0 % of the new data is incompressible/, 'the tooltip says why');
  t.equal(
    f.signalsTimeline([{ id: 'x', time: 't', signals: sig(2, -1) }], { width: 200, height: 100, pad: 10 }).change,
    '100.0,10.0',
    'one point in the middle, rates clamped to 0..100 %',
  );
});

t.test('paths, download names and hash routes', async (t) => {
  const f = await load<Fmt>('js/format.js');
  t.equal(f.parentPath('/etc/ssh'), '/etc');
  t.equal(f.parentPath('/etc'), '/');
  t.equal(f.parentPath('/'), '/');
  t.equal(f.joinPath('/', 'etc'), '/etc');
  t.equal(f.joinPath('/etc', 'hostname'), '/etc/hostname');
  t.equal(f.downloadName('attachment; filename="etc.tar"', '/etc'), 'etc.tar');
  t.equal(f.downloadName(null, '/var/log'), 'log.tar');
  t.equal(f.downloadName(null, '/'), 'root.tar');
  const r = f.parseHash('#/runs/abc%20d?x=1');
  t.equal(r.view, 'runs');
  t.same(r.args, ['abc d']);
  t.equal(r.query.get('x'), '1');
  t.equal(f.parseHash('').view, 'overview');
});

t.test('API client: bearer header, JSON bodies, errors with code and hint', async (t) => {
  const { createApi, relativeToApi, apiPath } = await load<ApiMod>('js/api.js');
  const calls: Array<{ url: string; init: RequestInit }> = [];
  const replies: FakeResponse[] = [];
  let unauth = 0;
  const api = createApi({
    fetch: async (url, init) => {
      calls.push({ url, init });
      return replies.shift() as FakeResponse;
    },
    storage: memoryStorage(),
    onUnauthenticated: () => {
      unauth++;
    },
  });
  await t.rejects(api.get('/whoami'), { status: 401, code: 'UNAUTHENTICATED' }, 'no token: no request at all');
  t.equal(calls.length, 0);
  t.equal(unauth, 1);

  api.setToken('rl_x_y');
  replies.push(response(200, { id: 'a', name: 'ops', role: 'operator' }));
  t.same(await api.get('/whoami'), { id: 'a', name: 'ops', role: 'operator' });
  t.equal(calls[0]?.url, '/api/v1/whoami');
  t.equal((calls[0]?.init.headers as Record<string, string>).authorization, 'Bearer rl_x_y');

  replies.push(response(202, { id: 'op1', state: 'running' }));
  await api.post('/sessions', { vm: 'web' });
  t.equal(calls[1]?.init.method, 'POST');
  t.equal(calls[1]?.init.body, '{"vm":"web"}');
  t.equal((calls[1]?.init.headers as Record<string, string>)['content-type'], 'application/json');

  replies.push(
    response(403, { error: { code: 'FORBIDDEN', message: "this token's role may not do this", hint: 'use an operator token' } }),
  );
  await t.rejects(api.post('/sessions', { vm: 'web' }), {
    status: 403,
    code: 'FORBIDDEN',
    message: "this token's role may not do this",
    hint: 'use an operator token',
  });

  replies.push(response(502, '<html>bad gateway</html>'));
  await t.rejects(api.get('/points'), { status: 502, code: 'HTTP_502' }, "a body that is not the API's error still gives a message");

  replies.push(response(401, { error: { code: 'UNAUTHENTICATED', message: 'the bearer token is not valid' } }));
  await t.rejects(api.get('/points'), { code: 'UNAUTHENTICATED' });
  t.equal(unauth, 2, 'a 401 sends the user back to the login page');

  replies.push(response(200, 'PNGDATA', { 'content-type': 'image/png' }));
  const b = await api.blob('/sessions/s1/screenshot');
  t.equal(b.type, 'image/png');
  t.equal(await b.blob.text(), 'PNGDATA');

  replies.push(response(200, { id: 'op1', state: 'running' }), response(200, { id: 'op1', state: 'succeeded', result: { id: 's1' } }));
  const seen: string[] = [];
  const done = await api.waitOperation('op1', { intervalMs: 1, onProgress: (o) => seen.push(o.state) });
  t.equal(done.state, 'succeeded');
  t.same(seen, ['running', 'succeeded']);

  t.equal(relativeToApi('/api/v1/runs/r1'), '/runs/r1');
  t.equal(relativeToApi(null), null);
  t.equal(apiPath('/runs', { job: 'nightly', limit: 5, x: '' }), '/runs?job=nightly&limit=5');
});

t.test('offline: no file loads anything from another origin, no inline script', async (t) => {
  const files: string[] = [];
  const walk = (d: string): void => {
    for (const n of readdirSync(d)) {
      const p = join(d, n);
      if (statSync(p).isDirectory()) walk(p);
      else files.push(p);
    }
  };
  walk(DASHBOARD);
  t.ok(
    files.some((f) => f.endsWith('index.html')),
    'index.html exists',
  );
  for (const f of files) {
    const text = readFileSync(f, 'utf8');
    const name = relative(DASHBOARD, f);
    t.notMatch(text, /(?:src|href)\s*=\s*["']?(?:https?:)?\/\//i, `${name}: no src/href to another origin`);
    t.notMatch(text, /(?:import|from)\s*\(?\s*["'](?:https?:)?\/\//i, `${name}: no module import from another origin`);
    t.notMatch(text, /@import\s+url\(\s*["']?(?:https?:)?\/\//i, `${name}: no CSS import from another origin`);
    t.notMatch(text, /innerHTML|outerHTML|insertAdjacentHTML|document\.write/, `${name}: data never reaches the page as markup`);
  }
  const html = readFileSync(join(DASHBOARD, 'index.html'), 'utf8');
  t.notMatch(html, /<script(?![^>]*\bsrc=)[^>]*>/i, 'index.html has no inline script');
  t.match(html, /<html lang="en">/);
});

t.test('the server serves the dashboard shell without a token, and nothing else', async (t) => {
  const api = await testApi();
  t.teardown(api.close);
  const index = await request(api.app).get('/').expect(200);
  t.match(index.headers['content-type'], /^text\/html/);
  t.match(index.text, /<script type="module" src="js\/app.js">/);
  const mod = await request(api.app).get('/js/app.js').expect(200);
  t.match(mod.headers['content-type'], /javascript/, 'ES modules need a JavaScript MIME type or the browser refuses them');
  await request(api.app)
    .get('/style.css')
    .expect(200)
    .expect('content-type', /text\/css/);
  const data = await request(api.app).get('/api/v1/points').expect(401);
  t.equal(data.body.error.code, 'UNAUTHENTICATED', 'the data behind it still needs a token');
});

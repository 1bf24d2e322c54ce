/** The API's frame: auth and roles, rate limiting, validation, errors, OpenAPI, operations with SSE, metrics. */
import t from 'tap';
import request from 'supertest';
import { readFileSync } from 'node:fs';
import { projectPath } from '../../src/paths.js';
import { API_ERRORS } from '../../src/api/errors.js';
import { AuthFailureLimiter } from '../../src/api/rate-limit.js';
import { testApi } from '../helpers/api.js';

t.test('healthz needs no token; everything else does', async (t) => {
  const api = await testApi();
  t.teardown(api.close);
  await request(api.app).get('/healthz').expect(200);
  for (const path of ['/api/v1/whoami', '/api/v1/openapi.json', '/metrics', '/api/v1/operations', '/api/v1/no-such-route']) {
    const res = await request(api.app).get(path).expect(401);
    t.equal(res.body.error.code, 'UNAUTHENTICATED', path);
    t.equal(res.headers['www-authenticate'], 'Bearer realm="restorelab"');
  }
});

t.test('a wrong token gets 401 and is logged without the token', async (t) => {
  const api = await testApi();
  t.teardown(api.close);
  const wrong = 'rl_0123456789ab_' + 'A'.repeat(43);
  const res = await request(api.app).get('/api/v1/whoami').set('authorization', `Bearer ${wrong}`).expect(401);
  t.match(res.body.error.message, /not valid/);
  const failed = api.logs.filter((l) => l.msg === 'authentication failed');
  t.equal(failed.length, 1);
  t.notMatch(JSON.stringify(api.logs), /AAAAAAAAAA/, 'the token is in no log line');
  // A token that is right but revoked is refused too.
  const made = await api.ctx.tokens.create('gone', 'viewer');
  await request(api.app).get('/api/v1/whoami').set('authorization', `Bearer ${made.token}`).expect(200);
  await api.ctx.tokens.revoke('gone');
  await request(api.app).get('/api/v1/whoami').set('authorization', `Bearer ${made.token}`).expect(401);
});

t.test('roles: viewer reads, operator acts, admin manages tokens; 403 names the role needed', async (t) => {
  const api = await testApi();
  t.teardown(api.close);
  const who = await request(api.app).get('/api/v1/whoami').set('authorization', api.auth.viewer).expect(200);
  t.equal(who.body.role, 'viewer');
  const denied = await request(api.app).get('/api/v1/tokens').set('authorization', api.auth.operator).expect(403);
  t.equal(denied.body.error.code, 'FORBIDDEN');
  t.match(denied.body.error.message, /needs admin/);
  t.ok(
    api.logs.some((l) => l.level === 40 && String(l.msg).includes('needs admin')),
    'a 403 is logged',
  );
  t.notMatch(JSON.stringify(api.logs), new RegExp(api.auth.operator.slice(7 + 16)), 'the token is in no log line');
  const list = await request(api.app).get('/api/v1/tokens').set('authorization', api.auth.admin).expect(200);
  t.equal(list.body.tokens.length, 3);
  t.notOk(JSON.stringify(list.body).includes('hash'), 'hashes are never listed');
  const made = await request(api.app)
    .post('/api/v1/tokens')
    .set('authorization', api.auth.admin)
    .send({ name: 'ci', role: 'operator' })
    .expect(201);
  t.match(made.body.token, /^rl_[a-f0-9]{12}_/);
  await request(api.app).get('/api/v1/whoami').set('authorization', `Bearer ${made.body.token}`).expect(200);
  await request(api.app).delete(`/api/v1/tokens/${made.body.id}`).set('authorization', api.auth.admin).expect(200);
  await request(api.app).get('/api/v1/whoami').set('authorization', `Bearer ${made.body.token}`).expect(401);
  await request(api.app).delete('/api/v1/tokens/nobody').set('authorization', api.auth.admin).expect(404);
});

t.test('healthz says only ok; every response carries the security headers', async (t) => {
  const api = await testApi();
  t.teardown(api.close);
  const health = await request(api.app).get('/healthz').expect(200);
  t.same(health.body, { ok: true }, 'no pid, nothing about the host');
  const pages = [await request(api.app).get('/').expect(200), await request(api.app).get('/js/app.js').expect(200)];
  const apis = [
    health,
    await request(api.app).get('/api/v1/whoami').set('authorization', api.auth.viewer).expect(200),
    await request(api.app).get('/api/v1/whoami').expect(401),
    await request(api.app).get('/metrics').set('authorization', api.auth.viewer).expect(200),
  ];
  for (const [i, r] of [...pages, ...apis].entries()) {
    const what = `response ${i} (${r.status})`;
    t.equal(r.headers['x-frame-options'], 'DENY', what);
    t.equal(r.headers['x-content-type-options'], 'nosniff', what);
    t.equal(r.headers['referrer-policy'], 'no-referrer', what);
    t.match(r.headers['content-security-policy'], /frame-ancestors 'none'/, what);
  }
  const csp = pages[0]?.headers['content-security-policy'] as string;
  t.match(csp, /default-src 'self'/);
  t.match(csp, /script-src 'self'(;|$)/, 'no inline or foreign script');
  t.notMatch(csp, /unsafe-inline|unsafe-eval/);
  t.equal(
    apis[1]?.headers['content-security-policy'],
    "default-src 'none'; frame-ancestors 'none'; sandbox",
    'API responses may load nothing',
  );
});

t.test("the dashboard policy allows exactly the run report's inline style sheet", async (t) => {
  const { DASHBOARD_CSP } = await import('../../src/api/app.js');
  const { renderHtml } = await import('../../src/report/report.js');
  const { createHash } = await import('node:crypto');
  const html = renderHtml({ run: 'r', job: 'j', result: 'success', startedAt: '', endedAt: '', vms: [], labKept: false, report: '' });
  const sheets = [...html.matchAll(/<style>([\s\S]*?)<\/style>/g)].map((m) => m[1] as string);
  t.equal(sheets.length, 1);
  t.match(
    DASHBOARD_CSP,
    `'sha256-${createHash('sha256')
      .update(sheets[0] as string)
      .digest('base64')}'`,
  );
  t.notMatch(html, /style=/, 'and the report has no style attribute the policy would block');
});

t.test('auth failures are rate limited, but never lock out a valid token', async (t) => {
  const limiter = new AuthFailureLimiter(10, 60_000, Date.now, { baseDelayMs: 5, maxDelayMs: 20 });
  const api = await testApi({ authLimiter: limiter });
  t.teardown(api.close);
  const wrong = 'rl_0123456789ab_' + 'B'.repeat(43);
  const statuses: number[] = [];
  for (let i = 0; i < 50; i++) statuses.push((await request(api.app).get('/api/v1/whoami').set('authorization', `Bearer ${wrong}`)).status);
  t.same(statuses.slice(0, 10), Array(10).fill(401), 'the first ten failures are 401');
  t.same(statuses.slice(10), Array(40).fill(429), 'then 429');
  const limited = await request(api.app).get('/api/v1/whoami').set('authorization', 'Bearer nope').expect(429);
  t.equal(limited.body.error.code, 'RATE_LIMITED');
  t.ok(Number(limited.headers['retry-after']) > 0, 'with Retry-After');
  // Every local client shares 127.0.0.1: the CLI's valid token still works, at once.
  const t0 = Date.now();
  for (const role of ['viewer', 'operator', 'admin'] as const) {
    const ok = await request(api.app).get('/api/v1/whoami').set('authorization', api.auth[role]).expect(200);
    t.equal(ok.body.role, role);
  }
  t.ok(Date.now() - t0 < 1000, 'without a delay');
  await request(api.app).get('/metrics').set('authorization', api.auth.viewer).expect(200);
  t.equal(api.logs.filter((l) => l.msg === 'authentication failed').length, 10, 'one log line per failure until the limit');
  t.equal(api.logs.filter((l) => String(l.msg).startsWith('too many failed authentications')).length, 1, 'then one line for the address');
});

t.test('the limiter: failures over the limit back off, capped; memory per address is bounded', async (t) => {
  let now = 1_000_000;
  const l = new AuthFailureLimiter(3, 60_000, () => now, { baseDelayMs: 100, maxDelayMs: 1000 });
  t.same([l.fail('a'), l.fail('a'), l.fail('a')], [0, 0, 0]);
  t.ok(l.blocked('a'));
  t.notOk(l.blocked('b'), 'per address');
  t.same([l.fail('a'), l.fail('a'), l.fail('a'), l.fail('a'), l.fail('a')], [100, 200, 400, 800, 1000]);
  for (let i = 0; i < 10_000; i++) l.fail('a');
  t.equal((l as unknown as { failures: Map<string, number[]> }).failures.get('a')?.length, 3, 'only the last maxFailures times are kept');
  now += 61_000;
  t.notOk(l.blocked('a'), 'the window passes');
  t.equal(l.fail('a'), 0, 'and the backoff starts over');
});

t.test('bad bodies: malformed JSON, unknown fields, wrong types, oversize, wrong media type', async (t) => {
  const api = await testApi();
  t.teardown(api.close);
  const post = () => request(api.app).post('/api/v1/tokens').set('authorization', api.auth.admin);
  const malformed = await post().set('content-type', 'application/json').send('{"name": "x", ').expect(400);
  t.equal(malformed.body.error.code, 'MALFORMED_JSON');
  const unknown = await post().send({ name: 'x', role: 'viewer', extra: 1 }).expect(400);
  t.equal(unknown.body.error.code, 'VALIDATION_FAILED');
  t.match(unknown.body.error.message, /body: unknown property "extra"/);
  t.equal(unknown.body.error.details[0].path, 'body/extra');
  const wrong = await post().send({ name: 'x', role: 'root' }).expect(400);
  t.match(wrong.body.error.message, /body\/role: must be one of/);
  const missing = await post().send({}).expect(400);
  t.match(missing.body.error.message, /required property 'name'/);
  const big = await post()
    .send({ name: 'x'.repeat(300 * 1024), role: 'viewer' })
    .expect(413);
  t.equal(big.body.error.code, 'BODY_TOO_LARGE');
  const text = await post().set('content-type', 'text/plain').send('name=x').expect(415);
  t.equal(text.body.error.code, 'UNSUPPORTED_MEDIA_TYPE');
  const q = await request(api.app).get('/api/v1/whoami?debug=1').set('authorization', api.auth.viewer).expect(400);
  t.match(q.body.error.message, /query: unknown parameter "debug"/);
});

t.test('every error code of the registry is documented in docs/api.md', async (t) => {
  const doc = readFileSync(projectPath('docs', 'api.md'), 'utf8');
  for (const code of Object.keys(API_ERRORS)) t.match(doc, new RegExp(`\`${code}\``), `${code} is documented`);
});

t.test('the OpenAPI document lists every route with its schemas', async (t) => {
  const api = await testApi();
  t.teardown(api.close);
  const res = await request(api.app).get('/api/v1/openapi.json').set('authorization', api.auth.viewer).expect(200);
  t.equal(res.body.openapi, '3.1.0');
  for (const r of api.table.routes) {
    const p = r.path.replace(/:(\w+)/g, '{$1}');
    t.ok(res.body.paths[p]?.[r.method], `${r.method} ${p} is in the document`);
    if (r.body)
      t.ok(
        JSON.stringify(res.body.paths[p][r.method].requestBody).includes('#/components/schemas/'),
        `${r.method} ${p} has its body schema`,
      );
  }
  t.ok(res.body.components.schemas.ApiTokenCreate, 'schemas from config/schemas are components');
  // Every reference resolves inside the document (no $defs or file references left dangling).
  const refs = [...JSON.stringify(res.body).matchAll(/"\$ref":"([^"]+)"/g)].map((m) => m[1] as string);
  t.ok(refs.length > 0);
  for (const ref of new Set(refs)) {
    t.match(ref, /^#\/components\/schemas\//, `${ref} is local`);
    t.ok(res.body.components.schemas[ref.split('/').pop() as string], `${ref} resolves`);
  }
});

t.test('long operations: 202-style resource, progress over SSE, cancel', async (t) => {
  const api = await testApi();
  t.teardown(api.close);
  const op = api.ctx.operations.start('test', 'tester', async (o) => {
    for (let i = 1; i <= 3; i++) {
      o.progress(i / 3, `step ${i}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    return { result: { done: true }, resource: '/api/v1/whoami' };
  });
  const sse = await request(api.app)
    .get(`/api/v1/operations/${op.id}/events`)
    .set('authorization', api.auth.viewer)
    .buffer(true)
    .parse((res, cb) => {
      let text = '';
      res.on('data', (c: Buffer) => {
        text += c.toString();
      });
      res.on('end', () => cb(null, text));
    })
    .expect(200);
  t.match(sse.headers['content-type'], /^text\/event-stream/);
  const events = String(sse.body).split('\n\n').filter(Boolean);
  t.ok(events.filter((e) => e.includes('event: progress')).length >= 3, 'progress events');
  t.match(events[events.length - 1], /event: done/);
  const got = await request(api.app).get(`/api/v1/operations/${op.id}`).set('authorization', api.auth.viewer).expect(200);
  t.equal(got.body.state, 'succeeded');
  t.same(got.body.result, { done: true });
  const slow = api.ctx.operations.start(
    'slow',
    'tester',
    (o) => new Promise((_r, reject) => o.signal.addEventListener('abort', () => reject(new Error('stopped')))),
  );
  await request(api.app).post(`/api/v1/operations/${slow.id}/cancel`).set('authorization', api.auth.viewer).expect(403);
  await request(api.app).post(`/api/v1/operations/${slow.id}/cancel`).set('authorization', api.auth.operator).expect(202);
  t.equal((await api.ctx.operations.wait(slow.id))?.state, 'cancelled');
  await request(api.app).post(`/api/v1/operations/${slow.id}/cancel`).set('authorization', api.auth.operator).expect(409);
  await request(api.app).get('/api/v1/operations/nope').set('authorization', api.auth.viewer).expect(404);
});

t.test('metrics are Prometheus text and count requests', async (t) => {
  const api = await testApi();
  t.teardown(api.close);
  await request(api.app).get('/api/v1/whoami').set('authorization', api.auth.viewer).expect(200);
  const res = await request(api.app).get('/metrics').set('authorization', api.auth.viewer).expect(200);
  t.match(res.text, /restorelab_publications 0/);
  t.match(res.text, /restorelab_http_requests_total\{method="GET",route="\/api\/v1\/whoami",status="200"\} 1/);
  t.match(res.text, /restorelab_recovery_seconds_bucket/);
});

t.test('every declared route: 401 without a token, 403 for a role below the one it needs', async (t) => {
  const api = await testApi();
  t.teardown(api.close);
  const below: Record<string, string[]> = { viewer: [], operator: ['viewer'], admin: ['viewer', 'operator'] };
  t.ok(api.table.routes.length >= 40, `${api.table.routes.length} routes declared`);
  for (const r of api.table.routes) {
    const path = `/api/v1${r.path.replace(/:(\w+)/g, 'x')}`;
    const anon = await request(api.app)[r.method](path).expect(401);
    t.equal(anon.body.error.code, 'UNAUTHENTICATED', `${r.method} ${r.path} without a token`);
    for (const role of below[r.role] ?? []) {
      const res = await request(api.app)
        [r.method](path)
        .set('authorization', api.auth[role as 'viewer' | 'operator'])
        .expect(403);
      t.match(res.body.error.message, new RegExp(`needs ${r.role}`), `${r.method} ${r.path} as ${role}`);
    }
  }
});

// The verdicts of the tcp, http, dns and ping tests, pinned in both
// directions: every check is given the answer that must pass it and the
// answers that must fail it (a wrong or missing DNS record, a wrong HTTP
// status, a body that is not there, a banner that does not match). The probe
// itself runs here too, on loopback against real sockets (no namespace; the
// namespace path is test/verify/probe.test.ts). Fast: it is one of the tests
// the mutation run uses (docs/testing.md).
import t from 'tap';
import { createServer as createTcpServer, type Server } from 'node:net';
import { createSocket } from 'node:dgram';
import { judgeDns, judgeHttp, judgePing, judgeTcp } from '../../src/verify/network.js';
import { dnsAnswer, httpAnswer, probe, type ProbeAnswer } from '../../src/verify/probe.js';

const answer = (o: Partial<ProbeAnswer> = {}): ProbeAnswer => ({ ok: true, detail: 'd', ...o });

t.test('dns: only the expected A record passes; a wrong, missing or refused answer fails and says what came back', async (t) => {
  const right = judgeDns(answer({ a: ['192.168.77.10'], detail: 'NOERROR, A 192.168.77.10' }), 'web.lab.test', '192.168.77.10');
  t.same(right, { ok: true, detail: 'web.lab.test → NOERROR, A 192.168.77.10' });
  const among = judgeDns(answer({ a: ['10.0.0.1', '192.168.77.10'] }), 'web.lab.test', '192.168.77.10');
  t.equal(among.ok, true, 'the expected address among several');
  const wrong = judgeDns(answer({ a: ['192.168.77.99'], detail: 'NOERROR, A 192.168.77.99' }), 'web.lab.test', '192.168.77.10');
  t.same(wrong, { ok: false, detail: 'web.lab.test → NOERROR, A 192.168.77.99; expected A 192.168.77.10' });
  const none = judgeDns(answer({ a: [], detail: 'NOERROR, A none' }), 'web.lab.test', '192.168.77.10');
  t.same(none, { ok: false, detail: 'web.lab.test → NOERROR, A none; expected A 192.168.77.10' });
  const noField = judgeDns(answer({ detail: 'x' }), 'web.lab.test', '192.168.77.10');
  t.equal(noField.ok, false, 'an answer without records');
  // NXDOMAIN or a truncated reply is not ok even if it carries the address.
  const refused = judgeDns(
    answer({ ok: false, a: ['192.168.77.10'], detail: 'NXDOMAIN, A 192.168.77.10' }),
    'web.lab.test',
    '192.168.77.10',
  );
  t.same(refused, { ok: false, detail: 'web.lab.test → NXDOMAIN, A 192.168.77.10; expected A 192.168.77.10' });
  // Without `expect`: any A record passes, none fails.
  t.same(judgeDns(answer({ a: ['10.0.0.1'], detail: 'NOERROR, A 10.0.0.1' }), 'n.test'), {
    ok: true,
    detail: 'n.test → NOERROR, A 10.0.0.1',
  });
  t.same(judgeDns(answer({ a: [], detail: 'NOERROR, A none' }), 'n.test'), {
    ok: false,
    detail: 'n.test → NOERROR, A none; expected an A record',
  });
  t.equal(judgeDns(answer({ ok: false, a: ['10.0.0.1'] }), 'n.test').ok, false, 'a failed query with records does not pass either');
  t.equal(judgeDns(answer({ a: ['10.0.0.1'] }), 'n.test', '').ok, false, 'an empty expected address is not "any"');
});

t.test('http: exactly the expected status, and the body when asked', async (t) => {
  t.same(judgeHttp(answer({ status: 200, body: 'hello', detail: 'HTTP 200' }), {}), { ok: true, detail: 'HTTP 200' }, '200 is the default');
  t.same(judgeHttp(answer({ status: 404, detail: 'HTTP 404' }), {}), { ok: false, detail: 'HTTP 404; expected status 200' });
  t.same(judgeHttp(answer({ status: 200, detail: 'HTTP 200' }), { status: 201 }), { ok: false, detail: 'HTTP 200; expected status 201' });
  t.same(judgeHttp(answer({ status: 404, detail: 'HTTP 404' }), { status: 404 }), { ok: true, detail: 'HTTP 404' });
  t.same(
    judgeHttp(answer({ ok: false, detail: 'connect ECONNREFUSED' }), {}),
    { ok: false, detail: 'connect ECONNREFUSED; expected status 200' },
    'no answer at all',
  );
  t.same(judgeHttp(answer({ status: 200, body: 'restorelab OK', detail: 'HTTP 200' }), { body: 'OK' }), { ok: true, detail: 'HTTP 200' });
  t.same(judgeHttp(answer({ status: 200, body: 'it works', detail: 'HTTP 200' }), { body: 'OK' }), {
    ok: false,
    detail: 'HTTP 200; body lacks "OK"',
  });
  t.same(
    judgeHttp(answer({ status: 200, detail: 'HTTP 200' }), { body: 'OK' }),
    { ok: false, detail: 'HTTP 200; body lacks "OK"' },
    'no body',
  );
  t.same(
    judgeHttp(answer({ status: 500, body: 'x', detail: 'HTTP 500' }), { body: 'OK' }),
    { ok: false, detail: 'HTTP 500; expected status 200; body lacks "OK"' },
    'both reasons',
  );
});

t.test('http replies: the status line, and a body only after the header', async (t) => {
  t.same(httpAnswer('HTTP/1.0 200 OK\r\nServer: x\r\n\r\n<h1>up</h1>'), { ok: true, status: 200, body: '<h1>up</h1>', detail: 'HTTP 200' });
  t.same(httpAnswer('HTTP/1.1 404 Not Found\r\n\r\n'), { ok: true, status: 404, body: '', detail: 'HTTP 404' });
  t.same(httpAnswer('SSH-2.0-OpenSSH\r\n'), { ok: false, status: 0, body: '', detail: 'HTTP 0' }, 'not HTTP');
  t.same(httpAnswer(''), { ok: false, status: 0, body: '', detail: 'HTTP 0' }, 'nothing');
  t.same(
    httpAnswer('HTTP/1.0 200 OK\r\nX-Note: restorelab OK'),
    { ok: true, status: 200, body: '', detail: 'HTTP 200' },
    'a header that never ended has no body',
  );
  t.equal(
    judgeHttp(httpAnswer('HTTP/1.0 200 OK\r\nX-Note: restorelab OK'), { body: 'restorelab OK' }).ok,
    false,
    'header text does not satisfy a body check',
  );
  t.equal(httpAnswer('xHTTP/1.0 200 OK\r\n\r\n').ok, false, 'the status line starts the reply');
  t.equal(httpAnswer('HTTP/1.0 20 OK\r\n\r\n').ok, false, 'three digits');
});

t.test('dns replies: NOERROR and complete, or not an answer', async (t) => {
  t.same(dnsAnswer({ rcode: 0, a: ['10.0.0.1', '10.0.0.2'], truncated: false }), {
    ok: true,
    a: ['10.0.0.1', '10.0.0.2'],
    rcode: 'NOERROR',
    detail: 'NOERROR, A 10.0.0.1,10.0.0.2',
  });
  t.same(dnsAnswer({ rcode: 3, a: [], truncated: false }), { ok: false, a: [], rcode: 'NXDOMAIN', detail: 'NXDOMAIN, A none' });
  t.same(dnsAnswer({ rcode: 0, a: ['10.0.0.1'], truncated: true }), {
    ok: false,
    a: ['10.0.0.1'],
    rcode: 'NOERROR',
    detail: 'NOERROR (truncated), A 10.0.0.1',
  });
  t.equal(dnsAnswer({ rcode: 2, a: ['10.0.0.1'], truncated: false }).ok, false, 'SERVFAIL');
});

t.test('tcp: connected, and the banner when one is asked for', async (t) => {
  t.same(judgeTcp(answer({ detail: 'connected' }), '10.0.0.2', 5432), { ok: true, detail: '10.0.0.2:5432 connected' });
  t.same(judgeTcp(answer({ ok: false, detail: 'connect ECONNREFUSED' }), '10.0.0.2', 5432), {
    ok: false,
    detail: '10.0.0.2:5432 connect ECONNREFUSED',
  });
  t.same(judgeTcp(answer({ banner: 'SSH-2.0-x\r\n', detail: 'banner received' }), '10.0.0.2', 22, '^SSH-'), {
    ok: true,
    detail: '10.0.0.2:22 banner received banner="SSH-2.0-x"',
  });
  t.same(judgeTcp(answer({ banner: '220 mail', detail: 'banner received' }), '10.0.0.2', 22, '^SSH-'), {
    ok: false,
    detail: '10.0.0.2:22 banner received banner="220 mail"',
  });
  t.equal(judgeTcp(answer({ detail: 'connected' }), '10.0.0.2', 22, '^SSH-').ok, false, 'no banner where one is expected');
  t.equal(
    judgeTcp(answer({ ok: false, banner: 'SSH-2.0-x', detail: 'timeout' }), '10.0.0.2', 22, '^SSH-').ok,
    false,
    'a matching banner on a failed probe',
  );
});

t.test('ping: the exit status decides; the summary line is the detail', async (t) => {
  const out =
    'PING 10.0.0.2\n64 bytes from 10.0.0.2\n\n--- 10.0.0.2 ping statistics ---\n3 packets transmitted, 1 received, 66% packet loss, time 2003ms\n';
  t.same(judgePing(true, out), { ok: true, detail: '3 packets transmitted, 1 received, 66% packet loss, time 2003ms' });
  t.same(judgePing(false, out.replace('1 received, 66%', '0 received, 100%'), 'Command failed'), {
    ok: false,
    detail: '3 packets transmitted, 0 received, 100% packet loss, time 2003ms',
  });
  t.same(
    judgePing(false, '', ' Command failed: ip netns exec x ping \n'),
    { ok: false, detail: 'Command failed: ip netns exec x ping' },
    'no summary: the error',
  );
  t.same(judgePing(false, ''), { ok: false, detail: '' });
});

// Real sockets on a loopback address of this branch's own (127.0.170.0/24), so no port is shared.
const HOST = '127.0.170.2';

function tcpServer(onConn: (s: import('node:net').Socket) => void): Promise<{ port: number; server: Server }> {
  return new Promise((resolve) => {
    const server = createTcpServer(onConn);
    server.listen(0, HOST, () => resolve({ port: (server.address() as import('node:net').AddressInfo).port, server }));
  });
}

t.test('probe over real TCP: status and body, banner, refused, silent, closed', async (t) => {
  const http = await tcpServer((s) => {
    s.once('data', (d) => {
      const path = /^GET (\S+) HTTP\/1\.0\r\n/.exec(d.toString())?.[1];
      s.end(
        path === '/' ? 'HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n<h1>restorelab OK</h1>' : 'HTTP/1.0 404 Not Found\r\n\r\ngone',
      );
    });
  });
  const banner = await tcpServer((s) => {
    s.write('SSH-2.0-restorelab\r\nmore');
  });
  const silent = await tcpServer(() => undefined);
  const closes = await tcpServer((s) => {
    s.end('bye');
  });
  const closesEmpty = await tcpServer((s) => {
    s.end();
  });
  const refused = await tcpServer(() => undefined);
  await new Promise<void>((r) => refused.server.close(() => r()));
  t.teardown(() => {
    for (const s of [http, banner, silent, closes, closesEmpty]) s.server.close();
  });

  const ok = await probe({ kind: 'http', host: HOST, port: http.port, path: '/', timeoutMs: 2000 });
  t.same(ok, { ok: true, status: 200, body: '<h1>restorelab OK</h1>', detail: 'HTTP 200' });
  const missing = await probe({ kind: 'http', host: HOST, port: http.port, path: '/missing', timeoutMs: 2000 });
  t.same([missing.status, missing.body], [404, 'gone']);
  t.same(judgeHttp(missing, {}), { ok: false, detail: 'HTTP 404; expected status 200' }, 'a wrong status fails the test');

  t.same(await probe({ kind: 'tcp', host: HOST, port: banner.port, banner: '^SSH-', timeoutMs: 2000 }), {
    ok: true,
    banner: 'SSH-2.0-restorelab\r',
    detail: 'banner received',
  });
  t.same(
    await probe({ kind: 'tcp', host: HOST, port: silent.port, timeoutMs: 2000 }),
    { ok: true, detail: 'connected' },
    'a port test without banner: connected is enough',
  );
  const noBanner = await probe({ kind: 'tcp', host: HOST, port: silent.port, banner: '^SSH-', timeoutMs: 300 });
  t.same(noBanner, { ok: false, detail: 'timeout after 300 ms', body: '' }, 'a banner that never comes');
  t.same(await probe({ kind: 'tcp', host: HOST, port: closes.port, banner: '^SSH-', timeoutMs: 2000 }), {
    ok: true,
    banner: 'bye',
    detail: 'closed',
  });
  t.same(
    await probe({ kind: 'tcp', host: HOST, port: closesEmpty.port, banner: '^SSH-', timeoutMs: 2000 }),
    { ok: false, banner: '', detail: 'closed' },
    'closed without a word',
  );
  const silentHttp = await probe({ kind: 'http', host: HOST, port: silent.port, path: '/', timeoutMs: 300 });
  t.same(silentHttp, { ok: false, detail: 'timeout after 300 ms', body: '' }, 'an HTTP server that never answers');
  const r = await probe({ kind: 'tcp', host: HOST, port: refused.port, timeoutMs: 2000 });
  t.equal(r.ok, false);
  t.match(r.detail, /ECONNREFUSED/);
});

t.test('probe over real UDP: the answer to our query, from port 53 of the server, counts; stray packets do not', async (t) => {
  const DNS = '127.0.170.53';
  const server = createSocket('udp4');
  // Replies: the right one; or first a reply with another id (ignored), then none.
  let mode: 'answer' | 'wrong-id' | 'nxdomain' = 'answer';
  server.on('message', (q, from) => {
    const id = q.readUInt16BE(0);
    const question = q.subarray(12);
    const header = Buffer.alloc(12);
    header.writeUInt16BE(mode === 'wrong-id' ? (id + 1) & 0xffff : id, 0);
    header.writeUInt16BE(mode === 'nxdomain' ? 0x8183 : 0x8180, 2);
    header.writeUInt16BE(1, 4);
    header.writeUInt16BE(mode === 'nxdomain' ? 0 : 1, 6);
    const rr = Buffer.from('c00c00010001000000000004c0a84d0a', 'hex');
    server.send(Buffer.concat([header, question, ...(mode === 'nxdomain' ? [] : [rr])]), from.port, from.address);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.bind(53, DNS, () => resolve());
  });
  t.teardown(() => server.close());

  t.same(await probe({ kind: 'dns', host: DNS, name: 'web.lab.test', timeoutMs: 2000 }), {
    ok: true,
    a: ['192.168.77.10'],
    rcode: 'NOERROR',
    detail: 'NOERROR, A 192.168.77.10',
  });
  mode = 'nxdomain';
  const nx = await probe({ kind: 'dns', host: DNS, name: 'db.lab.test', timeoutMs: 2000 });
  t.same(nx, { ok: false, a: [], rcode: 'NXDOMAIN', detail: 'NXDOMAIN, A none' });
  t.same(judgeDns(nx, 'db.lab.test', '192.168.77.11'), { ok: false, detail: 'db.lab.test → NXDOMAIN, A none; expected A 192.168.77.11' });
  mode = 'wrong-id';
  const stray = await probe({ kind: 'dns', host: DNS, name: 'web.lab.test', timeoutMs: 400 });
  t.same(
    stray,
    { ok: false, detail: `no DNS answer from ${DNS} in 400 ms (ignored: reply does not match the query id)` },
    "another query's reply is no answer",
  );
  const silent = await probe({ kind: 'dns', host: '127.0.170.54', name: 'web.lab.test', timeoutMs: 300 });
  t.equal(silent.ok, false);
  t.match(silent.detail, /^no DNS answer from 127\.0\.170\.54 in 300 ms|^DNS query to 127\.0\.170\.54: /);
  t.same(await probe({ kind: 'dns', host: DNS, name: 'bad..name', timeoutMs: 2000 }), { ok: false, detail: 'not a DNS name: "bad..name"' });

  // A packet from another port of the server is ignored, not taken for the answer.
  mode = 'answer';
  const impostor = createSocket('udp4');
  await new Promise<void>((r) => impostor.bind(0, DNS, () => r()));
  t.teardown(() => impostor.close());
  server.removeAllListeners('message');
  server.on('message', (q, from) => {
    impostor.send(
      Buffer.concat([Buffer.from([q[0]!, q[1]!, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0]), q.subarray(12)]),
      from.port,
      from.address,
    );
  });
  const fromElsewhere = await probe({ kind: 'dns', host: DNS, name: 'web.lab.test', timeoutMs: 400 });
  t.equal(fromElsewhere.ok, false);
  t.match(
    fromElsewhere.detail,
    new RegExp(
      `^no DNS answer from ${DNS.replace(/\./g, '\\.')} in 400 ms \\(ignored: a packet from ${DNS.replace(/\./g, '\\.')}:\\d+\\)$`,
    ),
  );
});

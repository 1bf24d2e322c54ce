// Real servers (busybox httpd, socat, dnsmasq) in a namespace this test creates,
// probed from a second namespace over a veth pair: no outside address is touched.
import t from 'tap';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { probeInNetns } from '../../src/verify/probe.js';
import { dnsTest, httpTest, pingTest, tcpTest } from '../../src/verify/network.js';
import { which } from '../../src/host/exec.js';
import { waitFor } from '../helpers/guests.js';

const id = process.pid % 10000;
const srv = `rlsbS${id}`,
  cli = `rlsbC${id}`;
const ip = (...a: string[]): void => {
  execFileSync('ip', a, { stdio: 'pipe' });
};

t.before(async () => {
  for (const tool of ['ip', 'busybox', 'socat', 'dnsmasq']) {
    if (!(await which(tool))) throw new Error(`required system tool missing: ${tool}`);
  }
});

t.test('tcp, http and dns probes from inside a namespace', async (t) => {
  const procs: ChildProcess[] = [];
  t.teardown(() => {
    for (const p of procs) p.kill('SIGKILL');
    for (const n of [srv, cli]) {
      try {
        ip('netns', 'del', n);
      } catch {
        /* gone */
      }
    }
  });
  ip('netns', 'add', srv);
  ip('netns', 'add', cli);
  ip('link', 'add', `vS${id}`, 'netns', srv, 'type', 'veth', 'peer', 'name', `vC${id}`, 'netns', cli);
  ip('-n', srv, 'addr', 'add', '10.231.0.2/24', 'dev', `vS${id}`);
  ip('-n', cli, 'addr', 'add', '10.231.0.1/24', 'dev', `vC${id}`);
  for (const [n, d] of [
    [srv, `vS${id}`],
    [cli, `vC${id}`],
  ] as const) {
    ip('-n', n, 'link', 'set', d, 'up');
    ip('-n', n, 'link', 'set', 'lo', 'up');
  }
  const www = join(t.testdir(), 'www');
  mkdirSync(www);
  writeFileSync(join(www, 'index.html'), '<h1>restorelab web OK</h1>\n');
  const run = (...a: string[]): void => {
    const p = spawn('ip', ['netns', 'exec', srv, ...a], { stdio: 'ignore' });
    procs.push(p);
  };
  run('busybox', 'httpd', '-f', '-p', '10.231.0.2:80', '-h', www);
  run('socat', 'TCP-LISTEN:5432,bind=10.231.0.2,fork,reuseaddr', 'SYSTEM:echo PGBANNER-1');
  run(
    'dnsmasq',
    '-k',
    '--no-resolv',
    '--no-hosts',
    '--listen-address=10.231.0.2',
    '--bind-interfaces',
    '--address=/web.lab.test/192.168.77.10',
    '--pid-file=',
  );
  // The servers start in the background: poll each from the client namespace until it answers.
  await waitFor(
    'httpd, socat and dnsmasq to answer in their namespace',
    15_000,
    async () => {
      const [h, p, d] = await Promise.all([
        probeInNetns(cli, { kind: 'http', host: '10.231.0.2', port: 80, path: '/', timeoutMs: 1000 }),
        probeInNetns(cli, { kind: 'tcp', host: '10.231.0.2', port: 5432, timeoutMs: 1000 }),
        probeInNetns(cli, { kind: 'dns', host: '10.231.0.2', name: 'web.lab.test', timeoutMs: 1000 }),
      ]);
      return h.status === 200 && p.ok && d.ok ? true : undefined;
    },
    50,
  );

  const http = await probeInNetns(cli, { kind: 'http', host: '10.231.0.2', port: 80, path: '/', timeoutMs: 3000 });
  t.equal(http.status, 200);
  t.match(http.body ?? '', /restorelab web OK/);
  const tcp = await probeInNetns(cli, { kind: 'tcp', host: '10.231.0.2', port: 5432, banner: '^PG', timeoutMs: 3000 });
  t.ok(tcp.ok);
  t.match(tcp.banner ?? '', /^PGBANNER/);
  const closed = await probeInNetns(cli, { kind: 'tcp', host: '10.231.0.2', port: 81, timeoutMs: 2000 });
  t.notOk(closed.ok, closed.detail);
  const dns = await probeInNetns(cli, { kind: 'dns', host: '10.231.0.2', name: 'web.lab.test', timeoutMs: 3000 });
  t.ok(dns.ok, dns.detail);
  t.same(dns.a, ['192.168.77.10']);

  t.equal((await httpTest(cli, '10.231.0.2', { body: 'restorelab web OK' })).result, 'passed');
  t.equal((await httpTest(cli, '10.231.0.2', { body: 'not there' })).result, 'failed');
  t.equal((await tcpTest(cli, '10.231.0.2', 5432, '^PGBANNER')).result, 'passed');
  t.equal((await tcpTest(cli, '10.231.0.2', 5432, '^SSH-')).result, 'failed');
  // DNS: the query really goes out and the answer is judged.
  const right = await dnsTest(cli, '10.231.0.2', 'web.lab.test', '192.168.77.10');
  t.equal(right.result, 'passed', right.detail);
  t.match(right.detail, 'web.lab.test → NOERROR, A 192.168.77.10');
  const wrong = await dnsTest(cli, '10.231.0.2', 'web.lab.test', '192.168.77.99');
  t.equal(wrong.result, 'failed', 'a wrong address fails');
  t.match(wrong.detail, 'web.lab.test → NOERROR, A 192.168.77.10; expected A 192.168.77.99', 'and says what came back');
  const missing = await dnsTest(cli, '10.231.0.2', 'db.lab.test', '192.168.77.11');
  t.equal(missing.result, 'failed', 'a name with no record fails');
  t.match(missing.detail, /db\.lab\.test → [A-Z]+, A none; expected A 192\.168\.77\.11/);
  const anyA = await dnsTest(cli, '10.231.0.2', 'db.lab.test');
  t.equal(anyA.result, 'failed', 'no record fails even without an expected address');
  t.match(anyA.detail, /A none; expected an A record/);
  const noServer = await dnsTest(cli, '10.231.0.9', 'web.lab.test', '192.168.77.10', 1500);
  t.equal(noServer.result, 'failed');
  t.match(noServer.detail, /no DNS answer from 10\.231\.0\.9 in 1500 ms/);
  const portOnly = await tcpTest(cli, '10.231.0.2', 53);
  t.equal(portOnly.result, 'passed', 'port 53 is open either way: why the dns role asks a question');

  // HTTP: the status is checked, not only that something answered.
  const notFound = await httpTest(cli, '10.231.0.2', { path: '/missing.html' });
  t.equal(notFound.result, 'failed', 'a wrong status fails');
  t.match(notFound.detail, /HTTP 404; expected status 200/);
  t.equal((await httpTest(cli, '10.231.0.2', { path: '/missing.html', status: 404 })).result, 'passed', 'the expected status passes');
  t.equal((await httpTest(cli, '10.231.0.2', { status: 201 })).result, 'failed', 'a 200 where 201 is expected fails');
  t.equal((await pingTest(cli, '10.231.0.2')).result, 'passed');
  t.equal((await pingTest(cli, '10.231.0.9')).result, 'failed');
});

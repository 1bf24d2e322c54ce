// Real servers (busybox httpd, socat, dnsmasq) in a namespace this test creates,
// probed from a second namespace over a veth pair: no outside address is touched.
import t from 'tap';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { probeInNetns } from '../../src/verify/probe.js';
import { dnsTest, httpTest, pingTest, tcpTest } from '../../src/verify/network.js';
import { which } from '../../src/host/exec.js';

const id = process.pid % 10000;
const srv = `rlsbS${id}`, cli = `rlsbC${id}`;
const ip = (...a: string[]): void => { execFileSync('ip', a, { stdio: 'pipe' }); };

t.before(async () => {
  for (const tool of ['ip', 'busybox', 'socat', 'dnsmasq']) {
    if (!(await which(tool))) throw new Error(`required system tool missing: ${tool}`);
  }
});

t.test('tcp, http and dns probes from inside a namespace', async (t) => {
  const procs: ChildProcess[] = [];
  t.teardown(() => {
    for (const p of procs) p.kill('SIGKILL');
    for (const n of [srv, cli]) { try { ip('netns', 'del', n); } catch { /* gone */ } }
  });
  ip('netns', 'add', srv); ip('netns', 'add', cli);
  ip('link', 'add', `vS${id}`, 'netns', srv, 'type', 'veth', 'peer', 'name', `vC${id}`, 'netns', cli);
  ip('-n', srv, 'addr', 'add', '10.231.0.2/24', 'dev', `vS${id}`); ip('-n', cli, 'addr', 'add', '10.231.0.1/24', 'dev', `vC${id}`);
  for (const [n, d] of [[srv, `vS${id}`], [cli, `vC${id}`]] as const) { ip('-n', n, 'link', 'set', d, 'up'); ip('-n', n, 'link', 'set', 'lo', 'up'); }
  const www = join(t.testdir(), 'www'); mkdirSync(www);
  writeFileSync(join(www, 'index.html'), '<h1>restorelab web OK</h1>\n');
  const run = (...a: string[]): void => { const p = spawn('ip', ['netns', 'exec', srv, ...a], { stdio: 'ignore' }); procs.push(p); };
  run('busybox', 'httpd', '-f', '-p', '10.231.0.2:80', '-h', www);
  run('socat', 'TCP-LISTEN:5432,bind=10.231.0.2,fork,reuseaddr', 'SYSTEM:echo PGBANNER-1');
  run('dnsmasq', '-k', '--no-resolv', '--no-hosts', '--listen-address=10.231.0.2', '--bind-interfaces', '--address=/web.lab.test/192.168.77.10', '--pid-file=');
  await new Promise((r) => setTimeout(r, 700));

  const http = await probeInNetns(cli, { kind: 'http', host: '10.231.0.2', port: 80, path: '/', timeoutMs: 3000 });
  t.equal(http.status, 200); t.match(http.body ?? '', /restorelab web OK/);
  const tcp = await probeInNetns(cli, { kind: 'tcp', host: '10.231.0.2', port: 5432, banner: '^PG', timeoutMs: 3000 });
  t.ok(tcp.ok); t.match(tcp.banner ?? '', /^PGBANNER/);
  const closed = await probeInNetns(cli, { kind: 'tcp', host: '10.231.0.2', port: 81, timeoutMs: 2000 });
  t.notOk(closed.ok, closed.detail);
  const dns = await probeInNetns(cli, { kind: 'dns', host: '10.231.0.2', name: 'web.lab.test', timeoutMs: 3000 });
  t.ok(dns.ok, dns.detail); t.same(dns.a, ['192.168.77.10']);

  t.equal((await httpTest(cli, '10.231.0.2', { body: 'restorelab web OK' })).result, 'passed');
  t.equal((await httpTest(cli, '10.231.0.2', { body: 'not there' })).result, 'failed');
  t.equal((await tcpTest(cli, '10.231.0.2', 5432, '^PGBANNER')).result, 'passed');
  t.equal((await tcpTest(cli, '10.231.0.2', 5432, '^SSH-')).result, 'failed');
  t.equal((await dnsTest(cli, '10.231.0.2', 'web.lab.test', '192.168.77.10')).result, 'passed');
  t.equal((await pingTest(cli, '10.231.0.2')).result, 'passed');
  t.equal((await pingTest(cli, '10.231.0.9')).result, 'failed');
});

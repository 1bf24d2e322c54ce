// Every test kind through the TestRunner against a stand-in "VM": a namespace
// this test creates, with real servers (busybox httpd, socat, dnsmasq), probed
// from a second "lab" namespace over a veth pair. No outside address is touched.
import t from 'tap';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { which } from '../../src/host/exec.js';
import { ipAnswers } from '../../src/verify/heartbeat.js';
import { pingTest } from '../../src/verify/network.js';
import { resolveScript, scriptTest } from '../../src/verify/script.js';
import { createTestRunner } from '../../src/verify/tests.js';
import { resolveRole } from '../../src/surebackup/roles.js';
import type { TestSpec } from '../../src/verify/contract.js';
import type { RecoveredVm } from '../../src/verify/contract.js';
import { FileRepo } from './fixtures/file-repo.js';
import { address } from '../helpers/subnets.js';

const id = process.pid % 10000;
const vmNs = `rlvV${id}`,
  labNs = `rlvL${id}`;
const VM_IP = '10.233.0.2';
const ip = (...a: string[]): void => {
  execFileSync('ip', a, { stdio: 'pipe' });
};
const procs: ChildProcess[] = [];

t.before(async () => {
  for (const tool of ['ip', 'ping', 'busybox', 'socat', 'dnsmasq']) {
    if (!which(tool)) throw new Error(`required system tool missing: ${tool}`);
  }
  ip('netns', 'add', vmNs);
  ip('netns', 'add', labNs);
  ip('link', 'add', `vV${id}`, 'netns', vmNs, 'type', 'veth', 'peer', 'name', `vL${id}`, 'netns', labNs);
  ip('-n', vmNs, 'addr', 'add', `${VM_IP}/24`, 'dev', `vV${id}`);
  ip('-n', labNs, 'addr', 'add', '10.233.0.1/24', 'dev', `vL${id}`);
  for (const [n, d] of [
    [vmNs, `vV${id}`],
    [labNs, `vL${id}`],
  ] as const) {
    ip('-n', n, 'link', 'set', d, 'up');
    ip('-n', n, 'link', 'set', 'lo', 'up');
  }
});
t.teardown(() => {
  for (const p of procs) p.kill('SIGKILL');
  for (const n of [vmNs, labNs]) {
    try {
      ip('netns', 'del', n);
    } catch {
      /* gone */
    }
  }
});

function serve(dir: string): void {
  const www = join(dir, 'www');
  mkdirSync(www);
  writeFileSync(join(www, 'index.html'), 'restorelab web guest OK\n');
  const run = (...a: string[]): void => {
    procs.push(spawn('ip', ['netns', 'exec', vmNs, ...a], { stdio: 'ignore' }));
  };
  run('busybox', 'httpd', '-f', '-p', `${VM_IP}:80`, '-h', www);
  run('socat', `TCP-LISTEN:5432,bind=${VM_IP},fork,reuseaddr`, 'SYSTEM:echo RESTORELAB-DB READY');
  run(
    'dnsmasq',
    '-k',
    '--no-resolv',
    '--no-hosts',
    `--listen-address=${VM_IP}`,
    '--bind-interfaces',
    '--address=/web.lab.test/192.168.77.10',
    '--pid-file=',
  );
}

function script(dir: string, name: string, body: string): string {
  const p = join(dir, name);
  writeFileSync(p, `#!/bin/sh\n${body}\n`);
  chmodSync(p, 0o755);
  return p;
}

t.test('ping and the heartbeat IP probe run inside the lab namespace', async (t) => {
  t.equal((await pingTest(labNs, VM_IP)).result, 'passed');
  const miss = await pingTest(labNs, '10.233.0.77');
  t.equal(miss.result, 'failed');
  t.match(miss.detail, /0 received|100% packet loss/);
  t.equal(await ipAnswers(labNs, VM_IP), true);
  t.equal(await ipAnswers(labNs, '10.233.0.77'), false);
  // The host itself has no route to the lab: the probe really ran inside.
  t.equal(await ipAnswers(vmNs, '10.233.0.1'), true, 'and from the other side');
  // A guest that drops ICMP still has a REACHABLE neighbour entry (the ping
  // above resolved it), but an entry is not an answer: it outlives a dead guest.
  execFileSync('ip', ['netns', 'exec', vmNs, 'sysctl', '-qw', 'net.ipv4.icmp_echo_ignore_all=1']);
  t.teardown(() => execFileSync('ip', ['netns', 'exec', vmNs, 'sysctl', '-qw', 'net.ipv4.icmp_echo_ignore_all=0']));
  t.match(
    execFileSync('ip', ['-n', labNs, 'neigh', 'show', VM_IP]).toString(),
    /lladdr \S+ .*(REACHABLE|DELAY|STALE)/,
    'the neighbour entry is there',
  );
  t.equal((await pingTest(labNs, VM_IP)).result, 'failed', 'ICMP dropped');
  t.equal(await ipAnswers(labNs, VM_IP), false, 'a neighbour entry alone is not a heartbeat');
});

t.test('an address that answers, then stops, fails the heartbeat (watched through the test window)', async (t) => {
  const dir = t.testdir();
  const stopNs = `rlvW${id}`;
  t.teardown(() => {
    try {
      ip('netns', 'del', stopNs);
    } catch {
      /* gone */
    }
  });
  // A second stand-in "VM" of its own, so taking it down leaves the others alone.
  ip('netns', 'add', stopNs);
  ip('link', 'add', `vW${id}`, 'netns', stopNs, 'type', 'veth', 'peer', 'name', `vX${id}`, 'netns', labNs);
  ip('-n', stopNs, 'addr', 'add', '10.233.1.2/24', 'dev', `vW${id}`);
  ip('-n', labNs, 'addr', 'add', '10.233.1.1/24', 'dev', `vX${id}`);
  ip('-n', stopNs, 'link', 'set', `vW${id}`, 'up');
  ip('-n', labNs, 'link', 'set', `vX${id}`, 'up');
  const handle: RecoveredVm = {
    ip: '10.233.1.2',
    masqIp: address('prod-lab', 11),
    netns: labNs,
    screendump: async () => '/dev/null',
    stop: async () => undefined,
  };
  const run = createTestRunner({
    repo: async () => new FileRepo(join(dir, 'repo')),
    screenshotDir: join(dir, 'shots'),
    heartbeatWatch: { loss: { pings: 3, seconds: 2 }, intervalMs: 500 },
  });
  const role = { ...resolveRole('no-agent', 'web', {}), maxBootSeconds: 20 };
  const ac = new AbortController();
  const vm = { name: 'no-agent', pointId: 'p1', role, handle };

  // Answers throughout: passed, and still passed when the window ends.
  const steady = await run({ kind: 'heartbeat', stablePings: 2, stableSeconds: 0.5 }, vm, ac.signal);
  t.equal(steady.result, 'passed', steady.detail);
  t.match(steady.detail, /via ICMP on the lab bridge \(VM has no guest agent\)/);
  t.ok(steady.settle, 'the heartbeat keeps watching');
  t.equal((await pingTest(labNs, '10.233.1.2')).result, 'passed', 'the window: other tests run');
  const held = await steady.settle!();
  t.equal(held.result, 'passed', held.detail);
  t.match(held.detail, /10\.233\.1\.2 \(ICMP\) kept answering through the test window/);

  // Answers, then the "guest" loses its link half-way through the window.
  const r = await run({ kind: 'heartbeat', stablePings: 2, stableSeconds: 0.5 }, vm, ac.signal);
  t.equal(r.result, 'passed', 'it answered at first');
  ip('-n', stopNs, 'link', 'set', `vW${id}`, 'down');
  // The rest of the VM's test window: its other tests run (and fail) meanwhile.
  t.equal((await pingTest(labNs, '10.233.1.2')).result, 'failed', 'the address is gone');
  const lost = await r.settle!();
  t.equal(lost.result, 'failed', lost.detail);
  t.match(lost.detail, /lost during the test window: 10\.233\.1\.2 \(ICMP\) stopped answering \(3 consecutive misses over ≥2 s\)/);

  // And one that never comes back up does not pass at all (no ARP shortcut).
  const t0 = Date.now();
  const gone = await run(
    { kind: 'heartbeat', stablePings: 2, stableSeconds: 0.5 },
    { ...vm, role: { ...role, maxBootSeconds: 3 } },
    ac.signal,
  );
  t.equal(gone.result, 'warning', gone.detail);
  t.match(gone.detail, /no guest agent and no ICMP answer/);
  t.ok(Date.now() - t0 >= 2900, 'waited out its boot time');
  t.notOk(gone.settle, 'nothing to watch');
});

t.test('script: environment, namespace, exit code, stdout, timeout, missing script', async (t) => {
  const dir = t.testdir();
  const vm = { netns: labNs, name: 'web', ip: VM_IP, masqIp: address('prod-lab') };
  const ok = script(
    dir,
    'ok.sh',
    'echo "name=$VM_NAME ip=$VM_IP masq=$VM_MASQ_IP"; ip -o addr show | grep -q 10.233.0.1 && echo inside-lab; ping -c1 -W1 "$VM_IP" >/dev/null && echo reached',
  );
  const r = (await scriptTest({ path: ok }, vm)) as Awaited<ReturnType<typeof scriptTest>> & { stdout: string };
  t.equal(r.result, 'passed', r.detail);
  t.match(r.stdout, `name=web ip=10.233.0.2 masq=${address('prod-lab')}`);
  t.match(r.stdout, 'inside-lab');
  t.match(r.stdout, 'reached');
  const bad = await scriptTest({ path: script(dir, 'bad.sh', 'echo half-way; echo oops >&2; exit 3') }, vm);
  t.equal(bad.result, 'failed');
  t.match(bad.detail, /exit 3; stdout: half-way; stderr: oops/);
  const marker = join(dir, 'child-survived');
  const t0 = Date.now();
  const slow = await scriptTest({ path: script(dir, 'slow.sh', `(sleep 3; touch ${marker}) & sleep 30`), timeoutSeconds: 1 }, vm);
  t.equal(slow.result, 'failed');
  t.match(slow.detail, /timed out after 1 s/);
  t.ok(Date.now() - t0 < 5000, 'own timeout honoured');
  await new Promise((r) => setTimeout(r, 3500));
  t.notOk(existsSync(marker), "the script's children were killed with it");
  t.throws(() => resolveScript('nope.sh', dir, 'job j'), { code: 'SCRIPT_NOT_FOUND' });
  writeFileSync(join(dir, 'plain.sh'), 'echo'); // not executable
  t.throws(() => resolveScript('plain.sh', dir, 'job j'), { code: 'SCRIPT_NOT_FOUND' });
  t.equal(resolveScript('ok.sh', dir, 'job j'), ok);
});

t.test('the TestRunner dispatches every kind', async (t) => {
  const dir = t.testdir();
  serve(dir);
  const repo = new FileRepo(join(dir, 'repo'));
  repo.addPoint('p1', 'web', { sda: randomBytes(4096 * 4) });
  // A screendump with some text on it: not blank.
  const ppm = (): string => {
    const w = 32,
      h = 16,
      body = Buffer.alloc(w * h * 3);
    for (let i = 0; i < body.length; i += 3) if ((i / 3) % 7 === 0) body.fill(220, i, i + 3);
    const p = join(dir, `dump-${Date.now()}.ppm`);
    writeFileSync(p, Buffer.concat([Buffer.from(`P6\n${w} ${h}\n255\n`), body]));
    return p;
  };
  let agentCalls = 0;
  const handle: RecoveredVm = {
    ip: VM_IP,
    masqIp: address('prod-lab'),
    netns: labNs,
    agentPing: async () => {
      agentCalls++;
      return true;
    },
    screendump: async () => ppm(),
    stop: async () => undefined,
  };
  const run = createTestRunner({
    repo: async () => repo,
    screenshotDir: join(dir, 'shots'),
    appRetryMs: 300,
    heartbeatWatch: { intervalMs: 300 },
  });
  const specs: [TestSpec, string][] = [
    [{ kind: 'heartbeat', stablePings: 2, stableSeconds: 0.5 }, 'passed'],
    [{ kind: 'ping' }, 'passed'],
    [{ kind: 'tcp', port: 5432, banner: '^RESTORELAB-DB' }, 'passed'],
    [{ kind: 'http', port: 80, path: '/', status: 200, body: 'restorelab web guest OK' }, 'passed'],
    [{ kind: 'dns', name: 'web.lab.test', expect: '192.168.77.10' }, 'passed'],
    [{ kind: 'dns', name: 'web.lab.test', expect: '192.168.77.99' }, 'failed'],
    [
      {
        kind: 'script',
        path: script(dir, 's.sh', 'curl -s -o /dev/null "http://$VM_IP/" 2>/dev/null || busybox wget -q -O - "http://$VM_IP/"'),
      },
      'passed',
    ],
    [{ kind: 'screenshot' }, 'passed'],
    [{ kind: 'integrity' }, 'passed'],
    [{ kind: 'tcp', port: 81 }, 'failed'],
  ];
  // Long enough for several tries even when one probe is slow on a loaded host.
  const role = { ...resolveRole('web', 'web', {}), appInitSeconds: 3 };
  const ac = new AbortController();
  for (const [spec, want] of specs) {
    const r = await run(spec, { name: 'web', pointId: 'p1', role, handle }, ac.signal);
    await r.settle?.({ abandon: true });
    t.equal(r.result, want, `${r.name}: ${r.detail}`);
    t.equal(r.kind, spec.kind);
    if (spec.kind === 'screenshot') {
      t.equal(r.artifact, join(dir, 'shots', 'web.png'));
      t.same([...readFileSync(r.artifact!).subarray(1, 4)], [...Buffer.from('PNG')]);
    }
    if (spec.kind === 'tcp' && want === 'failed') t.match(r.detail, /attempt \d/, 'retried during app init');
  }
  t.ok(agentCalls >= 2, 'heartbeat used the agent');
  // The runner settles the heartbeat; here the TestRunner is called directly.
  const hb = await run({ kind: 'heartbeat', stablePings: 2, stableSeconds: 0.5 }, { name: 'web', pointId: 'p1', role, handle }, ac.signal);
  const calls = agentCalls;
  t.equal((await pingTest(labNs, VM_IP)).result, 'passed', 'the window: other tests run');
  const settled = await hb.settle!();
  t.equal(settled.result, 'passed');
  t.match(settled.detail, /the guest agent kept answering/);
  t.ok(agentCalls > calls, 'the watch pinged the agent');
});

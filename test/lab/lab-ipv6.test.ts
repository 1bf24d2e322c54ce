/**
 * IPv6 isolation of a lab, on real network namespaces. Every interface gets
 * an IPv6 link-local address whatever the lab's IPv4 plan, so IPv6 must be
 * dropped as IPv4 is: from a guest to the lab namespace (where its QEMU
 * runs), and from the lab namespace to the host. Controls show that IPv6 does
 * flow where nothing filters it (two bare namespaces; two guests on one lab
 * bridge), so a failed ping means the firewall, not a host without IPv6.
 * All traffic stays inside namespaces this test created and the host end of
 * their veths; nothing leaves the machine.
 */
import t from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { exec, which } from '../../src/host/exec.js';
import { labUp, labDown, listLabs, parseLab, type LabState } from '../../src/lab/lab.js';
import { subnet } from '../helpers/subnets.js';

const dir = mkdtempSync(join(tmpdir(), 'rl-lab6-'));
const stateDir = join(dir, 'state');
const tag = randomBytes(2).toString('hex');
const namespaces: string[] = [];

for (const tool of ['ip', 'nft', 'ping'])
  if (!which(tool)) throw new Error(`this test needs ${tool} (apt-get install iproute2 nftables iputils-ping)`);

async function ok(cmd: string, args: string[]): Promise<string> {
  const r = await exec(cmd, args, { timeoutMs: 15_000 });
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

/** `cmd` run in namespace `ns` (or on the host when undefined). */
function at(ns: string | undefined, cmd: string[]): [string, string[]] {
  return ns ? ['ip', ['netns', 'exec', ns, ...cmd]] : [cmd[0] as string, cmd.slice(1)];
}

/**
 * The link-local address of `dev`, once duplicate address detection is done:
 * a tentative address neither sends nor answers, and would fail the controls.
 */
async function linkLocal(ns: string | undefined, dev: string): Promise<string> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const [cmd, args] = at(ns, ['ip', '-j', '-6', 'addr', 'show', 'dev', dev]);
    const info =
      (JSON.parse((await ok(cmd, args)) || '[]') as { addr_info?: { local: string; scope: string; tentative?: boolean }[] }[])[0]
        ?.addr_info ?? [];
    const ll = info.find((a) => a.scope === 'link' && !a.tentative);
    if (ll) return ll.local;
    if (Date.now() > deadline)
      throw new Error(`${dev}${ns ? ` in ${ns}` : ''} has no usable IPv6 link-local address after 10 s: ${JSON.stringify(info)}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function ping6(ns: string | undefined, addr: string, dev: string): Promise<boolean> {
  const [cmd, args] = at(ns, ['ping', '-6', '-c1', '-W2', `${addr}%${dev}`]);
  return (await exec(cmd, args, { timeoutMs: 10_000 })).code === 0;
}

/** Whether a TCP connection from `ns` to [addr%dev]:port is established. */
async function connects(ns: string, addr: string, dev: string, port: number): Promise<boolean> {
  const script =
    `const s=require('net').connect({host:'${addr}%${dev}',port:${port},timeout:2000});` +
    's.on("connect",()=>process.exit(0));s.on("error",()=>process.exit(1));s.on("timeout",()=>process.exit(2));';
  return (await exec('ip', ['netns', 'exec', ns, process.execPath, '-e', script], { timeoutMs: 10_000 })).code === 0;
}

async function newNs(suffix: string): Promise<string> {
  const ns = `rl-t6-${tag}-${suffix}`;
  await ok('ip', ['netns', 'add', ns]);
  namespaces.push(ns);
  await ok('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
  return ns;
}

/** A namespace standing in for a VM, plugged into the lab bridge with a veth; its end is eth0. */
async function fakeGuest(lab: LabState, n: number): Promise<string> {
  const ns = await newNs(`g${n}`);
  const port = `vm${n}`;
  await ok('ip', ['link', 'add', `t6${tag}${n}`, 'netns', ns, 'type', 'veth', 'peer', 'name', port, 'netns', lab.netns]);
  await ok('ip', ['-n', lab.netns, 'link', 'set', port, 'master', 'br-prod', 'up']);
  await ok('ip', ['-n', ns, 'link', 'set', `t6${tag}${n}`, 'name', 'eth0']);
  await ok('ip', ['-n', ns, 'addr', 'add', `192.168.77.${10 + n}/24`, 'dev', 'eth0']);
  await ok('ip', ['-n', ns, 'link', 'set', 'eth0', 'up']);
  return ns;
}

t.teardown(async () => {
  for (const ns of namespaces) await exec('ip', ['netns', 'del', ns]);
  for (const l of listLabs(stateDir)) await labDown(l.name, { stateDir });
  rmSync(dir, { recursive: true, force: true });
});

t.test('control: IPv6 link-local flows between two bare namespaces on this host', async (t) => {
  const a = await newNs('ca');
  const b = await newNs('cb');
  await ok('ip', ['link', 'add', 'eth0', 'netns', a, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', b]);
  await ok('ip', ['-n', a, 'link', 'set', 'eth0', 'up']);
  await ok('ip', ['-n', b, 'link', 'set', 'eth0', 'up']);
  const bAddr = await linkLocal(b, 'eth0');
  await linkLocal(a, 'eth0');
  t.ok(await ping6(a, bAddr, 'eth0'), 'ping6 over an unfiltered veth answers');
});

t.test('IPv6 from a lab guest to the lab namespace, and from the lab namespace to the host, is dropped', async (t) => {
  const lab = await labUp(
    parseLab(
      {
        name: `l6${tag}`,
        networks: [{ name: 'prod', subnet: '192.168.77.0/24', gateway: '192.168.77.1', masquerade: subnet('lab/lab-ipv6') }],
      },
      'lab',
    ),
    { stateDir },
  );
  const g1 = await fakeGuest(lab, 1);
  const g2 = await fakeGuest(lab, 2);
  const [g2Addr, bridgeAddr, uplinkAddr, hostAddr] = await Promise.all([
    linkLocal(g2, 'eth0'),
    linkLocal(lab.netns, 'br-prod'),
    linkLocal(lab.netns, 'uplink'),
    linkLocal(undefined, lab.hostVeth),
    linkLocal(g1, 'eth0'),
  ]);

  // Inside the lab: guests on one bridge reach each other (bridged, as with IPv4): IPv6 itself works here.
  t.ok(await ping6(g1, g2Addr, 'eth0'), 'control: guest to guest on the lab bridge answers over IPv6');
  t.equal(
    (await exec('ip', ['netns', 'exec', g1, 'ping', '-c1', '-W2', '192.168.77.1'], { timeoutMs: 10_000 })).code,
    0,
    'control: the guest reaches its gateway over IPv4 (the one thing the lab answers)',
  );

  // The lab namespace itself answers no IPv6 (its IPv4 input accepts only ping to the gateway).
  t.notOk(await ping6(g1, bridgeAddr, 'eth0'), 'guest to the lab bridge link-local: dropped');

  // From the lab namespace to the host: a listener on every host address (::) stands in for any host service.
  const server: Server = createServer((s) => {
    accepted++;
    s.destroy();
  });
  let accepted = 0;
  await new Promise<void>((r) => server.listen(0, '::', r));
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  const port = (server.address() as { port: number }).port;
  const fromHost = await new Promise<boolean>((resolve) => {
    const s = connect({ host: `${hostAddr}%${lab.hostVeth}`, port, timeout: 2000 });
    s.on('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.on('error', () => resolve(false));
    s.on('timeout', () => {
      s.destroy();
      resolve(false);
    });
  });
  t.ok(fromHost, 'control: the host listener answers on the uplink link-local address, from the host');
  const before = accepted;
  t.notOk(await ping6(lab.netns, hostAddr, 'uplink'), 'lab namespace to host link-local (ping6): dropped');
  t.notOk(await connects(lab.netns, hostAddr, 'uplink', port), 'lab namespace to a host TCP listener over IPv6: no connection');
  t.equal(accepted, before, 'the host listener saw nothing from the lab');
  t.not(
    (await exec('ip', ['netns', 'exec', lab.netns, 'ping', '-c1', '-W2', lab.hostAddress], { timeoutMs: 10_000 })).code,
    0,
    'the same over IPv4 is dropped too',
  );
  // And the host cannot open IPv6 to the lab namespace (only its masquerade IPv4 routes lead in).
  t.notOk(await ping6(undefined, uplinkAddr, lab.hostVeth), 'host to the lab uplink link-local: dropped');

  const rules = await ok('ip', ['netns', 'exec', lab.netns, 'nft', 'list', 'tables']);
  t.match(rules, /table inet restorelab/, 'the lab firewall is of family inet');
  await labDown(lab.name, { stateDir });
  const [nsList, hostRules] = await Promise.all([ok('ip', ['netns', 'list']), ok('nft', ['list', 'tables'])]);
  t.notMatch(nsList, lab.netns, 'teardown removes the lab namespace with its firewall');
  t.notMatch(hostRules, lab.hostTable, 'teardown removes the host table');
});

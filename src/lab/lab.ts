/**
 * Virtual labs: isolated copies of production networks.
 *
 * Words:
 * - Lab: one network namespace (`rl-<name>-<suffix>`), created by `lab up`
 *   and removed by `lab down`.
 * - Isolated network: a bridge in the lab namespace mirroring one production
 *   network; it holds the production gateway address, so guests booted from a
 *   backup find "their" gateway without any change to their disks.
 * - Uplink: a veth pair between the host and the lab namespace, addressed
 *   from a /30 in 169.254.0.0/16 (link-local, never routed anywhere else).
 * - Masquerade subnet: the host routes it through the uplink; the lab maps it
 *   1:1 onto the production subnet (172.18.77.10 -> 192.168.77.10) and
 *   source-NATs host traffic to the gateway address, so replies come back
 *   even from a guest without a default route.
 * - Static mapping: one extra host address forwarded to one production address.
 * - Lab tap: a tap device inside the lab namespace, on a lab bridge, for one
 *   VM NIC. The VM NIC carries the VM's own MAC; the tap keeps a random one
 *   (a bridge port with the guest's MAC would make the bridge treat the
 *   guest's frames as its own).
 *
 * Isolation: the lab's forward chain drops everything a lab guest starts,
 * except traffic between the lab's own networks; its input chain answers
 * only ping to the gateway; and on the host an input/forward filter drops
 * new connections arriving from the uplink. All of these are nftables tables
 * of family inet, so they hold for IPv6 as for IPv4 (a lab speaks no IPv6
 * beyond its bridges: guests on one bridge still reach each other, link-local,
 * as they do with IPv4). Labs are not routed to each
 * other (no route on the host leads from one uplink to another).
 *
 * State: <stateDir>/labs/<name>.json is written BEFORE anything is created,
 * naming everything that will be, so a crash at any step leaves a record
 * that the next `lab up` or `lab down` uses to remove the leftovers.
 */
import { existsSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { basename, join } from 'node:path';
import { writeFileAtomicSync } from '../host/atomic-file.js';
import { randomBytes } from 'node:crypto';
import { RestorelabError, badInput, missingComponent, notFound } from '../errors.js';
import { exec, which } from '../host/exec.js';
import { ensurePrivateDir } from '../host/private-files.js';
import { loadValidated, assertValid } from '../schema/validate.js';
import { carveMasquerade } from './masquerade-pool.js';
import { contains, formatCidr, formatIp, overlaps, parseCidr, parseIp, translate, type Cidr } from './ipv4.js';

export interface LabNetworkDefinition {
  name: string;
  subnet: string;
  gateway: string;
  masquerade: string;
  staticMappings?: { production: string; host: string }[];
}

export interface LabDefinition {
  name: string;
  description?: string;
  allowInternet?: false;
  networks: LabNetworkDefinition[];
}

export interface LabNetworkState extends LabNetworkDefinition {
  bridge: string;
}

export interface LabState {
  name: string;
  netns: string;
  /** Host end of the uplink veth; the lab end is always `uplink`. */
  hostVeth: string;
  hostAddress: string;
  labAddress: string;
  /** Host nftables table (family inet) guarding the uplink. */
  hostTable: string;
  /** Host routes we add (destinations), removed at teardown. */
  routes: string[];
  networks: LabNetworkState[];
  taps: { name: string; network: string }[];
  createdAt: string;
  ready: boolean;
  /**
   * The process that brought the lab up for its own use (a SureBackup run, a
   * session supervisor) and takes it down; absent for `lab up`. Reconcile
   * removes a lab whose owner is gone (src/reconcile).
   */
  owner?: { pid: number; what: string };
  /** False for a quarantine lab: no uplink, routes or host table exist (absent: true). */
  uplink?: boolean;
}

const LAB_UPLINK = 'uplink';
const LINK_LOCAL: Cidr = { base: parseIp('169.254.0.0', 'link-local'), prefix: 16 };

export function parseLab(value: unknown, source: string): LabDefinition {
  const lab = assertValid<LabDefinition>('lab.schema.json', value, source);
  checkLab(lab, source);
  return lab;
}

export function loadLab(path: string): LabDefinition {
  const lab = loadValidated<LabDefinition>('lab.schema.json', path, 'lab definition');
  checkLab(lab, path);
  return lab;
}

/** What JSON Schema cannot say: address arithmetic. */
function checkLab(lab: LabDefinition, source: string): void {
  const seen = new Set<string>();
  const masqs: Cidr[] = [];
  for (const n of lab.networks) {
    const where = `${source}: network ${n.name}`;
    if (seen.has(n.name)) throw badInput('LAB_INVALID', `${source}: network ${n.name} is listed twice`);
    seen.add(n.name);
    const subnet = parseCidr(n.subnet, `${where} subnet`);
    const masq = parseCidr(n.masquerade, `${where} masquerade`);
    if (subnet.prefix !== masq.prefix) {
      throw badInput(
        'LAB_INVALID',
        `${where}: masquerade ${n.masquerade} and subnet ${n.subnet} differ in size`,
        'the masquerade subnet maps 1:1 onto the production subnet, so give it the same prefix length',
      );
    }
    if (!contains(subnet, parseIp(n.gateway, `${where} gateway`))) {
      throw badInput('LAB_INVALID', `${where}: gateway ${n.gateway} is not in ${n.subnet}`);
    }
    if (overlaps(masq, LINK_LOCAL))
      throw badInput('LAB_INVALID', `${where}: masquerade ${n.masquerade} overlaps 169.254.0.0/16, which labs use for their uplinks`);
    for (const other of masqs) {
      if (overlaps(other, masq))
        throw badInput('LAB_INVALID', `${where}: masquerade ${n.masquerade} overlaps another network's masquerade subnet`);
    }
    masqs.push(masq);
    for (const m of n.staticMappings ?? []) {
      if (!contains(subnet, parseIp(m.production, `${where} static mapping`))) {
        throw badInput('LAB_INVALID', `${where}: static mapping target ${m.production} is not in ${n.subnet}`);
      }
      parseIp(m.host, `${where} static mapping`);
    }
  }
}

async function sh(cmd: string, args: string[], opts: { input?: string } = {}): Promise<string> {
  const r = await exec(cmd, args, { timeoutMs: 15_000, ...opts });
  if (r.code !== 0) {
    throw new RestorelabError('HOST_COMMAND_FAILED', `${cmd} ${args.join(' ')} failed: ${(r.stderr || r.stdout).trim()}`);
  }
  return r.stdout;
}

/** Like sh() but for teardown: a missing object is already what we want. */
async function quiet(cmd: string, args: string[]): Promise<void> {
  await exec(cmd, args, { timeoutMs: 15_000 });
}

function labsDir(stateDir: string): string {
  return join(stateDir, 'labs');
}

function statePath(stateDir: string, name: string): string {
  return join(labsDir(stateDir), `${name}.json`);
}

function saveState(stateDir: string, st: LabState): void {
  ensurePrivateDir(labsDir(stateDir));
  writeFileAtomicSync(labsDir(stateDir), basename(statePath(stateDir, st.name)), JSON.stringify(st, null, 2));
}

export function readLabState(stateDir: string, name: string): LabState | undefined {
  try {
    return JSON.parse(readFileSync(statePath(stateDir, name), 'utf8')) as LabState;
  } catch {
    return undefined;
  }
}

export function listLabs(stateDir: string): LabState[] {
  const dir = labsDir(stateDir);
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((f) => f.endsWith('.json'))
    .map((f) => readLabState(stateDir, f.slice(0, -5)))
    .filter((s): s is LabState => s !== undefined);
}

interface HostRoute {
  dst: string;
}

async function hostRoutes(): Promise<Cidr[]> {
  const out = await sh('ip', ['-4', '-j', 'route', 'show', 'table', 'all']);
  const routes = JSON.parse(out || '[]') as HostRoute[];
  const cidrs: Cidr[] = [];
  for (const r of routes) {
    if (!r.dst || r.dst === 'default') continue;
    try {
      cidrs.push(parseCidr(r.dst.includes('/') ? r.dst : `${r.dst}/32`, 'route'));
    } catch {
      // multicast/broadcast entries we do not need to compare
    }
  }
  return cidrs;
}

async function pickLinkSubnet(): Promise<{ host: string; lab: string }> {
  const used = await hostRoutes();
  for (let i = 0; i < 64; i++) {
    // Avoid 169.254.0.x and 169.254.255.x, which RFC 3927 reserves.
    const third = 1 + ((randomBytes(1)[0] as number) % 254);
    const fourth = ((randomBytes(1)[0] as number) % 64) * 4;
    const net: Cidr = { base: (parseIp('169.254.0.0', 'x') | (third << 8) | fourth) >>> 0, prefix: 30 };
    if (used.some((u) => overlaps(u, net) && u.prefix > 16)) continue;
    return { host: formatIp(net.base + 1), lab: formatIp(net.base + 2) };
  }
  throw new RestorelabError('LAB_NO_LINK_SUBNET', 'no free /30 left in 169.254.0.0/16 for the lab uplink');
}

function labNftRules(st: LabState): string {
  const nat: string[] = [];
  const snat: string[] = [];
  const pings: string[] = [];
  for (const n of st.networks) {
    pings.push(`iifname "${n.bridge}" ip daddr ${n.gateway} icmp type echo-request accept`);
    nat.push(
      `iifname "${LAB_UPLINK}" ip daddr ${formatCidr(parseCidr(n.masquerade, 'm'))} dnat ip prefix to ip daddr map { ${formatCidr(parseCidr(n.masquerade, 'm'))} : ${formatCidr(parseCidr(n.subnet, 's'))} }`,
    );
    for (const m of n.staticMappings ?? []) nat.push(`iifname "${LAB_UPLINK}" ip daddr ${m.host} dnat ip to ${m.production}`);
    snat.push(`iifname "${LAB_UPLINK}" oifname "${n.bridge}" snat ip to ${n.gateway}`);
  }
  // Family inet, not ip: the filter chains must see IPv6 too. Every interface of the lab has an
  // IPv6 link-local address, and a table of family ip would let a guest reach the lab namespace
  // (where its QEMU runs) and, were forwarding on, anything beyond it over IPv6. Nothing below
  // accepts IPv6, so it is dropped as IPv4 is; the NAT rules name IPv4 explicitly.
  return `
table inet restorelab {
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    ${nat.join('\n    ')}
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    ${snat.join('\n    ')}
  }
  chain forward {
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname "${LAB_UPLINK}" oifname "br-*" accept
    iifname "br-*" oifname "br-*" accept
  }
  chain input {
    type filter hook input priority filter; policy drop;
    ct state established,related accept
    iifname "lo" accept
    ${pings.join('\n    ')}
  }
}
`;
}

function hostNftRules(st: LabState): string {
  return `
table inet ${st.hostTable} {
  chain input {
    type filter hook input priority filter; policy accept;
    iifname "${st.hostVeth}" ct state established,related accept
    iifname "${st.hostVeth}" drop
  }
  chain forward {
    type filter hook forward priority filter; policy accept;
    iifname "${st.hostVeth}" drop
    oifname "${st.hostVeth}" ct state new drop
  }
}
`;
}

function requireTools(): void {
  if (!which('ip')) throw missingComponent('ip (iproute2)', 'apt-get install iproute2');
  if (!which('nft')) throw missingComponent('nft (nftables)', 'apt-get install nftables');
}

/** Creates the lab; a leftover of the same name (crash) is removed first. */
export async function labUp(
  def: LabDefinition,
  opts: { stateDir: string; owner?: LabState['owner']; uplink?: boolean; masqueradePool?: string },
): Promise<LabState> {
  requireTools();
  await labDown(def.name, { stateDir: opts.stateDir, quietIfMissing: true });
  if (opts.uplink === false) return quarantineLabUp(def, opts);
  const routes = await hostRoutes();
  if (opts.masqueradePool !== undefined) def = carveMasquerade(def, parseCidr(opts.masqueradePool, 'masquerade pool'), routes);
  for (const n of def.networks) {
    const masq = parseCidr(n.masquerade, n.name);
    const clash = routes.find((r) => overlaps(r, masq));
    if (clash) {
      throw badInput(
        'LAB_MASQUERADE_OVERLAP',
        `lab ${def.name}: masquerade subnet ${n.masquerade} of network ${n.name} overlaps the host route ${formatCidr(clash)}`,
        'pick a masquerade subnet no host route (or other running lab) uses, e.g. another 172.18.x.0/24',
      );
    }
    for (const m of n.staticMappings ?? []) {
      const host = parseCidr(`${m.host}/32`, n.name);
      const c = routes.find((r) => overlaps(r, host));
      if (c)
        throw badInput(
          'LAB_MASQUERADE_OVERLAP',
          `lab ${def.name}: static mapping address ${m.host} is inside the host route ${formatCidr(c)}`,
        );
    }
  }
  const suffix = randomBytes(3).toString('hex');
  const link = await pickLinkSubnet();
  const st: LabState = {
    name: def.name,
    netns: `rl-${def.name.slice(0, 20)}-${suffix}`,
    hostVeth: `rl${suffix}h`,
    hostAddress: link.host,
    labAddress: link.lab,
    hostTable: `restorelab_${suffix}`,
    routes: [],
    networks: def.networks.map((n) => ({ ...n, bridge: `br-${n.name}`.slice(0, 15) })),
    taps: [],
    createdAt: new Date().toISOString(),
    ready: false,
    ...(opts.owner ? { owner: opts.owner } : {}),
  };
  // Bridge names must be unique inside the namespace even after truncation.
  if (new Set(st.networks.map((n) => n.bridge)).size !== st.networks.length) {
    st.networks.forEach((n, i) => (n.bridge = `br-${i}`));
  }
  for (const n of def.networks) {
    st.routes.push(formatCidr(parseCidr(n.masquerade, n.name)));
    for (const m of n.staticMappings ?? []) st.routes.push(`${m.host}/32`);
  }
  saveState(opts.stateDir, st);
  try {
    const ns = st.netns;
    await sh('ip', ['netns', 'add', ns]);
    await sh('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    // IPv6 forwarding stays off whatever the host's defaults (the inet filter drops it anyway).
    await sh('ip', ['netns', 'exec', ns, 'sysctl', '-qw', 'net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=0']);
    for (const n of st.networks) {
      const prefix = parseCidr(n.subnet, n.name).prefix;
      await sh('ip', ['-n', ns, 'link', 'add', n.bridge, 'type', 'bridge']);
      await sh('ip', ['-n', ns, 'addr', 'add', `${n.gateway}/${prefix}`, 'dev', n.bridge]);
      await sh('ip', ['-n', ns, 'link', 'set', n.bridge, 'up']);
    }
    await sh('ip', ['link', 'add', st.hostVeth, 'type', 'veth', 'peer', 'name', LAB_UPLINK, 'netns', ns]);
    await sh('ip', ['addr', 'add', `${st.hostAddress}/30`, 'dev', st.hostVeth]);
    await sh('ip', ['link', 'set', st.hostVeth, 'up']);
    await sh('ip', ['-n', ns, 'addr', 'add', `${st.labAddress}/30`, 'dev', LAB_UPLINK]);
    await sh('ip', ['-n', ns, 'link', 'set', LAB_UPLINK, 'up']);
    await sh('nft', ['-f', '-'], { input: hostNftRules(st) });
    await sh('ip', ['netns', 'exec', ns, 'nft', '-f', '-'], { input: labNftRules(st) });
    for (const r of st.routes) await sh('ip', ['route', 'add', r, 'via', st.labAddress, 'dev', st.hostVeth]);
    st.ready = true;
    saveState(opts.stateDir, st);
    return st;
  } catch (e) {
    await teardown(st);
    rmSync(statePath(opts.stateDir, st.name), { force: true });
    throw e;
  }
}

/**
 * A lab with no uplink: the namespace, its bridges (holding the gateway
 * addresses, so in-namespace tests and the heartbeat's ping still work) and
 * the lab's own filter table, and nothing on the host side.
 */
async function quarantineLabUp(def: LabDefinition, opts: { stateDir: string; owner?: LabState['owner'] }): Promise<LabState> {
  const suffix = randomBytes(3).toString('hex');
  const st: LabState = {
    name: def.name,
    netns: `rl-${def.name.slice(0, 20)}-${suffix}`,
    hostVeth: '',
    hostAddress: '',
    labAddress: '',
    hostTable: '',
    routes: [],
    networks: def.networks.map((n, i) => ({ ...n, bridge: `br-${i}` })),
    taps: [],
    createdAt: new Date().toISOString(),
    ready: false,
    uplink: false,
    ...(opts.owner ? { owner: opts.owner } : {}),
  };
  saveState(opts.stateDir, st);
  try {
    const ns = st.netns;
    await sh('ip', ['netns', 'add', ns]);
    await sh('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    await sh('ip', ['netns', 'exec', ns, 'sysctl', '-qw', 'net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=0']);
    for (const n of st.networks) {
      await sh('ip', ['-n', ns, 'link', 'add', n.bridge, 'type', 'bridge']);
      await sh('ip', ['-n', ns, 'addr', 'add', `${n.gateway}/${parseCidr(n.subnet, n.name).prefix}`, 'dev', n.bridge]);
      await sh('ip', ['-n', ns, 'link', 'set', n.bridge, 'up']);
    }
    await sh('ip', ['netns', 'exec', ns, 'nft', '-f', '-'], { input: labNftRules(st) });
    st.ready = true;
    saveState(opts.stateDir, st);
    return st;
  } catch (e) {
    await teardown(st);
    rmSync(statePath(opts.stateDir, st.name), { force: true });
    throw e;
  }
}

async function teardown(st: LabState): Promise<void> {
  if (st.uplink !== false) {
    for (const r of st.routes) await quiet('ip', ['route', 'del', r, 'dev', st.hostVeth]);
    await quiet('nft', ['delete', 'table', 'inet', st.hostTable]);
    await quiet('ip', ['link', 'del', st.hostVeth]);
  }
  // Whatever still runs in the lab (a VM a crashed session left) holds the
  // namespace and its taps alive after `ip netns del`: end it first.
  const pids = await exec('ip', ['netns', 'pids', st.netns], { timeoutMs: 5000 });
  for (const p of pids.stdout.split(/\s+/).filter(Boolean)) {
    try {
      process.kill(Number(p), 'SIGKILL');
    } catch {
      // already gone
    }
  }
  await quiet('ip', ['netns', 'del', st.netns]);
}

/** Removes a lab by name; idempotent. */
export async function labDown(name: string, opts: { stateDir: string; quietIfMissing?: boolean }): Promise<LabState | undefined> {
  const st = readLabState(opts.stateDir, name);
  if (!st) {
    if (opts.quietIfMissing) return undefined;
    throw notFound('LAB_NOT_FOUND', `no lab named ${name} is up`, 'restorelab lab list shows the labs that are up');
  }
  await teardown(st);
  rmSync(statePath(opts.stateDir, name), { force: true });
  return st;
}

/** Creates a tap for one VM NIC on the lab bridge of `network`. */
export async function addLabTap(stateDir: string, labName: string, network: string): Promise<{ tap: string; netns: string }> {
  const st = readLabState(stateDir, labName);
  if (!st?.ready) throw notFound('LAB_NOT_FOUND', `lab ${labName} is not up`, `restorelab lab up <lab.json>`);
  const net = st.networks.find((n) => n.name === network);
  if (!net) {
    throw badInput(
      'LAB_NO_SUCH_NETWORK',
      `lab ${labName} has no network ${network}`,
      `the VM's NIC network must be one of: ${st.networks.map((n) => n.name).join(', ')}`,
    );
  }
  let i = st.taps.length;
  while (st.taps.some((t) => t.name === `tap${i}`)) i++;
  const tap = `tap${i}`;
  st.taps.push({ name: tap, network });
  saveState(stateDir, st);
  await sh('ip', ['-n', st.netns, 'tuntap', 'add', 'dev', tap, 'mode', 'tap']);
  await sh('ip', ['-n', st.netns, 'link', 'set', tap, 'master', net.bridge, 'up']);
  return { tap, netns: st.netns };
}

export async function removeLabTap(stateDir: string, labName: string, tap: string): Promise<void> {
  const st = readLabState(stateDir, labName);
  if (!st) return;
  await quiet('ip', ['-n', st.netns, 'link', 'del', tap]);
  st.taps = st.taps.filter((t) => t.name !== tap);
  saveState(stateDir, st);
}

/** The host-reachable (masquerade) address for a production address in the lab. */
export function masqueradeAddress(st: LabState, productionIp: string): string | undefined {
  // A quarantine lab is not reachable from the host at any address.
  if (st.uplink === false) return undefined;
  const ip = parseIp(productionIp, 'address');
  for (const n of st.networks) {
    const subnet = parseCidr(n.subnet, n.name);
    if (contains(subnet, ip)) return formatIp(translate(ip, subnet, parseCidr(n.masquerade, n.name)));
  }
  return undefined;
}

/**
 * The test guests scripts/build-guests makes (variants described in
 * lab-templates/guests/). Tests ask for an image by variant; the builder's
 * own stamp check makes a second call cheap, and its lock makes concurrent
 * test files wait for one build instead of racing.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { exec, which } from '../../src/host/exec.js';
import { projectPath } from '../../src/paths.js';
import { loadVmDefinition } from '../../src/vm/definition.js';
import { QemuDriver } from '../../src/hypervisor/qemu.js';
import type { Domain } from '../../src/hypervisor/types.js';

export interface GuestService {
  kind: 'http' | 'banner' | 'dns';
  protocol: 'tcp' | 'udp';
  port: number;
  starts: boolean;
  query?: string;
  expect: string;
}

export interface GuestVariant {
  name: string;
  description: string;
  hostname?: string;
  network: string;
  ip: string;
  prefix?: number;
  gateway: string;
  mac: string;
  boot: 'ok' | 'kernel-panic' | 'kernel-panic-vga';
  agent: boolean;
  /** A line a respawned service prints before it exits, every 2 s (a crash loop). */
  crashLoop?: string;
  services: GuestService[];
}

const TEMPLATES = projectPath('lab-templates', 'guests');

function loadVariants(): Record<string, GuestVariant> {
  const out: Record<string, GuestVariant> = {};
  for (const f of readdirSync(TEMPLATES)
    .filter((n) => n.endsWith('.json'))
    .sort()) {
    const g = JSON.parse(readFileSync(join(TEMPLATES, f), 'utf8')) as GuestVariant;
    out[g.name] = g;
  }
  return out;
}

/** Every variant by name, as lab-templates/guests/<name>.json describes it. */
export const GUESTS: Readonly<Record<string, GuestVariant>> = loadVariants();

/** Where images live: RESTORELAB_GUESTS_DIR, else var/guests in the project. */
export function guestsDir(): string {
  return process.env.RESTORELAB_GUESTS_DIR ?? projectPath('var', 'guests');
}

/** The kernel the builder extracted (for direct -kernel boots), if built. */
export function guestKernel(): string | undefined {
  const p = join(guestsDir(), 'vmlinuz');
  return existsSync(p) ? p : undefined;
}

const BUILD_TOOLS: [string, string][] = [
  ['apt-get', 'apt'],
  ['dpkg-deb', 'dpkg'],
  ['sfdisk', 'fdisk'],
  ['mkfs.ext4', 'e2fsprogs'],
  ['losetup', 'mount'],
  ['extlinux', 'extlinux'],
  ['cpio', 'cpio'],
  ['flock', 'util-linux'],
];

/**
 * Absolute path of the raw image of `variant`, built (or rebuilt after a
 * recipe change) first. Throws naming the missing tool or the builder's error.
 */
export async function guestImage(variant: string): Promise<string> {
  if (!GUESTS[variant]) {
    throw new Error(`unknown test guest "${variant}"; known: ${Object.keys(GUESTS).join(', ')} (lab-templates/guests/)`);
  }
  for (const [tool, pkg] of BUILD_TOOLS) {
    if (!which(tool)) throw new Error(`building test guests needs ${tool}: apt-get install ${pkg} (or run scripts/setup)`);
  }
  if (!existsSync('/usr/lib/EXTLINUX/mbr.bin')) {
    throw new Error('building test guests needs /usr/lib/EXTLINUX/mbr.bin: apt-get install extlinux syslinux-common');
  }
  const dir = guestsDir();
  const r = await exec(projectPath('scripts', 'build-guests'), ['--out', dir, variant], { timeoutMs: 15 * 60_000 });
  if (r.code !== 0) {
    throw new Error(
      `scripts/build-guests --out ${dir} ${variant} failed (exit ${String(r.code)}): ${(r.stderr || r.stdout).trim().split('\n').slice(-5).join('\n')}`,
    );
  }
  const image = join(dir, `${variant}.raw`);
  if (!existsSync(image)) throw new Error(`scripts/build-guests did not produce ${image}`);
  return image;
}

/**
 * A test-made copy of the production network `prod`: one namespace, one
 * bridge holding the gateway address, one tap per guest, and guests booted
 * under TCG from qcow2 overlays of the cached images. `close()` removes it all.
 */
export class GuestNetwork {
  readonly netns: string;
  private readonly bridge = 'br-prod';
  private readonly domains: Domain[] = [];
  private readonly driver: QemuDriver;
  private taps = 0;

  private constructor(
    private readonly dir: string,
    private readonly tag: string,
  ) {
    this.netns = `rlg-${tag}`;
    this.driver = new QemuDriver({ stateDir: join(dir, 'state'), accel: 'tcg' });
  }

  static async create(dir: string): Promise<GuestNetwork> {
    const net = new GuestNetwork(dir, `${process.pid % 100000}${randomBytes(2).toString('hex')}`);
    try {
      await must('ip', ['netns', 'add', net.netns]);
      await must('ip', ['-n', net.netns, 'link', 'set', 'lo', 'up']);
      await must('ip', ['-n', net.netns, 'link', 'add', net.bridge, 'type', 'bridge']);
      await must('ip', ['-n', net.netns, 'addr', 'add', '192.168.77.1/24', 'dev', net.bridge]);
      await must('ip', ['-n', net.netns, 'link', 'set', net.bridge, 'up']);
    } catch (e) {
      await net.close();
      throw e;
    }
    return net;
  }

  /** Boots `variant` as lab-templates/vms/<variant>.json defines it. */
  async boot(variant: string): Promise<{ dom: Domain; base: string }> {
    const vm = loadVmDefinition(projectPath('lab-templates', 'vms', `${variant}.json`));
    const nic = vm.nics[0];
    if (!nic) throw new Error(`lab-templates/vms/${variant}.json has no NIC`);
    const base = await guestImage(variant);
    const name = `${variant}-${this.tag}`;
    const overlay = join(this.dir, `${name}.qcow2`);
    await must('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'raw', overlay]);
    const tap = `tg${this.tag}${this.taps++}`.slice(0, 15);
    await must('ip', ['-n', this.netns, 'tuntap', 'add', 'dev', tap, 'mode', 'tap']);
    await must('ip', ['-n', this.netns, 'link', 'set', tap, 'master', this.bridge, 'up']);
    const dom = await this.driver.start({
      vm: { ...vm, name },
      disks: [{ name: vm.disks[0]?.name ?? 'root', path: overlay, format: 'qcow2' }],
      nics: [{ kind: 'tap', tap, netns: this.netns, mac: nic.mac }],
    });
    this.domains.push(dom);
    return { dom, base };
  }

  /** Runs a small node script inside the namespace and parses its one JSON line. */
  private async inside<T>(script: string): Promise<T> {
    const out = await must('ip', ['netns', 'exec', this.netns, process.execPath, '-e', script]);
    return JSON.parse(out) as T;
  }

  /** One HTTP GET; `error` is the socket error code (ECONNREFUSED...) when there is no answer. */
  http(url: string): Promise<{ status?: number; body?: string; error?: string }> {
    return this.inside(`fetch(${JSON.stringify(url)}, { signal: AbortSignal.timeout(5000) })
      .then(async (r) => console.log(JSON.stringify({ status: r.status, body: await r.text() })))
      .catch((e) => console.log(JSON.stringify({ error: String(e.cause?.code ?? e.name) })));`);
  }

  /** The first line a TCP service writes to a new connection. */
  tcpBanner(host: string, port: number): Promise<{ line?: string; error?: string }> {
    return this.inside(`const s = require('node:net').connect(${port}, ${JSON.stringify(host)});
      let buf = '';
      const done = (o) => { console.log(JSON.stringify(o)); s.destroy(); process.exit(0); };
      s.setTimeout(5000, () => done({ error: 'ETIMEDOUT' }));
      s.on('data', (d) => { buf += d; if (buf.includes('\\n')) done({ line: buf.split('\\n')[0] }); });
      s.on('error', (e) => done({ error: e.code }));
      s.on('end', () => done(buf ? { line: buf } : { error: 'EOF' }));`);
  }

  /** A records for `name` asked of the DNS server at `server` (UDP 53). */
  dnsA(server: string, name: string): Promise<{ addresses?: string[]; error?: string }> {
    return this.inside(`const r = new (require('node:dns').promises.Resolver)({ timeout: 2000, tries: 2 });
      r.setServers([${JSON.stringify(server)}]);
      r.resolve4(${JSON.stringify(name)}).then((a) => console.log(JSON.stringify({ addresses: a })),
        (e) => console.log(JSON.stringify({ error: e.code })));`);
  }

  async close(): Promise<void> {
    for (const d of this.domains) await d.destroy().catch(() => undefined);
    await exec('ip', ['netns', 'del', this.netns]);
  }
}

async function must(cmd: string, args: string[]): Promise<string> {
  const r = await exec(cmd, args, { timeoutMs: 30_000 });
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${(r.stderr || r.stdout).trim()}`);
  return r.stdout;
}

/** Polls `fn` every `intervalMs` until it returns a value; past `deadlineMs` the error names `what`. */
export async function waitFor<T>(what: string, deadlineMs: number, fn: () => Promise<T | undefined>, intervalMs = 500): Promise<T> {
  const end = Date.now() + deadlineMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out after ${deadlineMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

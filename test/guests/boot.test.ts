/**
 * The builder's images really boot under QEMU/TCG, and each variant shows the
 * behaviour a verification job relies on. Three boots at once (web,
 * broken-app, no-boot) on one bridge inside a network namespace this test
 * creates, each from its own qcow2 overlay so the cached image stays intact.
 */
import t from 'tap';
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exec } from '../../src/host/exec.js';
import { loadVmDefinition } from '../../src/vm/definition.js';
import { projectPath } from '../../src/paths.js';
import { QemuDriver } from '../../src/hypervisor/qemu.js';
import { waitForAgent } from '../../src/hypervisor/qga.js';
import type { Domain } from '../../src/hypervisor/types.js';
import { GUESTS, guestImage } from '../helpers/guests.js';

const BOOT_TIMEOUT_MS = 120_000;
const dir = mkdtempSync(join(tmpdir(), 'rl-guests-'));
const qemu = new QemuDriver({ stateDir: join(dir, 'state'), accel: 'tcg' });
const suffix = String(process.pid % 100000);
const netns = `rlg-${suffix}`;
const bridge = 'br-prod';
const domains: Domain[] = [];

async function run(cmd: string, args: string[]): Promise<string> {
  const r = await exec(cmd, args, { timeoutMs: 30_000 });
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr.trim()}`);
  return r.stdout;
}

function sha256(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    createReadStream(path).on('data', (d) => h.update(d)).on('error', reject).on('end', () => resolve(h.digest('hex')));
  });
}

t.teardown(async () => {
  for (const d of domains) await d.destroy().catch(() => undefined);
  await exec('ip', ['netns', 'del', netns]);
  rmSync(dir, { recursive: true, force: true });
});

/** The production network prod, reduced to a bridge holding its gateway. */
async function prodNetwork(): Promise<void> {
  await run('ip', ['netns', 'add', netns]);
  await run('ip', ['-n', netns, 'link', 'set', 'lo', 'up']);
  await run('ip', ['-n', netns, 'link', 'add', bridge, 'type', 'bridge']);
  await run('ip', ['-n', netns, 'addr', 'add', '192.168.77.1/24', 'dev', bridge]);
  await run('ip', ['-n', netns, 'link', 'set', bridge, 'up']);
}

async function boot(variant: string): Promise<{ dom: Domain; base: string }> {
  const vm = loadVmDefinition(projectPath('lab-templates', 'vms', `${variant}.json`));
  const base = await guestImage(variant);
  const overlay = join(dir, `${variant}.qcow2`);
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'raw', overlay]);
  const tap = `tg${suffix}${variant.slice(0, 3)}`.slice(0, 15);
  await run('ip', ['-n', netns, 'tuntap', 'add', 'dev', tap, 'mode', 'tap']);
  await run('ip', ['-n', netns, 'link', 'set', tap, 'master', bridge, 'up']);
  const nic = vm.nics[0];
  if (!nic) throw new Error(`lab-templates/vms/${variant}.json has no NIC`);
  const dom = await qemu.start({
    vm: { ...vm, name: `${variant}-${suffix}` },
    disks: [{ name: 'root', path: overlay, format: 'qcow2' }],
    nics: [{ kind: 'tap', tap, netns, mac: nic.mac }],
  });
  domains.push(dom);
  return { dom, base };
}

/** One HTTP GET from inside the namespace; `refused` when nothing listens. */
async function httpInNetns(url: string): Promise<{ status?: number; body?: string; error?: string }> {
  const script = `fetch(${JSON.stringify(url)}, { signal: AbortSignal.timeout(5000) })
    .then(async (r) => console.log(JSON.stringify({ status: r.status, body: await r.text() })))
    .catch((e) => console.log(JSON.stringify({ error: String(e.cause?.code ?? e.message) })));`;
  const out = await run('ip', ['netns', 'exec', netns, process.execPath, '-e', script]);
  return JSON.parse(out) as { status?: number; body?: string; error?: string };
}

async function waitFor<T>(what: string, deadlineMs: number, fn: () => Promise<T | undefined>): Promise<T> {
  const end = Date.now() + deadlineMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out after ${deadlineMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 500));
  }
}

function consoleText(dom: Domain): string {
  return existsSync(dom.consoleLog) ? readFileSync(dom.consoleLog, 'utf8') : '';
}

t.test('web, broken-app and no-boot boot under TCG and behave as documented', async (t) => {
  await prodNetwork();
  const webBaseSum = await sha256(await guestImage('web'));
  const t0 = Date.now();
  const [web, broken, noBoot] = await Promise.all([boot('web'), boot('broken-app'), boot('no-boot')]);

  await t.test('web: agent, guest-exec and HTTP on its production IP', async (t) => {
    const agent = await waitForAgent(web.dom.agentSocket, BOOT_TIMEOUT_MS);
    t.comment(`web: boot to heartbeat ${Date.now() - t0} ms (TCG, three guests at once)`);
    t.teardown(() => agent.close());
    const host = await agent.exec('/bin/sh', ['-c', 'hostname; ip -4 addr show eth0']);
    t.equal(host.exitcode, 0);
    t.match(host.stdout, /^web\n/, 'the hostname is baked into the disk');
    t.match(host.stdout, /192\.168\.77\.10\/24/, 'so is the static address');
    const url = `http://${GUESTS.web?.ip}/`;
    const r = await waitFor('HTTP from web', 30_000, async () => {
      const x = await httpInNetns(url);
      return x.status === undefined ? undefined : x;
    });
    t.equal(r.status, 200, `GET ${url} from inside the test namespace`);
    t.equal(r.body?.trim(), GUESTS.web?.services[0]?.expect, 'serves the known page');
    const shot = join(dir, 'web.ppm');
    await web.dom.screendump(shot);
    t.ok(statSync(shot).size > 1000, 'the VGA console can be captured');
  });

  await t.test('broken-app: the agent answers, HTTP never does', async (t) => {
    const agent = await waitForAgent(broken.dom.agentSocket, BOOT_TIMEOUT_MS);
    t.comment(`broken-app: boot to heartbeat ${Date.now() - t0} ms`);
    t.teardown(() => agent.close());
    await agent.ping();
    // The start script has run once the console says so; after that port 80 stays closed.
    await waitFor('the broken-app start attempt', 30_000, async () =>
      consoleText(broken.dom).includes('http service failed to start') ? true : undefined);
    const listening = await agent.exec('/bin/sh', ['-c', 'netstat -ltn']);
    t.notMatch(listening.stdout, /:80\s/, 'nothing listens on port 80');
    const r = await httpInNetns(`http://${GUESTS['broken-app']?.ip}/`);
    t.equal(r.status, undefined, 'no HTTP answer');
    t.equal(r.error, 'ECONNREFUSED', 'the guest is up and refuses the connection');
  });

  await t.test('no-boot: the kernel panics on the console and the agent never answers', async (t) => {
    const text = await waitFor('the kernel panic on the serial console', BOOT_TIMEOUT_MS, async () => {
      const s = consoleText(noBoot.dom);
      return s.includes('Kernel panic') ? s : undefined;
    });
    t.comment(`no-boot: panic on the console after ${Date.now() - t0} ms`);
    t.match(text, /Kernel panic - not syncing: VFS: Unable to mount root fs/, 'the panic names the missing root');
    t.equal(await noBoot.dom.state(), 'running', 'panic=0: the VM stays up showing the panic');
    await t.rejects(waitForAgent(noBoot.dom.agentSocket, 10_000), 'guest-ping gets no answer');
    const shot = join(dir, 'no-boot.ppm');
    await noBoot.dom.screendump(shot);
    t.ok(statSync(shot).size > 1000, 'the panic screen can be captured');
  });

  for (const d of domains) await d.destroy();
  t.equal(await sha256(web.base), webBaseSum, 'the cached web image is unchanged (boots wrote to overlays)');
});

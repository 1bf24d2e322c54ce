/**
 * The real web guest (test/helpers/guests.ts) under both drivers, inside
 * virtual labs. Boots are the expensive part (TCG), so three in all:
 * two qemu-driver guests in two labs mirroring the same subnet at once,
 * then one libvirt guest. Each boots from its own qcow2 overlay on the one
 * raw image. Covers: heartbeat (guest-ping), guest-exec, screendump, HTTP
 * through the masquerade address from the host, isolation from inside a
 * guest, and nothing left behind.
 */
import t from 'tap';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { exec } from '../../src/host/exec.js';
import { loadVmDefinition } from '../../src/vm/definition.js';
import { projectPath } from '../../src/paths.js';
import { labUp, labDown, parseLab, addLabTap, listLabs, masqueradeAddress, type LabState } from '../../src/lab/lab.js';
import { QemuDriver } from '../../src/hypervisor/qemu.js';
import { LibvirtDriver } from '../../src/hypervisor/libvirt.js';
import { waitForAgent } from '../../src/hypervisor/qga.js';
import type { Domain, Hypervisor } from '../../src/hypervisor/types.js';
import { guestImage } from '../helpers/guests.js';
import { subnet } from '../helpers/subnets.js';

const BOOT_TIMEOUT_MS = 120_000;
const dir = mkdtempSync(join(tmpdir(), 'rl-web-'));
const stateDir = join(dir, 'state');
const qemu = new QemuDriver({ stateDir, accel: 'tcg' });
const libvirt = new LibvirtDriver({ stateDir, accel: 'tcg' });
const web = loadVmDefinition(projectPath('lab-templates', 'vms', 'web.json'));
const webIp = web.nics[0]?.ip ?? '192.168.77.10';
const suffix = String(process.pid % 10000);

t.teardown(async () => {
  for (const d of [qemu, libvirt] as Hypervisor[]) {
    for (const info of await d.list().catch(() => [])) {
      if (info.name.endsWith(suffix)) await (await d.attach(info.name))?.destroy();
    }
  }
  await libvirt.close();
  for (const l of listLabs(stateDir)) await labDown(l.name, { stateDir });
  rmSync(dir, { recursive: true, force: true });
});

async function overlay(name: string): Promise<string> {
  const base = await guestImage('web');
  const path = join(dir, `${name}.qcow2`);
  const r = await exec('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'raw', path]);
  if (r.code !== 0) throw new Error(r.stderr);
  return path;
}

async function boot(driver: Hypervisor, lab: LabState, name: string): Promise<{ dom: Domain; heartbeatMs: number }> {
  const { tap, netns } = await addLabTap(stateDir, lab.name, web.nics[0]?.network ?? 'prod');
  const mac = web.nics[0]?.mac ?? '52:54:00:77:00:10';
  const t0 = Date.now();
  const dom = await driver.start({
    vm: { ...web, name },
    disks: [{ name: web.disks[0]?.name ?? 'root', path: await overlay(name), format: 'qcow2' }],
    nics: [{ kind: 'tap', tap, netns, mac }],
  });
  const agent = await waitForAgent(dom.agentSocket, BOOT_TIMEOUT_MS);
  agent.close();
  return { dom, heartbeatMs: Date.now() - t0 };
}

async function httpGet(url: string, deadlineMs = 30_000): Promise<{ status: number; body: string }> {
  const end = Date.now() + deadlineMs;
  for (;;) {
    try {
      const r = await fetch(url, { signal: AbortSignal.timeout(3000) });
      return { status: r.status, body: await r.text() };
    } catch (e) {
      if (Date.now() > end) throw e;
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}

t.test('qemu driver: two labs mirror the same subnet; heartbeat, agent, screen, HTTP, isolation', async (t) => {
  const labA = await labUp(
    parseLab(
      {
        name: `wa${suffix}`,
        networks: [{ name: 'prod', subnet: '192.168.77.0/24', gateway: '192.168.77.1', masquerade: subnet('hypervisor/web-guest:a') }],
      },
      'A',
    ),
    { stateDir },
  );
  const labB = await labUp(
    parseLab(
      {
        name: `wb${suffix}`,
        networks: [{ name: 'prod', subnet: '192.168.77.0/24', gateway: '192.168.77.1', masquerade: subnet('hypervisor/web-guest:b') }],
      },
      'B',
    ),
    { stateDir },
  );
  const [a, b] = await Promise.all([boot(qemu, labA, `weba${suffix}`), boot(qemu, labB, `webb${suffix}`)]);
  t.comment(`boot to heartbeat (TCG, two guests at once): ${a.heartbeatMs} ms, ${b.heartbeatMs} ms`);

  const agent = await a.dom.agent();
  const host = await agent.exec('/bin/sh', ['-c', 'cat /etc/hostname || hostname']);
  t.equal(host.exitcode, 0);
  t.match(host.stdout, /web/, 'guest-exec returns the guest hostname');
  const shot = join(dir, 'web.ppm');
  await a.dom.screendump(shot);
  t.ok(statSync(shot).size > 1000, 'screendump is a non-empty image');

  const masqA = masqueradeAddress(labA, webIp) as string;
  const masqB = masqueradeAddress(labB, webIp) as string;
  t.equal((await httpGet(`http://${masqA}/`)).status, 200, `web in lab A answers on ${masqA}`);
  t.equal((await httpGet(`http://${masqB}/`)).status, 200, `web in lab B answers on ${masqB}`);

  const probe = async (cmd: string): Promise<number> => (await agent.exec('/bin/sh', ['-c', cmd], { timeoutMs: 20_000 })).exitcode;
  t.equal(await probe(`ping -c1 -W2 ${labA.networks[0]?.gateway}`), 0, 'the guest reaches its lab gateway');
  t.not(await probe(`ping -c1 -W2 ${labA.hostAddress}`), 0, "the host's uplink address is unreachable");
  t.not(await probe(`wget -q -T 3 -O /dev/null http://${labA.hostAddress}/`), 0, 'no TCP to the host');
  t.not(await probe(`ping -c1 -W2 ${masqB}`), 0, 'the other lab is unreachable');
  agent.close();

  await a.dom.destroy();
  await b.dom.destroy();
  for (const l of [labA, labB]) await labDown(l.name, { stateDir });
  const [ns, links, rules] = await Promise.all([exec('ip', ['netns', 'list']), exec('ip', ['link']), exec('nft', ['list', 'ruleset'])]);
  for (const l of [labA, labB]) {
    t.notMatch(ns.stdout, l.netns);
    t.notMatch(links.stdout, l.hostVeth);
    t.notMatch(rules.stdout, l.hostTable);
  }
});

t.test('libvirt driver: heartbeat through our agent channel and HTTP through the lab', async (t) => {
  const s = await exec(fileURLToPath(new URL('../../../scripts/libvirtd', import.meta.url)), ['start'], { timeoutMs: 30_000 });
  t.equal(s.code, 0, s.stderr);
  const lab = await labUp(
    parseLab(
      {
        name: `wl${suffix}`,
        networks: [{ name: 'prod', subnet: '192.168.77.0/24', gateway: '192.168.77.1', masquerade: subnet('hypervisor/web-guest:l') }],
      },
      'L',
    ),
    { stateDir },
  );
  const { dom, heartbeatMs } = await boot(libvirt, lab, `webl${suffix}`);
  t.comment(`libvirt boot to heartbeat (TCG): ${heartbeatMs} ms`);
  t.equal(await dom.state(), 'running');
  const agent = await dom.agent();
  await agent.ping();
  agent.close();
  t.equal((await httpGet(`http://${masqueradeAddress(lab, webIp)}/`)).status, 200, 'HTTP through the masquerade address');
  await dom.destroy();
  t.equal(await libvirt.attach(`webl${suffix}`), undefined, 'destroyed and undefined');
  await labDown(lab.name, { stateDir });
});

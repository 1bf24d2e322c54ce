/**
 * The libvirt driver against a real libvirtd (started with scripts/libvirtd
 * when not running), TCG domain with a blank disk: define+start, state,
 * screenshot, the agent socket at our path, stop, destroy+undefine. The agent
 * answering through that socket from a real guest is in web-guest.test.ts.
 */
import t from 'tap';
import { decodeVgaText } from '../../src/hypervisor/vga.js';
import { mkdtempSync, rmSync, writeFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { exec } from '../../src/host/exec.js';
import { LibvirtDriver, domainXml } from '../../src/hypervisor/libvirt.js';
import type { DomainSpec } from '../../src/hypervisor/types.js';

const script = fileURLToPath(new URL('../../../scripts/libvirtd', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'rl-lv-'));
const disk = join(dir, 'blank.raw');
writeFileSync(disk, Buffer.alloc(1024 * 1024));
const spec: DomainSpec = {
  vm: { name: `lvtest-${process.pid}`, memoryMiB: 64, vcpus: 1, disks: [{ name: 'root' }], nics: [] },
  disks: [{ name: 'root', path: disk, format: 'raw' }],
  nics: [],
  accel: 'tcg',
};
const driver = new LibvirtDriver({ stateDir: join(dir, 'state') });
t.teardown(async () => {
  await (await driver.attach(spec.vm.name).catch(() => undefined))?.destroy();
  await driver.close();
  rmSync(dir, { recursive: true, force: true });
});

t.test('scripts/libvirtd start is idempotent and status reports running', async (t) => {
  const a = await exec(script, ['start'], { timeoutMs: 30_000 });
  t.equal(a.code, 0, a.stderr);
  const b = await exec(script, ['start'], { timeoutMs: 30_000 });
  t.equal(b.code, 0);
  const s = await exec(script, ['status']);
  t.match(s.stdout, /running/);
});

t.test('domain XML: type, disks, tap NIC, agent channel at our path', async (t) => {
  const xml = domainXml({ ...spec, nics: [{ kind: 'tap', tap: 'tap0', mac: '52:54:00:12:34:56', netns: 'x' }] }, '/st/vm', 'kvm', ['tap0']);
  t.match(xml, /<domain type='kvm'/);
  t.match(xml, /<interface type='ethernet'>\s*<mac address='52:54:00:12:34:56'\/>\s*<target dev='tap0' managed='no'\/>/);
  t.match(xml, /path=\/st\/vm\/qga.sock/);
  t.match(xml, /name=org.qemu.guest_agent.0/);
});

t.test('lifecycle: start, state, screenshot, stop, destroy + undefine', async (t) => {
  const dom = await driver.start(spec);
  t.equal(await dom.state(), 'running');
  t.match(await driver.list(), [{ name: spec.vm.name, driver: 'libvirt', state: 'running' }]);
  t.ok(statSync(dom.agentSocket).isSocket(), 'agent socket is at our path');
  const virsh = await exec('virsh', ['-c', 'qemu:///system', 'domstate', `rl-${spec.vm.name}`]);
  t.match(virsh.stdout, /running/, 'visible to virsh');
  const shot = join(dir, 'shot');
  const fmt = await dom.screendump(shot);
  t.ok(['ppm', 'png'].includes(fmt));
  t.ok(statSync(shot).size > 100, 'screenshot written');
  // The BIOS writes its banner in VGA text mode; poll until it is there.
  let rows: string[] = [];
  for (const end = Date.now() + 30_000; Date.now() < end && !rows.some((l) => /SeaBIOS/.test(l));) {
    rows = decodeVgaText(await dom.readVgaText());
    await new Promise((r) => setTimeout(r, 250));
  }
  t.ok(rows.some((l) => /SeaBIOS \(version/.test(l)), `VGA text memory shows the BIOS banner: ${rows.filter((l) => l !== '').slice(0, 3).join(' | ')}`);
  await dom.stop(1000);
  t.equal(await dom.state(), 'stopped');
  await dom.destroy();
  t.equal(await driver.attach(spec.vm.name), undefined, 'undefined');
  await dom.destroy();
  t.pass('destroy is idempotent');
});

t.test('bad input: libvirtd not running names scripts/libvirtd; a missing bridge', async (t) => {
  const off = new LibvirtDriver({ stateDir: join(dir, 'state'), socket: join(dir, 'no-libvirt-sock') });
  await t.rejects(off.list(), { code: 'LIBVIRTD_NOT_RUNNING', hint: /scripts\/libvirtd/ });
  await t.rejects(driver.start({ ...spec, nics: [{ kind: 'bridge', bridge: 'rlnobr0', mac: '52:54:00:00:00:01' }] }), { code: 'BRIDGE_NOT_FOUND' });
  t.equal(await driver.attach(spec.vm.name), undefined, 'nothing defined');
});

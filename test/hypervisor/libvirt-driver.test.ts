/**
 * The libvirt driver: the shared driver suite (driver-suite.ts) against a
 * real libvirtd (started with scripts/libvirtd when not running), plus what
 * only this driver has: scripts/libvirtd itself, the domain XML (the agent
 * socket at our path, tap NICs), domains visible to virsh, and the error
 * when libvirtd is down. The agent answering through that socket from a
 * real guest is in web-guest.test.ts.
 */
import t from 'tap';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { exec } from '../../src/host/exec.js';
import { LIBVIRT_URI, LibvirtDriver, domainXml } from '../../src/hypervisor/libvirt.js';
import type { DomainSpec } from '../../src/hypervisor/types.js';
import { runDriverSuite } from './driver-suite.js';

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

runDriverSuite(t, {
  driver: 'libvirt',
  create: (stateDir) => new LibvirtDriver({ stateDir, accel: 'tcg' }),
  killedReason: /shut off \((crashed|failed)\)/,
});

t.test('domain XML: type, disks, tap NIC, agent channel at our path', async (t) => {
  const xml = domainXml({ ...spec, nics: [{ kind: 'tap', tap: 'tap0', mac: '52:54:00:12:34:56', netns: 'x' }] }, '/st/vm', 'kvm', ['tap0']);
  t.match(xml, /<domain type='kvm'/);
  t.match(xml, /<interface type='ethernet'>\s*<mac address='52:54:00:12:34:56'\/>\s*<target dev='tap0' managed='no'\/>/);
  t.match(xml, /path=\/st\/vm\/qga.sock/);
  t.match(xml, /name=org.qemu.guest_agent.0/);
});

t.test("libvirt: its domains are libvirt's own: virsh sees them, and undefine removes them", async (t) => {
  const dom = await driver.start(spec);
  const virsh = await exec('virsh', ['-c', LIBVIRT_URI, 'domstate', `rl-${spec.vm.name}`]);
  t.match(virsh.stdout, /running/, 'visible to virsh');
  await dom.destroy();
  const gone = await exec('virsh', ['-c', LIBVIRT_URI, 'dominfo', `rl-${spec.vm.name}`]);
  t.not(gone.code, 0, 'undefined in libvirt');
});

t.test('libvirt: a disk on the scsi bus sits behind a virtio-scsi controller that libvirt accepts and runs', async (t) => {
  const scsi: DomainSpec = {
    ...spec,
    vm: { ...spec.vm, name: `lvscsi-${process.pid}`, disks: [{ name: 'root', bus: 'scsi' }] },
  };
  const dom = await driver.start(scsi);
  try {
    const xml = (await exec('virsh', ['-c', LIBVIRT_URI, 'dumpxml', `rl-${scsi.vm.name}`])).stdout;
    t.match(xml, /<controller type='scsi' index='0' model='virtio-scsi'>/, 'a virtio-scsi controller');
    t.match(xml, /<target dev='sda' bus='scsi'\/>/, 'the disk on it, as sda');
    t.match((await exec('virsh', ['-c', LIBVIRT_URI, 'domstate', `rl-${scsi.vm.name}`])).stdout, /running/);
  } finally {
    await dom.destroy();
  }
});

t.test('libvirt: a q35 machine runs too (its root bus is pcie.0: the agent channel goes there)', async (t) => {
  const q35: DomainSpec = { ...spec, vm: { ...spec.vm, name: `lvq35-${process.pid}`, machine: 'q35' } };
  const dom = await driver.start(q35);
  try {
    t.match((await exec('virsh', ['-c', LIBVIRT_URI, 'domstate', `rl-${q35.vm.name}`])).stdout, /running/);
    const xml = (await exec('virsh', ['-c', LIBVIRT_URI, 'dumpxml', `rl-${q35.vm.name}`])).stdout;
    t.match(xml, /machine='pc-q35-[^']*'/, 'libvirt made it a q35');
  } finally {
    await dom.destroy();
  }
});

t.test('bad input: libvirtd not running names scripts/libvirtd', async (t) => {
  const off = new LibvirtDriver({ stateDir: join(dir, 'state'), socket: join(dir, 'no-libvirt-sock') });
  await t.rejects(off.list(), { code: 'LIBVIRTD_NOT_RUNNING', hint: /scripts\/libvirtd/ });
});

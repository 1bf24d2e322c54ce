/**
 * A VM NIC on a lab tap, under both drivers: QEMU must open the tap that
 * lives inside the lab namespace (qemu: via `ip netns exec`; libvirt: the tap
 * goes to the host namespace for start and comes back onto the lab bridge).
 * A blank disk suffices to prove the plumbing; the booted web guest's HTTP
 * answer through the lab is in web-guest.test.ts.
 */
import t from 'tap';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { exec } from '../../src/host/exec.js';
import { labUp, labDown, parseLab, addLabTap, listLabs } from '../../src/lab/lab.js';
import { QemuDriver } from '../../src/hypervisor/qemu.js';
import { LibvirtDriver } from '../../src/hypervisor/libvirt.js';
import type { DomainSpec, Hypervisor } from '../../src/hypervisor/types.js';
import { subnet } from '../helpers/subnets.js';

const dir = mkdtempSync(join(tmpdir(), 'rl-labvm-'));
const stateDir = join(dir, 'state');
const disk = join(dir, 'blank.raw');
writeFileSync(disk, Buffer.alloc(1024 * 1024));
const tag = randomBytes(2).toString('hex');
const libvirt = new LibvirtDriver({ stateDir });
const qemu = new QemuDriver({ stateDir });

t.teardown(async () => {
  for (const d of [qemu, libvirt] as Hypervisor[]) {
    for (const info of await d.list().catch(() => [])) {
      if (info.name.startsWith(`labvm${tag}`)) await (await d.attach(info.name))?.destroy();
    }
  }
  await libvirt.close();
  for (const l of listLabs(stateDir)) await labDown(l.name, { stateDir });
  rmSync(dir, { recursive: true, force: true });
});

for (const [label, driver] of [
  ['qemu', qemu],
  ['libvirt', libvirt],
] as const) {
  t.test(`${label}: a NIC on a lab tap is open by QEMU and sits on the lab bridge`, async (t) => {
    if (label === 'libvirt') {
      const s = await exec(fileURLToPath(new URL('../../../scripts/libvirtd', import.meta.url)), ['start'], { timeoutMs: 30_000 });
      t.equal(s.code, 0, s.stderr);
    }
    const lab = await labUp(
      parseLab(
        {
          name: `lv${label}${tag}`,
          networks: [{ name: 'prod', subnet: '192.168.77.0/24', gateway: '192.168.77.1', masquerade: subnet('lab/lab-vm') }],
        },
        'lab',
      ),
      { stateDir },
    );
    const { tap, netns } = await addLabTap(stateDir, lab.name, 'prod');
    const spec: DomainSpec = {
      vm: {
        name: `labvm${tag}${label}`,
        memoryMiB: 64,
        vcpus: 1,
        disks: [{ name: 'root' }],
        nics: [{ mac: '52:54:00:77:00:10', network: 'prod' }],
      },
      disks: [{ name: 'root', path: disk, format: 'raw' }],
      nics: [{ kind: 'tap', tap, netns, mac: '52:54:00:77:00:10' }],
      accel: 'tcg',
    };
    const dom = await driver.start(spec);
    t.equal(await dom.state(), 'running');
    const link = JSON.parse((await exec('ip', ['-n', netns, '-j', 'link', 'show', tap])).stdout) as { master?: string; flags: string[] }[];
    t.equal(link[0]?.master, 'br-prod', 'tap is on the lab bridge');
    t.ok(link[0]?.flags.includes('LOWER_UP'), 'tap has carrier: QEMU holds it open');
    const hostSide = await exec('ip', ['link', 'show', tap]);
    t.not(hostSide.code, 0, 'the tap is not in the host namespace');
    await dom.destroy();
    await labDown(lab.name, { stateDir });
    t.notMatch((await exec('ip', ['netns', 'list'])).stdout, netns, 'lab namespace gone');
  });
}

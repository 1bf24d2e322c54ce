/**
 * The qemu driver: the shared driver suite (driver-suite.ts) on a real QEMU,
 * plus what only this driver has: its list reports pid and failure reason,
 * and a crash nobody watched is inferred from a dead pid at re-attach.
 * Guest-agent heartbeats on a real guest are in web-guest.test.ts.
 */
import t from 'tap';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { QemuDriver, type QemuDomain } from '../../src/hypervisor/qemu.js';
import type { DomainSpec } from '../../src/hypervisor/types.js';
import { runDriverSuite } from './driver-suite.js';

runDriverSuite(t, {
  driver: 'qemu',
  create: (stateDir) => new QemuDriver({ stateDir, accel: 'tcg' }),
  killedReason: /qemu killed by SIGKILL/,
});

const dir = mkdtempSync(join(tmpdir(), 'rl-qd-'));
const stateDir = join(dir, 'state');
const disk = join(dir, 'blank.raw');
writeFileSync(disk, Buffer.alloc(1024 * 1024));
const spec = (name: string): DomainSpec => ({
  vm: { name, memoryMiB: 64, vcpus: 1, disks: [{ name: 'root' }], nics: [] },
  disks: [{ name: 'root', path: disk, format: 'raw' }],
  nics: [],
  accel: 'tcg',
});
t.teardown(async () => {
  const d = new QemuDriver({ stateDir });
  for (const info of await d.list()) await (await d.attach(info.name))?.destroy();
  rmSync(dir, { recursive: true, force: true });
});

t.test('qemu: list reports pid and failure reason; a crash nobody watched is inferred at re-attach', async (t) => {
  const d1 = new QemuDriver({ stateDir, accel: 'tcg' });
  const dom = await d1.start(spec('crash'));
  const pid = (await d1.list()).find((i) => i.name === 'crash')?.pid;
  t.equal(pid, dom.pid(), 'list reports the pid');
  const exited = (dom as unknown as { exited(): Promise<void> }).exited();
  process.kill(pid as number, 'SIGKILL');
  await exited;
  t.match(
    (await d1.list()).find((i) => i.name === 'crash'),
    { state: 'failed', reason: /SIGKILL/ },
  );
  await dom.destroy();

  // Now with nobody watching: the new driver infers the crash from a dead pid.
  const dom2 = await d1.start(spec('crash2'));
  const pid2 = (await d1.list()).find((i) => i.name === 'crash2')?.pid as number;
  const d2 = new QemuDriver({ stateDir, accel: 'tcg' });
  process.kill(pid2, 'SIGKILL');
  await (dom2 as unknown as { exited(): Promise<void> }).exited();
  rmSync(join(stateDir, 'vms', 'crash2', 'outcome.json'), { force: true });
  const seen = await d2.attach('crash2');
  t.equal(await seen?.state(), 'failed', 'dead pid without a stop record is failed');
  t.match(await seen?.exitReason(), /found at re-attach/, 'and says it was found so');
  await dom2.destroy();
});

t.test('qemu: each disk is on the bus its definition names (scsi: behind one virtio-scsi controller, as /dev/sdX)', async (t) => {
  const d = new QemuDriver({ stateDir, accel: 'tcg' });
  const dom = (await d.start({
    vm: {
      name: 'buses',
      memoryMiB: 64,
      vcpus: 1,
      disks: [{ name: 'root', bus: 'scsi' }, { name: 'data', bus: 'sata' }, { name: 'logs', bus: 'scsi' }, { name: 'swap' }],
      nics: [],
    },
    disks: ['root', 'data', 'logs', 'swap'].map((name) => {
      const path = join(dir, `${name}.raw`);
      writeFileSync(path, Buffer.alloc(1024 * 1024));
      return { name, path, format: 'raw' as const };
    }),
    nics: [],
    accel: 'tcg',
  })) as QemuDomain;
  const types = await dom.withMonitor((qmp) =>
    Promise.all(
      ['dev-root', 'dev-data', 'dev-logs', 'dev-swap', 'scsi0'].map((id) =>
        qmp.execute('qom-get', { path: `/machine/peripheral/${id}`, property: 'type' }),
      ),
    ),
  );
  t.same(types, ['scsi-hd', 'ide-hd', 'scsi-hd', 'virtio-blk-pci', 'virtio-scsi-pci'], 'what QEMU built');
  await dom.destroy();
});

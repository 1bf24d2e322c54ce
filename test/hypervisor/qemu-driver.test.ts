/**
 * The qemu driver's lifecycle on a real QEMU. The disk is blank (SeaBIOS
 * finds nothing to boot), which is all that start/state/stop/re-attach/crash
 * need; guest-agent heartbeats on a real guest are in web-guest.test.ts.
 */
import t from 'tap';
import { decodeVgaText } from '../../src/hypervisor/vga.js';
import { mkdtempSync, rmSync, writeFileSync, statSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { QemuDriver } from '../../src/hypervisor/qemu.js';
import type { DomainSpec } from '../../src/hypervisor/types.js';

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

t.test('start, state, screendump, re-attach from a new driver, graceful stop', async (t) => {
  const d1 = new QemuDriver({ stateDir, accel: 'tcg' });
  const dom = await d1.start(spec('life'));
  t.equal(await dom.state(), 'running');
  const ppm = join(dir, 'life.ppm');
  await dom.screendump(ppm);
  t.ok(statSync(ppm).size > 1000, 'screendump wrote an image');
  // The BIOS writes its banner in VGA text mode; poll until it is there.
  let rows: string[] = [];
  for (const end = Date.now() + 30_000; Date.now() < end && !rows.some((l) => /SeaBIOS/.test(l));) {
    rows = decodeVgaText(await dom.readVgaText());
    await new Promise((r) => setTimeout(r, 250));
  }
  t.ok(rows.some((l) => /SeaBIOS \(version/.test(l)), `VGA text memory shows the BIOS banner: ${rows.filter((l) => l !== '').slice(0, 3).join(' | ')}`);
  await t.rejects(d1.start(spec('life')), /already running/);

  // A restorelab restart: a fresh driver object finds the VM via pidfile + QMP.
  const d2 = new QemuDriver({ stateDir, accel: 'tcg' });
  const again = await d2.attach('life');
  t.ok(again, 're-attached');
  t.equal(await again?.state(), 'running');
  const listed = await d2.list();
  t.match(listed, [{ name: 'life', driver: 'qemu', state: 'running' }]);
  t.ok(listed[0]?.pid, 'list reports the pid');
  // A blank BIOS guest ignores ACPI power-off, so this also proves the kill fallback.
  await again?.stop(1000);
  t.equal(await again?.state(), 'stopped');
  await again?.destroy();
  t.notOk(existsSync(join(stateDir, 'vms', 'life')), 'destroy removes the state dir');
  await again?.destroy();
  t.pass('destroy is idempotent');
});

t.test('kill -9 of qemu is noticed: by the exit handler and by a later re-attach', async (t) => {
  const d1 = new QemuDriver({ stateDir, accel: 'tcg' });
  const dom = await d1.start(spec('crash'));
  const pid = (await d1.list()).find((i) => i.name === 'crash')?.pid;
  t.ok(pid);
  const exited = (dom as unknown as { exited(): Promise<void> }).exited();
  process.kill(pid as number, 'SIGKILL');
  await exited;
  t.equal(await dom.state(), 'failed');
  t.match((await d1.list()).find((i) => i.name === 'crash'), { state: 'failed', reason: /SIGKILL/ });
  await dom.destroy();

  // Now with nobody watching: the new driver infers the crash from a dead pid.
  const dom2 = await d1.start(spec('crash2'));
  const pid2 = (await d1.list()).find((i) => i.name === 'crash2')?.pid as number;
  const d2 = new QemuDriver({ stateDir, accel: 'tcg' });
  process.kill(pid2, 'SIGKILL');
  await (dom2 as unknown as { exited(): Promise<void> }).exited();
  rmSync(join(stateDir, 'vms', 'crash2', 'outcome.json'), { force: true });
  t.equal(await (await d2.attach('crash2'))?.state(), 'failed', 'dead pid without a stop record is failed');
  await dom2.destroy();
});

t.test('a bridge that does not exist is bad input and leaves nothing', async (t) => {
  const d = new QemuDriver({ stateDir, accel: 'tcg' });
  await t.rejects(d.start({ ...spec('nobr'), nics: [{ kind: 'bridge', bridge: 'rlnobr0', mac: '52:54:00:00:00:01' }] }), { code: 'BRIDGE_NOT_FOUND' });
  t.equal(await d.attach('nobr'), undefined);
});

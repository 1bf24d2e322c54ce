/**
 * The contract every hypervisor driver must pass (the seam of
 * src/hypervisor/types.ts, after restic's backend test suite): call
 * runDriverSuite from a test file with a factory for the driver. The suite
 * boots real guests under TCG:
 * - `main`: the no-boot test guest (lab-templates/guests/no-boot.json) from a
 *   qcow2 overlay, with one NIC on a bridge the suite makes in the host
 *   namespace. Its kernel panics within seconds of starting, on the serial
 *   console and on the VGA text screen at once, and then stays up (panic=0)
 *   without writing to its disk, which makes console, VGA text, screenshot
 *   and mirror checks deterministic;
 * - `crash`: a blank disk (SeaBIOS finds nothing to boot), killed from
 *   outside.
 * What it checks is what session, bring-up, SureBackup and migrate use:
 * start, state, list, pid and liveness, the agent socket, console, VGA text,
 * screenshot, re-attach from a fresh driver, mirror/abort/pivot, stop, the
 * exit reason, destroy, close, and that nothing is left behind.
 */
import type { Test } from 'tap';
import { existsSync, mkdtempSync, readFileSync, readlinkSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { exec } from '../../src/host/exec.js';
import { decodeVgaText } from '../../src/hypervisor/vga.js';
import type { Domain, DomainSpec, Hypervisor } from '../../src/hypervisor/types.js';
import { guestImage, waitFor } from '../helpers/guests.js';

export interface DriverUnderTest {
  driver: 'qemu' | 'libvirt';
  /** A new driver object on `stateDir`; the suite makes a second one to re-attach, as after a restart. */
  create(stateDir: string): Hypervisor;
  /** What exitReason says of a QEMU killed by SIGKILL from outside. */
  killedReason: RegExp;
}

/** Under TCG on a loaded 2-core host the no-boot kernel takes some seconds to reach its panic. */
const PANIC_WAIT_MS = 120_000;

/** The files a process holds open, as their paths. */
function openFiles(pid: number): string[] {
  const fds = `/proc/${pid}/fd`;
  return readdirSync(fds).flatMap((fd) => {
    try {
      return [readlinkSync(join(fds, fd))];
    } catch {
      return [];
    }
  });
}

function isQemu(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('qemu-system');
  } catch {
    return false;
  }
}

/** The interfaces enslaved to `bridge` in the host namespace. */
async function bridgePorts(bridge: string): Promise<string[]> {
  const r = await exec('ip', ['-j', 'link', 'show', 'master', bridge], { timeoutMs: 5000 });
  if (r.code !== 0) throw new Error(`ip link show master ${bridge} failed: ${r.stderr.trim()}`);
  return (JSON.parse(r.stdout || '[]') as { ifname: string }[]).map((l) => l.ifname);
}

async function must(cmd: string, args: string[]): Promise<string> {
  const r = await exec(cmd, args, { timeoutMs: 60_000 });
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${(r.stderr || r.stdout).trim()}`);
  return r.stdout;
}

export function runDriverSuite(t: Test, under: DriverUnderTest): void {
  const dir = mkdtempSync(join(tmpdir(), `rl-ds-${under.driver}-`));
  const stateDir = join(dir, 'state');
  const tag = `${under.driver === 'qemu' ? 'q' : 'l'}${process.pid % 100000}`;
  // In the host namespace, no address, never up: nothing is sent over it.
  const bridge = `rlds${tag}`;
  const hv = under.create(stateDir);
  const names = { main: `ds-${tag}-main`, crash: `ds-${tag}-crash`, nobr: `ds-${tag}-nobr` };
  const blank = join(dir, 'blank.raw');
  writeFileSync(blank, Buffer.alloc(1024 * 1024));
  const overlay = join(dir, 'main.qcow2');
  let dom: Domain | undefined;
  let pid: number | undefined;

  const spec = (name: string, disk: { path: string; format: 'raw' | 'qcow2' }, nics: DomainSpec['nics'] = []): DomainSpec => ({
    vm: { name, memoryMiB: 128, vcpus: 1, disks: [{ name: 'root', bus: 'virtio' }], nics: [] },
    disks: [{ name: 'root', ...disk }],
    nics,
    accel: 'tcg',
  });

  t.teardown(async () => {
    for (const info of await hv.list().catch(() => [])) {
      if (Object.values(names).includes(info.name)) await (await hv.attach(info.name))?.destroy().catch(() => undefined);
    }
    await hv.close();
    await exec('ip', ['link', 'del', bridge]);
    rmSync(dir, { recursive: true, force: true });
  });

  t.test(`${under.driver}: start: running, listed, pid is a live QEMU, the NIC is on its bridge, a second start is refused`, async (t) => {
    const base = await guestImage('no-boot');
    await must('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'raw', overlay]);
    await must('ip', ['link', 'add', bridge, 'type', 'bridge']);
    const main = await hv.start(
      spec(names.main, { path: overlay, format: 'qcow2' }, [{ kind: 'bridge', bridge, mac: '52:54:00:5e:a0:01' }]),
    );
    dom = main;
    t.equal(main.name, names.main);
    t.equal(await main.state(), 'running');
    t.match(
      (await hv.list()).find((i) => i.name === names.main),
      { name: names.main, driver: under.driver, state: 'running' },
    );
    pid = main.pid();
    t.ok(pid !== undefined && isQemu(pid), `pid ${String(pid)} is a running qemu-system`);
    t.ok(pid !== undefined && openFiles(pid).includes(overlay), 'that QEMU has the disk open');
    t.equal(await main.alive(), true, 'alive');
    t.equal(await main.exitReason(), undefined, 'no exit reason while it runs');
    t.ok(statSync(main.agentSocket).isSocket(), 'the guest agent socket is where the domain says');
    t.equal((await bridgePorts(bridge)).length, 1, 'one port on the bridge: the NIC');
    await t.rejects(hv.start(spec(names.main, { path: blank, format: 'raw' })), { code: 'VM_ALREADY_RUNNING' });
    t.equal(main.pid(), pid, 'the refused start left the running QEMU alone');
  });

  t.test(`${under.driver}: the kernel panic shows on the serial console and in VGA text memory`, async (t) => {
    const main = dom as Domain;
    const text = await waitFor('the kernel panic on the serial console', PANIC_WAIT_MS, async () => {
      const s = existsSync(main.consoleLog) ? readFileSync(main.consoleLog, 'utf8') : '';
      return /Kernel panic - not syncing/.test(s) ? s : undefined;
    });
    t.match(text, /Linux version/, 'the console log holds the boot from its start');
    const rows = await waitFor(
      'the kernel panic in VGA text memory',
      30_000,
      async () => {
        const r = decodeVgaText(await main.readVgaText());
        return r.some((l) => /Kernel panic - not syncing/.test(l)) ? r : undefined;
      },
      250,
    );
    t.ok(rows.length >= 25, 'at least the 80x25 screen is decoded');
  });

  t.test(`${under.driver}: screendump writes the screen in the format it reports`, async (t) => {
    const path = join(dir, 'screen');
    const format = await (dom as Domain).screendump(path);
    const head = readFileSync(path).subarray(0, 8);
    if (format === 'ppm') t.equal(head.subarray(0, 2).toString('latin1'), 'P6', 'a binary PPM');
    else t.same([...head.subarray(1, 4)], [...Buffer.from('PNG')], 'a PNG');
    t.ok(statSync(path).size > 1000, 'holds a whole screen');
  });

  t.test(`${under.driver}: a fresh driver (a restorelab restart) re-attaches to the same QEMU`, async (t) => {
    const again = under.create(stateDir);
    try {
      const d = await again.attach(names.main);
      t.ok(d, 're-attached');
      t.equal(await d?.state(), 'running');
      t.equal(d?.pid(), pid, 'same pid');
      t.equal(await d?.alive(), true);
      t.equal(await again.attach(`${names.main}-none`), undefined, 'an unknown name is undefined');
    } finally {
      await again.close();
      await again.close();
    }
    t.pass('close is idempotent');
  });

  t.test(`${under.driver}: mirror then abort keeps the source; mirror again then pivot runs on the copy`, async (t) => {
    const main = dom as Domain;
    const qemu = pid as number;
    const first = join(dir, 'first.raw');
    await main.blockMirror('root', first, 'raw');
    t.ok(openFiles(qemu).includes(first), 'in sync: QEMU writes the target as well');
    await main.abortMirror('root');
    await waitFor('QEMU to let go of the aborted target', 10_000, async () => (openFiles(qemu).includes(first) ? undefined : true), 200);
    t.ok(openFiles(qemu).includes(overlay), 'the VM still runs on its source');
    t.equal(await main.alive(), true);
    await main.abortMirror('root');
    t.pass('abort with no mirror running is no error');

    const copy = join(dir, 'copy.raw');
    await main.blockMirror('root', copy, 'raw');
    await main.pivot('root');
    await waitFor(
      'QEMU to let go of the source after the pivot',
      10_000,
      async () => (openFiles(qemu).includes(overlay) ? undefined : true),
      200,
    );
    t.ok(openFiles(qemu).includes(copy), 'the VM now runs on the copy');
    t.equal(await main.alive(), true, 'and still runs');
    // The panicked guest writes nothing, so the copy is the source's guest view exactly
    // (-U: QEMU holds the copy's write lock).
    t.match(await must('qemu-img', ['compare', '-U', '-f', 'qcow2', '-F', 'raw', overlay, copy]), /identical/);
  });

  t.test(`${under.driver}: stop kills a guest that ignores ACPI; destroy leaves nothing behind`, async (t) => {
    const main = dom as Domain;
    await main.stop(1000);
    t.equal(await main.state(), 'stopped');
    t.equal(await main.alive(), false);
    t.notOk(isQemu(pid as number), 'its QEMU is gone');
    t.type(await main.exitReason(), 'string', `the exit reason says why: ${String(await main.exitReason())}`);
    await main.destroy();
    t.equal(await hv.attach(names.main), undefined, 'attach finds nothing');
    t.notOk(
      (await hv.list()).some((i) => i.name === names.main),
      'list has no trace',
    );
    t.notOk(existsSync(dirname(main.agentSocket)), 'the domain state directory is removed');
    t.same(await bridgePorts(bridge), [], 'no port left on the bridge');
    await main.destroy();
    t.pass('destroy is idempotent');
  });

  t.test(`${under.driver}: a QEMU killed from outside: alive turns false, state is failed, exitReason says why`, async (t) => {
    const d = await hv.start(spec(names.crash, { path: blank, format: 'raw' }));
    const p = d.pid();
    t.ok(p !== undefined && isQemu(p), 'a running QEMU');
    process.kill(p as number, 'SIGKILL');
    await waitFor('alive() to turn false', 15_000, async () => ((await d.alive()) ? undefined : true), 200);
    const reason = await waitFor('an exit reason', 15_000, () => d.exitReason(), 200);
    t.match(reason, under.killedReason);
    t.equal(await d.state(), 'failed');
    t.equal(d.pid(), undefined, 'no pid once QEMU is gone');
    await d.destroy();
    t.equal(await hv.attach(names.crash), undefined);
  });

  t.test(`${under.driver}: a bridge that does not exist is bad input and leaves nothing`, async (t) => {
    await t.rejects(
      hv.start(spec(names.nobr, { path: blank, format: 'raw' }, [{ kind: 'bridge', bridge: `${bridge}x`, mac: '52:54:00:5e:a0:02' }])),
      { code: 'BRIDGE_NOT_FOUND' },
    );
    t.equal(await hv.attach(names.nobr), undefined);
  });
}

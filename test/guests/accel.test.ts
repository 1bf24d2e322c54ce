/**
 * The accelerator probe boots the test guests' kernel when it is built: the
 * success line really appears under a working accelerator (TCG here, with a
 * loaded-machine bound), and the verdict names the method and stays coherent.
 */
import t from 'tap';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { which } from '../../src/host/exec.js';
import { bootGuestKernel, guestKernelPath, probeAccel } from '../../src/host/accel.js';
import { guestImage, guestsDir } from '../helpers/guests.js';

const dir = mkdtempSync(join(tmpdir(), 'rl-accel-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

t.test('the guest kernel runs kernel init to its end under TCG', async (t) => {
  await guestImage('web');
  const kernel = guestKernelPath(guestsDir());
  t.ok(kernel, 'build-guests leaves the kernel next to the images');
  const qemu = which('qemu-system-x86_64');
  if (!qemu) throw new Error('qemu-system-x86_64 is missing: apt-get install qemu-system-x86');
  t.equal(await bootGuestKernel(qemu, 'tcg', kernel as string, dir, 120_000), 'works');
  t.equal(guestKernelPath(join(dir, 'nowhere')), undefined, 'no kernel where no guests were built');
});

t.test('probeAccel uses the guest kernel and re-probes a weaker cached verdict', async (t) => {
  const cacheDir = join(dir, 'cache');
  const bootId = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  // A verdict from the boot sector, made before the guests existed.
  const stale = { accel: 'kvm', kvm: 'works', tcg: true, method: 'boot-sector', detail: 'KVM boots a test boot sector' };
  rmSync(cacheDir, { recursive: true, force: true });
  mkdirSync(cacheDir, { recursive: true });
  writeFileSync(join(cacheDir, 'accel-probe.json'), JSON.stringify({ bootId, probe: stale }));
  const p = await probeAccel({ cacheDir, guestsDir: guestsDir() });
  t.equal(p.method, 'guest-kernel', 'the cached boot-sector verdict was not trusted');
  t.equal(p.tcg, true);
  t.ok(['works', 'hangs', 'fails', 'unavailable'].includes(p.kvm));
  t.equal(p.accel, p.kvm === 'works' ? 'kvm' : 'tcg', 'KVM only when it booted the kernel');
  t.match(p.detail, /test guest kernel|\/dev\/kvm is absent/);
  const t0 = Date.now();
  const again = await probeAccel({ cacheDir, guestsDir: guestsDir() });
  t.same({ ...again, cached: p.cached }, p, 'the new verdict is cached');
  t.equal(again.cached, true, 'and says it came from the cache');
  t.ok(Date.now() - t0 < 1000, 'and answered from the cache');
});

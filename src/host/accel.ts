/**
 * Which QEMU accelerator really works here. /dev/kvm can exist and still hang
 * (nested KVM): on this kind of host a 512-byte boot sector runs fine under
 * KVM while a real kernel never prints a line. So when the test guests are
 * built, KVM must boot the guest kernel (`-kernel`, no disk: it panics at the
 * root mount, which with panic=-1 and -no-reboot ends QEMU) and print the
 * panic line on serial within PROBE_KERNEL_TIMEOUT_MS; without a guest kernel
 * we fall back to the boot sector, which writes to QEMU's isa-debug-exit port.
 * TCG only has to show QEMU runs at all, so it always gets the boot sector.
 * A KVM that hangs is killed at the deadline and we use TCG. The verdict is
 * cached per host identity (kernel release, QEMU version, /dev/kvm's device
 * node: see hostIdentity), because it cannot change while those stay the
 * same, unless it came from the boot sector and a guest kernel has appeared
 * since. A cached answer says so (`cached`, `checkedAt`).
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync, rmSync, mkdtempSync, realpathSync, statSync } from 'node:fs';
import { release, tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { writeFileAtomicSync } from './atomic-file.js';
import { exec, which } from './exec.js';
import { projectPath } from '../paths.js';

export type Accel = 'kvm' | 'tcg';

export interface AccelProbe {
  accel: Accel;
  kvm: 'works' | 'hangs' | 'unavailable' | 'fails';
  tcg: boolean;
  detail: string;
  /** What KVM had to boot: the test guest kernel, or the boot sector fallback. */
  method?: 'guest-kernel' | 'boot-sector';
  /** True when this verdict came from the cache, not a test boot just now. */
  cached?: boolean;
  /** When the test boot behind this verdict ran (ISO 8601). */
  checkedAt?: string;
}

/** What the accelerator verdict depends on; a change of any part means a new test boot. */
export interface HostIdentity {
  kernelRelease: string;
  /** The QEMU binary's identity (real path, inode, size, mtime), which changes with its version. */
  qemuVersion: string;
  /** /dev/kvm's device number, inode and mode, or 'absent'; the node is made anew at each boot or module load. */
  kvmDevice: string;
}

const DEBUG_EXIT_VALUE = 0x41;
/** QEMU exits with (value << 1) | 1 when the guest writes to isa-debug-exit. */
const EXPECTED_EXIT = (DEBUG_EXIT_VALUE << 1) | 1;
const PROBE_TIMEOUT_MS = 8000;
const PROBE_KERNEL_TIMEOUT_MS = 20_000;
/** The last line of kernel init when there is no root device: the kernel ran all the way through. */
const KERNEL_DONE = /Kernel panic - not syncing: VFS: Unable to mount root fs/;

/** mov al,0x41; out 0xf4,al; then hlt forever, with the MBR signature. */
function bootSector(): Buffer {
  const b = Buffer.alloc(512);
  Buffer.from([0xb0, DEBUG_EXIT_VALUE, 0xe6, 0xf4, 0xf4, 0xeb, 0xfd]).copy(b, 0);
  b[510] = 0x55;
  b[511] = 0xaa;
  return b;
}

async function tryBoot(qemu: string, accel: Accel, image: string): Promise<'works' | 'hangs' | 'fails'> {
  const r = await exec(
    qemu,
    [
      '-accel',
      accel,
      '-display',
      'none',
      '-nodefaults',
      '-no-user-config',
      '-m',
      '16',
      '-device',
      'isa-debug-exit,iobase=0xf4,iosize=0x04',
      '-drive',
      `file=${image},format=raw,if=ide`,
    ],
    { timeoutMs: PROBE_TIMEOUT_MS },
  );
  if (r.timedOut) return 'hangs';
  return r.code === EXPECTED_EXIT ? 'works' : 'fails';
}

/**
 * Boots `kernel` without a disk under `accel`: 'works' when kernel init ran to
 * its end (the root-mount panic) within `timeoutMs`.
 */
export async function bootGuestKernel(
  qemu: string,
  accel: Accel,
  kernel: string,
  dir: string,
  timeoutMs = PROBE_KERNEL_TIMEOUT_MS,
): Promise<'works' | 'hangs' | 'fails'> {
  const serial = join(dir, `serial-${accel}.log`);
  const r = await exec(
    qemu,
    [
      '-accel',
      accel,
      ...(accel === 'kvm' ? ['-cpu', 'host'] : []),
      '-display',
      'none',
      '-nodefaults',
      '-no-user-config',
      '-m',
      '256',
      '-serial',
      `file:${serial}`,
      '-kernel',
      kernel,
      '-append',
      'console=ttyS0 panic=-1',
      '-no-reboot',
    ],
    { timeoutMs },
  );
  const text = existsSync(serial) ? readFileSync(serial, 'utf8') : '';
  if (KERNEL_DONE.test(text)) return 'works';
  return r.timedOut ? 'hangs' : 'fails';
}

/** The guest kernel scripts/build-guests extracts, when the guests are built. */
export function guestKernelPath(guestsDir?: string): string | undefined {
  const dir = guestsDir ?? process.env.RESTORELAB_GUESTS_DIR ?? projectPath('var', 'guests');
  const p = join(dir, 'vmlinuz');
  return existsSync(p) ? p : undefined;
}

export function hostIdentity(qemu: string | undefined): HostIdentity {
  let kvmDevice = 'absent';
  try {
    const st = statSync('/dev/kvm');
    kvmDevice = `${st.rdev}:${st.ino}:${st.mode.toString(8)}`;
  } catch {
    // no /dev/kvm: 'absent'
  }
  // The installed binary stands for its version: an upgrade replaces the file.
  // (Running `qemu --version` costs a process start on every doctor call.)
  let qemuVersion = 'none';
  if (qemu) {
    try {
      const st = statSync(qemu);
      qemuVersion = `${realpathSync(qemu)}:${st.ino}:${st.size}:${st.mtimeMs}`;
    } catch {
      // vanished between which() and here: 'none'
    }
  }
  return { kernelRelease: release(), qemuVersion, kvmDevice };
}

function sameHost(a: HostIdentity | undefined, b: HostIdentity): boolean {
  return a !== undefined && a.kernelRelease === b.kernelRelease && a.qemuVersion === b.qemuVersion && a.kvmDevice === b.kvmDevice;
}

export async function probeAccel(opts: { cacheDir?: string; force?: boolean; guestsDir?: string } = {}): Promise<AccelProbe> {
  const cacheFile = opts.cacheDir ? join(opts.cacheDir, 'accel-probe.json') : undefined;
  const kernel = guestKernelPath(opts.guestsDir);
  const qemu = which('qemu-system-x86_64');
  const host = hostIdentity(qemu);
  if (cacheFile && !opts.force && existsSync(cacheFile)) {
    try {
      const cached = JSON.parse(readFileSync(cacheFile, 'utf8')) as { host?: HostIdentity; probe: AccelProbe };
      const weaker = cached.probe.method !== 'guest-kernel' && kernel !== undefined && cached.probe.kvm === 'works';
      if (sameHost(cached.host, host) && !weaker) return { ...cached.probe, cached: true };
    } catch {
      // a damaged cache is simply re-probed
    }
  }
  if (!qemu)
    return { accel: 'tcg', kvm: 'unavailable', tcg: false, detail: 'qemu-system-x86_64 not found (apt-get install qemu-system-x86)' };
  const dir = mkdtempSync(join(tmpdir(), 'restorelab-accel-'));
  try {
    const image = join(dir, 'probe.img');
    writeFileSync(image, bootSector());
    const tcg = (await tryBoot(qemu, 'tcg', image)) === 'works';
    let kvm: AccelProbe['kvm'] = 'unavailable';
    const method: AccelProbe['method'] = kernel ? 'guest-kernel' : 'boot-sector';
    if (existsSync('/dev/kvm')) kvm = kernel ? await bootGuestKernel(qemu, 'kvm', kernel, dir) : await tryBoot(qemu, 'kvm', image);
    const what = kernel ? 'the test guest kernel' : 'a test boot sector';
    const bound = (kernel ? PROBE_KERNEL_TIMEOUT_MS : PROBE_TIMEOUT_MS) / 1000;
    const probe: AccelProbe = {
      accel: kvm === 'works' ? 'kvm' : 'tcg',
      kvm,
      tcg,
      method,
      detail:
        kvm === 'works'
          ? `KVM boots ${what}`
          : kvm === 'hangs'
            ? `KVM did not boot ${what} within ${bound} s (nested KVM?); using TCG`
            : kvm === 'fails'
              ? `KVM failed to boot ${what}; using TCG`
              : '/dev/kvm is absent; using TCG',
      cached: false,
      checkedAt: new Date().toISOString(),
    };
    if (cacheFile) {
      mkdirSync(opts.cacheDir as string, { recursive: true });
      // Atomic: a concurrent reader sees the old verdict or the new, never half of one.
      writeFileAtomicSync(dirname(cacheFile), basename(cacheFile), JSON.stringify({ host, probe }));
    }
    return probe;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Which QEMU accelerator really works here. /dev/kvm can exist and still hang
 * (nested KVM), so we boot a 512-byte boot sector that writes to QEMU's
 * isa-debug-exit port: a working accelerator exits within a second, a hanging
 * one is killed at the deadline and we fall back to TCG. The verdict is cached
 * per kernel boot, because it cannot change without a reboot.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync, rmSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exec, which } from './exec.js';

export type Accel = 'kvm' | 'tcg';

export interface AccelProbe {
  accel: Accel;
  kvm: 'works' | 'hangs' | 'unavailable' | 'fails';
  tcg: boolean;
  detail: string;
}

const DEBUG_EXIT_VALUE = 0x41;
/** QEMU exits with (value << 1) | 1 when the guest writes to isa-debug-exit. */
const EXPECTED_EXIT = (DEBUG_EXIT_VALUE << 1) | 1;
const PROBE_TIMEOUT_MS = 8000;

/** mov al,0x41; out 0xf4,al; then hlt forever, with the MBR signature. */
function bootSector(): Buffer {
  const b = Buffer.alloc(512);
  Buffer.from([0xb0, DEBUG_EXIT_VALUE, 0xe6, 0xf4, 0xf4, 0xeb, 0xfd]).copy(b, 0);
  b[510] = 0x55;
  b[511] = 0xaa;
  return b;
}

async function tryBoot(qemu: string, accel: Accel, image: string): Promise<'works' | 'hangs' | 'fails'> {
  const r = await exec(qemu, [
    '-accel', accel, '-display', 'none', '-nodefaults', '-no-user-config', '-m', '16',
    '-device', 'isa-debug-exit,iobase=0xf4,iosize=0x04',
    '-drive', `file=${image},format=raw,if=ide`,
  ], { timeoutMs: PROBE_TIMEOUT_MS });
  if (r.timedOut) return 'hangs';
  return r.code === EXPECTED_EXIT ? 'works' : 'fails';
}

function bootId(): string {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return 'unknown';
  }
}

export async function probeAccel(opts: { cacheDir?: string; force?: boolean } = {}): Promise<AccelProbe> {
  const cacheFile = opts.cacheDir ? join(opts.cacheDir, 'accel-probe.json') : undefined;
  if (cacheFile && !opts.force && existsSync(cacheFile)) {
    try {
      const cached = JSON.parse(readFileSync(cacheFile, 'utf8')) as { bootId: string; probe: AccelProbe };
      if (cached.bootId === bootId()) return cached.probe;
    } catch {
      // a damaged cache is simply re-probed
    }
  }
  const qemu = which('qemu-system-x86_64');
  if (!qemu) return { accel: 'tcg', kvm: 'unavailable', tcg: false, detail: 'qemu-system-x86_64 not found (apt-get install qemu-system-x86)' };
  const dir = mkdtempSync(join(tmpdir(), 'restorelab-accel-'));
  try {
    const image = join(dir, 'probe.img');
    writeFileSync(image, bootSector());
    const tcg = (await tryBoot(qemu, 'tcg', image)) === 'works';
    let kvm: AccelProbe['kvm'] = 'unavailable';
    if (existsSync('/dev/kvm')) kvm = await tryBoot(qemu, 'kvm', image);
    const probe: AccelProbe = {
      accel: kvm === 'works' ? 'kvm' : 'tcg',
      kvm,
      tcg,
      detail: kvm === 'works' ? 'KVM boots a test guest' :
        kvm === 'hangs' ? `KVM test boot did not finish in ${PROBE_TIMEOUT_MS / 1000} s (nested KVM?); using TCG` :
        kvm === 'fails' ? 'KVM test boot failed; using TCG' : '/dev/kvm is absent; using TCG',
    };
    if (cacheFile) {
      mkdirSync(opts.cacheDir as string, { recursive: true });
      writeFileSync(cacheFile, JSON.stringify({ bootId: bootId(), probe }));
    }
    return probe;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

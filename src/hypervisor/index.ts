/** Picks the hypervisor driver named by the config or the command line. */
import { badInput } from '../errors.js';
import { LibvirtDriver } from './libvirt.js';
import { QemuDriver } from './qemu.js';
import type { Hypervisor } from './types.js';

export function createHypervisor(driver: string, opts: { stateDir: string; accel?: 'auto' | 'kvm' | 'tcg' }): Hypervisor {
  if (driver === 'qemu') return new QemuDriver(opts);
  if (driver === 'libvirt') return new LibvirtDriver(opts);
  throw badInput('UNKNOWN_DRIVER', `unknown hypervisor driver "${driver}"`, 'use --driver qemu or --driver libvirt');
}

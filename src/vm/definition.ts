/**
 * A VM definition: what restorelab backs up, publishes and boots. The JSON
 * shape is fixed by config/schemas/vm.schema.json (scripts depend on it:
 * extend, do not rename).
 */
import { dirname, resolve } from 'node:path';
import { loadValidated } from '../schema/validate.js';

export interface VmDisk {
  name: string;
  /** Source image path, relative to the definition file when loaded from one. */
  image?: string;
  bus?: 'virtio' | 'scsi' | 'ide' | 'sata';
  format?: 'raw' | 'qcow2' | 'vmdk' | 'vdi' | 'vhdx';
}

export interface VmNic {
  mac: string;
  /** Name of the production network (a lab maps it to an isolated bridge). */
  network: string;
  /** The VM's static production address, baked into its disk. */
  ip?: string;
  model?: 'virtio' | 'e1000' | 'vmxnet3';
}

export interface VmDefinition {
  name: string;
  memoryMiB: number;
  vcpus: number;
  firmware?: 'bios' | 'uefi';
  machine?: string;
  role?: string;
  tags?: string[];
  description?: string;
  /**
   * Whether the guest runs a guest agent (qemu-guest-agent on
   * org.qemu.guest_agent.0). Default true: verification then requires the
   * agent to answer, and a guest whose agent never does fails its heartbeat
   * even if its address answers. false: the heartbeat is ICMP on its address.
   */
  agent?: boolean;
  disks: VmDisk[];
  nics: VmNic[];
  [extra: string]: unknown;
}

/** Loads a definition file; disk image paths become absolute. */
export function loadVmDefinition(path: string): VmDefinition {
  const vm = loadValidated<VmDefinition>('vm.schema.json', path, 'VM definition');
  const base = dirname(resolve(path));
  return { ...vm, disks: vm.disks.map((d) => (d.image ? { ...d, image: resolve(base, d.image) } : d)) };
}

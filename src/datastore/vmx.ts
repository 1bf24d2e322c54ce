/**
 * A VMware `.vmx` built from a VM definition, so an ESXi host that mounts a
 * publication over NFS can register the VM as it is (`vim-cmd
 * solo/registervm`): CPUs, memory, every disk on one SCSI controller (the
 * `<disk>.vmdk` descriptor next to it), NICs with their MACs on the port
 * groups that the lab mapping names.
 */
import type { VmDefinition } from '../vm/definition.js';

/** Production network name → ESXi port group; unmapped networks keep their name. */
export type PortGroupMap = Record<string, string>;

/** ESXi accepts static MACs only in VMware's 00:50:56 range, so others are given as generated addresses it keeps. */
function macLines(prefix: string, mac: string): string[] {
  return mac.toLowerCase().startsWith('00:50:56')
    ? [`${prefix}.addressType = "static"`, `${prefix}.address = "${mac}"`]
    : [`${prefix}.addressType = "generated"`, `${prefix}.generatedAddress = "${mac}"`];
}

function quote(v: string): string {
  // .vmx values are double-quoted; '|' escapes as in VMware's own files.
  return v.replace(/\|/g, '|7C').replace(/"/g, '|22');
}

export function vmxFile(vm: VmDefinition, portGroups: PortGroupMap = {}): string {
  const lines = [
    '.encoding = "UTF-8"',
    'config.version = "8"',
    'virtualHW.version = "14"',
    `displayName = "${quote(vm.name)}"`,
    `guestOS = "${vm.firmware === 'uefi' ? 'other5xlinux-64' : 'otherlinux-64'}"`,
    `firmware = "${vm.firmware === 'uefi' ? 'efi' : 'bios'}"`,
    `numvcpus = "${vm.vcpus}"`,
    `memSize = "${vm.memoryMiB}"`,
    'scsi0.present = "TRUE"',
    'scsi0.virtualDev = "lsilogic"',
  ];
  vm.disks.forEach((d, i) => {
    // Unit 7 is the controller's own; skip it as VMware does.
    const unit = i >= 7 ? i + 1 : i;
    lines.push(`scsi0:${unit}.present = "TRUE"`, `scsi0:${unit}.deviceType = "scsi-hardDisk"`, `scsi0:${unit}.fileName = "${quote(d.name)}.vmdk"`);
  });
  vm.nics.forEach((n, i) => {
    const p = `ethernet${i}`;
    const dev = n.model === 'e1000' ? 'e1000' : 'vmxnet3';
    lines.push(`${p}.present = "TRUE"`, `${p}.virtualDev = "${dev}"`, `${p}.networkName = "${quote(portGroups[n.network] ?? n.network)}"`, ...macLines(p, n.mac));
  });
  return lines.join('\n') + '\n';
}

/**
 * VMware monolithicFlat descriptors: a small text file naming a flat extent
 * (`<disk>-flat.vmdk`, the raw bytes), so ESXi and VMware tools open a
 * published disk without conversion.
 */
import { createHash } from 'node:crypto';

const SECTOR = 512;

export function vmdkDescriptor(diskName: string, sizeBytes: number, adapter = 'lsilogic'): string {
  const sectors = Math.ceil(sizeBytes / SECTOR);
  const heads = 255;
  const perTrack = 63;
  const cylinders = Math.min(65535, Math.max(1, Math.floor(sectors / (heads * perTrack))));
  // A stable content id: the same disk always gets the same descriptor.
  const cid = createHash('sha256').update(`${diskName}:${sizeBytes}`).digest('hex').slice(0, 8);
  return [
    '# Disk DescriptorFile',
    'version=1',
    'encoding="UTF-8"',
    `CID=${cid}`,
    'parentCID=ffffffff',
    'createType="monolithicFlat"',
    '',
    '# Extent description',
    `RW ${sectors} FLAT "${diskName}-flat.vmdk" 0`,
    '',
    '# The Disk Data Base',
    '#DDB',
    '',
    'ddb.virtualHWVersion = "14"',
    `ddb.geometry.cylinders = "${cylinders}"`,
    `ddb.geometry.heads = "${heads}"`,
    `ddb.geometry.sectors = "${perTrack}"`,
    `ddb.adapterType = "${adapter}"`,
    '',
  ].join('\n');
}

/** A minimal VMware configuration naming the publication's descriptors, so ESXi can register the VM from the datastore. */
export function vmxConfig(vm: { name: string; memoryMiB: number; vcpus: number; firmware?: string }, diskNames: string[]): string {
  const lines = [
    '.encoding = "UTF-8"',
    'config.version = "8"',
    'virtualHW.version = "14"',
    `displayName = "${vm.name.replace(/"/g, '')}"`,
    `memSize = "${vm.memoryMiB}"`,
    `numvcpus = "${vm.vcpus}"`,
    'guestOS = "other-64"',
    `firmware = "${vm.firmware === 'uefi' ? 'efi' : 'bios'}"`,
    'scsi0.present = "TRUE"',
    'scsi0.virtualDev = "lsilogic"',
  ];
  diskNames.forEach((d, i) => {
    const unit = i >= 7 ? i + 1 : i; // unit 7 is the controller itself
    lines.push(`scsi0:${unit}.present = "TRUE"`, `scsi0:${unit}.fileName = "${d}.vmdk"`, `scsi0:${unit}.deviceType = "scsi-hardDisk"`);
  });
  return lines.join('\n') + '\n';
}

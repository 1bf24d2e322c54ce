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

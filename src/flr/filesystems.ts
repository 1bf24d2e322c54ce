/**
 * Which filesystem a partition holds, by its superblock magic, read through
 * the same `ReadAt` callback as the partition table (relative to the start of
 * the partition). We decide the type ourselves and always pass `-t` to mount,
 * so the kernel never guesses and never probes a driver we did not choose.
 *
 * Words: *fstype* is the name blkid would print (ext4, xfs, btrfs, vfat,
 * ntfs, swap, ...); the *driver* is the kernel filesystem that mounts it;
 * *mount options* are the read-only, replay-free options for that driver.
 */
import { readFileSync } from 'node:fs';
import type { ReadAt } from './partitions.js';

export interface FilesystemProbe {
  fstype: string;
  /** Kernel driver to mount it with, or undefined when we never mount this type. */
  driver?: string;
  label?: string;
  uuid?: string;
}

/**
 * Replay-free read-only options per driver: a journal replay would write to
 * the (read-only) device and fail, or worse, change what the backup shows.
 */
export const MOUNT_OPTIONS: Record<string, string[]> = {
  ext4: ['ro', 'noload'],
  xfs: ['ro', 'norecovery'],
  btrfs: ['ro', 'rescue=nologreplay'],
  vfat: ['ro'],
  ntfs3: ['ro'],
  // Userspace NTFS over FUSE, for kernels without ntfs3 (src/flr/backend.ts driverHere).
  'ntfs-3g': ['ro'],
};
/** Applied to every mount: nothing on a guest filesystem is a device, setuid or runnable on the host. */
export const HARDENING_OPTIONS = ['nodev', 'nosuid', 'noexec'];

/** Bytes read from the start of a partition to probe it; covers the btrfs superblock at 64 KiB. */
export const PROBE_BYTES = 65536 + 4096;

const EXT_INCOMPAT_EXT4 = 0x40 | 0x80 | 0x200; // extents, 64bit, flex_bg
const EXT_COMPAT_HAS_JOURNAL = 0x4;

function cstr(b: Buffer): string {
  const z = b.indexOf(0);
  return (z < 0 ? b : b.subarray(0, z)).toString('utf8').trim();
}

function uuidOf(b: Buffer): string {
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20, 32)}`;
}

/** Identifies the filesystem in `head` (the first PROBE_BYTES of a partition), or returns undefined. */
export function identifyFilesystem(head: Buffer): FilesystemProbe | undefined {
  const at = (off: number, s: string): boolean =>
    head.length >= off + s.length && head.subarray(off, off + s.length).toString('latin1') === s;
  if (head.length >= 1024 + 0x80 && head.readUInt16LE(1024 + 56) === 0xef53) {
    const sb = head.subarray(1024);
    const compat = sb.readUInt32LE(92);
    const incompat = sb.readUInt32LE(96);
    const fstype = incompat & EXT_INCOMPAT_EXT4 ? 'ext4' : compat & EXT_COMPAT_HAS_JOURNAL ? 'ext3' : 'ext2';
    return { fstype, driver: 'ext4', uuid: uuidOf(sb.subarray(104, 120)), label: cstr(sb.subarray(120, 136)) || undefined };
  }
  if (at(0, 'XFSB'))
    return { fstype: 'xfs', driver: 'xfs', uuid: uuidOf(head.subarray(32, 48)), label: cstr(head.subarray(108, 120)) || undefined };
  if (at(65536 + 64, '_BHRfS_M')) {
    return {
      fstype: 'btrfs',
      driver: 'btrfs',
      uuid: uuidOf(head.subarray(65536 + 32, 65536 + 48)),
      label: cstr(head.subarray(65536 + 0x12b, 65536 + 0x12b + 256)) || undefined,
    };
  }
  if (at(3, 'NTFS    ')) return { fstype: 'ntfs', driver: 'ntfs3' };
  if (
    head.length >= 512 &&
    head[510] === 0x55 &&
    head[511] === 0xaa &&
    (at(54, 'FAT12   ') || at(54, 'FAT16   ') || at(54, 'FAT     ') || at(82, 'FAT32   '))
  ) {
    const fat32 = at(82, 'FAT32   ');
    const label = cstr(head.subarray(fat32 ? 71 : 43, fat32 ? 82 : 54));
    return { fstype: 'vfat', driver: 'vfat', label: label && label !== 'NO NAME' ? label : undefined };
  }
  // Recognised but never mounted: named so the error says what is there.
  if (at(4086, 'SWAPSPACE2') || at(4086, 'SWAP-SPACE')) return { fstype: 'swap' };
  if (at(512 + 24, 'LVM2 001')) return { fstype: 'LVM2_member' };
  if (at(0, 'LUKS\xba\xbe')) return { fstype: 'crypto_LUKS' };
  if (at(0, 'hsqs')) return { fstype: 'squashfs' };
  if (at(32769, 'CD001')) return { fstype: 'iso9660' };
  if (at(3, 'EXFAT   ')) return { fstype: 'exfat' };
  if (at(1024, '\x00\x00\x00\x00') && at(0x410, 'ZFS')) return { fstype: 'zfs_member' };
  return undefined;
}

export async function probeFilesystem(read: ReadAt): Promise<FilesystemProbe | undefined> {
  return identifyFilesystem(await read(0, PROBE_BYTES));
}

/** Kernel filesystems this host can mount right now (no module loading is attempted). */
export function kernelFilesystems(procFilesystems = '/proc/filesystems'): Set<string> {
  const out = new Set<string>();
  for (const line of readFileSync(procFilesystems, 'utf8').split('\n')) {
    const name = line.trim().split(/\s+/).pop();
    if (name) out.add(name);
  }
  return out;
}

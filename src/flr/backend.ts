/**
 * The seam between file-level restore and whatever actually reads a guest
 * filesystem. Today that is the host kernel (HostMountBackend): loop devices
 * plus read-only mounts. Mounting an untrusted filesystem in the host kernel
 * exposes the kernel's filesystem drivers to a crafted image, so a later
 * backend can run the mounts inside a throwaway helper VM and export the
 * trees to the host (see docs/file-level-restore.md). Everything above this
 * interface (browse, CLI) sees only directories.
 */
import { open } from 'node:fs/promises';
import { chmodSync, existsSync, mkdirSync, readdirSync, rmdirSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { RestorelabError, badInput, notFound } from '../errors.js';
import { readPartitionTable, type Partition, type ReadAt } from './partitions.js';
import { readPhysicalVolume, type PhysicalVolumeContents } from './lvm.js';
import {
  HARDENING_OPTIONS,
  MOUNT_OPTIONS,
  identifyFilesystem,
  kernelFilesystems,
  probeFilesystem,
  type FilesystemProbe,
} from './filesystems.js';
import type { MountedPartition, Resource, SessionJournal } from './session.js';
import { attachLoop, detachLoop, loopInfo, mountDevice, unmount } from './system.js';
import { isMountPoint } from '../host/mounts.js';
import { exec, which } from '../host/exec.js';

/** One disk to open: a raw image file (a FUSE-published `<disk>.raw` or any local file). */
export interface DiskFile {
  name: string;
  path: string;
}

export interface MountRequest {
  disks: DiskFile[];
  /** Mount root; each partition goes to `<dir>/p<N>` (one disk) or `<dir>/<disk>/p<N>` (several). */
  dir: string;
  /** Only this partition number. */
  partition?: number;
}

export interface FileLevelBackend {
  readonly name: string;
  /**
   * Mounts every recognised partition of every disk read-only below
   * `req.dir`, journalling each resource as it is created. On failure the
   * caller releases the journal; the backend leaves nothing unjournalled.
   */
  mount(req: MountRequest, journal: SessionJournal): Promise<MountedPartition[]>;
  /** Undoes one resource this backend created; safe to call again and after a crash. */
  release(resource: Resource): Promise<void>;
}

/** A partition and what is on it. */
export interface PartitionContent extends Partition {
  filesystem?: FilesystemProbe;
  /** An LVM logical volume ("vg/lv") in this partition; offset and size are then the volume's. */
  volume?: string;
  /** Why this region cannot be mounted though it was found (an LV device-mapper would have to assemble, damaged LVM metadata). */
  unreadable?: string;
}

export function fileReader(fd: { read: (b: Buffer, o: number, l: number, p: number) => Promise<{ bytesRead: number }> }): ReadAt {
  return async (offset, length) => {
    const buf = Buffer.alloc(length);
    let got = 0;
    while (got < length) {
      const { bytesRead } = await fd.read(buf, got, length - got, offset + got);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    return buf.subarray(0, got);
  };
}

/**
 * Parses a disk file's partition table and probes each partition's
 * filesystem. An LVM physical volume is replaced by its logical volumes
 * (src/flr/lvm.ts), each probed like a partition.
 */
export async function inspectDisk(path: string): Promise<{ scheme: string; partitions: PartitionContent[]; warnings: string[] }> {
  const fh = await open(path, 'r');
  try {
    const size = (await fh.stat()).size;
    const read = fileReader(fh);
    const table = await readPartitionTable(read, size, async () => identifyFilesystem(await read(0, 65536 + 4096)) !== undefined);
    const partitions: PartitionContent[] = [];
    const within =
      (offset: number, length: number): ReadAt =>
      (o, l) =>
        read(offset + o, Math.max(0, Math.min(l, length - o)));
    for (const p of table.partitions) {
      const fs = await probeFilesystem(within(p.offset, p.size));
      if (fs?.fstype !== 'LVM2_member') {
        partitions.push({ ...p, ...(fs ? { filesystem: fs } : {}) });
        continue;
      }
      let pv: PhysicalVolumeContents;
      try {
        pv = await readPhysicalVolume(within(p.offset, p.size), p.size);
      } catch (err) {
        partitions.push({ ...p, filesystem: fs, unreadable: `LVM physical volume: ${(err as Error).message}` });
        continue;
      }
      if (pv.volumes.length === 0)
        partitions.push({ ...p, filesystem: fs, unreadable: `LVM physical volume of ${pv.vg}, no logical volumes` });
      for (const lv of pv.volumes) {
        const volume = { ...p, offset: p.offset + lv.offset, size: lv.size, volume: `${lv.vg}/${lv.name}` };
        if (lv.skipped) {
          partitions.push({ ...volume, unreadable: `LVM logical volume ${lv.skipped}` });
          continue;
        }
        const lvFs = await probeFilesystem(within(volume.offset, volume.size));
        partitions.push({ ...volume, ...(lvFs ? { filesystem: lvFs } : {}) });
      }
    }
    return { scheme: table.scheme, partitions, warnings: table.warnings };
  } finally {
    await fh.close();
  }
}

function unknownFilesystem(disk: string, what: string): RestorelabError {
  return badInput(
    'UNKNOWN_FILESYSTEM',
    `disk ${disk}: ${what}`,
    'file-level restore reads ext2/3/4, xfs, btrfs and vfat; restore the whole disk instead (`restorelab restore`) and open it with a tool for that filesystem',
  );
}

/** Whether the host kernel can mount `driver`, loading its module if it is not in yet. */
async function kernelHas(driver: string): Promise<boolean> {
  if (kernelFilesystems().has(driver)) return true;
  const modprobe = which('modprobe');
  if (modprobe) await exec(modprobe, [driver], { timeoutMs: 30_000 });
  return kernelFilesystems().has(driver);
}

/**
 * The driver that mounts `driver`'s filesystems on this host: the kernel's
 * own, or for NTFS on a kernel without ntfs3 the userspace ntfs-3g (over
 * FUSE, package ntfs-3g); undefined when there is none.
 */
async function driverHere(driver: string): Promise<string | undefined> {
  if (await kernelHas(driver)) return driver;
  if (driver === 'ntfs3' && which('mount.ntfs-3g') !== undefined && (await kernelHas('fuse'))) return 'ntfs-3g';
  return undefined;
}

/** The driver that mounts `part` (at `path`) here, or why it is not mounted. */
async function howToMount(part: PartitionContent, path: string, planned: Set<string>): Promise<{ driver: string } | { skipped: string }> {
  const fs = part.filesystem;
  if (part.unreadable) return { skipped: part.unreadable };
  if (planned.has(path)) return { skipped: `its mount directory ${path} is another partition's` };
  if (!fs) return { skipped: 'unknown filesystem' };
  if (!fs.driver || !MOUNT_OPTIONS[fs.driver]) return { skipped: `unsupported filesystem ${fs.fstype}` };
  const driver = await driverHere(fs.driver);
  if (driver !== undefined) return { driver };
  const ntfs = fs.driver === 'ntfs3' ? ' and ntfs-3g is not installed' : '';
  return { skipped: `unsupported filesystem ${fs.fstype}: this host's kernel has no ${fs.driver} driver${ntfs}` };
}

/** Refuses a mount directory that is itself a mount point or has anything in it. */
export function checkMountDir(dir: string): void {
  if (!existsSync(dir)) return;
  if (!statSync(dir).isDirectory())
    throw badInput('MOUNT_POINT_NOT_DIRECTORY', `${dir} is not a directory`, 'give an empty or new directory to mount on');
  if (isMountPoint(dir) || readdirSync(dir).length > 0) {
    throw new RestorelabError(
      'MOUNT_POINT_IN_USE',
      `mount point ${dir} is in use (${isMountPoint(dir) ? 'something is mounted there' : 'it is not empty'})`,
      {
        hint: 'give an empty or new directory, or unmount what is there (`restorelab umount <dir>`)',
      },
    );
  }
}

export class HostMountBackend implements FileLevelBackend {
  readonly name = 'host-mount';

  async mount(req: MountRequest, journal: SessionJournal): Promise<MountedPartition[]> {
    const dir = resolve(req.dir);
    checkMountDir(dir);
    const plan: { disk: DiskFile; part: PartitionContent; path: string; driver: string }[] = [];
    const out: MountedPartition[] = [];
    const planned = new Set<string>();
    for (const disk of req.disks) {
      const info = await inspectDisk(disk.path);
      if (info.partitions.length === 0)
        throw unknownFilesystem(disk.name, 'no partition table and no filesystem we recognise at the start of the disk');
      let parts = info.partitions;
      if (req.partition !== undefined) {
        parts = parts.filter((p) => p.number === req.partition);
        if (parts.length === 0)
          throw notFound(
            'PARTITION_NOT_FOUND',
            `disk ${disk.name} has no partition ${req.partition} (it has ${[...new Set(info.partitions.map((p) => p.number))].join(', ')})`,
            'pick one of the listed partition numbers',
          );
      }
      const base = req.disks.length > 1 ? join(dir, disk.name) : dir;
      for (const part of parts) {
        // A logical volume goes where the guest would see it, /dev/<vg>/<lv>: <dir>/<vg>/<lv>.
        const path = part.volume !== undefined ? join(base, ...part.volume.split('/')) : join(base, `p${part.number}`);
        const volume = part.volume !== undefined ? { volume: part.volume } : {};
        const how = await howToMount(part, path, planned);
        if ('skipped' in how) {
          out.push({
            disk: disk.name,
            partition: part.number,
            ...volume,
            fstype: part.filesystem?.fstype ?? 'unknown',
            path: '',
            skipped: how.skipped,
          });
          continue;
        }
        planned.add(path);
        plan.push({ disk, part, path, driver: how.driver });
      }
    }
    if (plan.length === 0) {
      const why = out.map((m) => `partition ${m.partition}${m.volume ? ` (${m.volume})` : ''}: ${m.skipped}`).join('; ');
      if (out.some((m) => m.fstype === 'unknown'))
        throw unknownFilesystem(req.disks.map((d) => d.name).join(', '), `nothing to mount (${why})`);
      throw badInput(
        'UNKNOWN_FILESYSTEM',
        `nothing to mount: ${why}`,
        'restore the whole disk instead and open it with a tool for that filesystem',
      );
    }
    this.makeRoot(dir, journal);
    for (const { disk, part, path, driver } of plan) {
      const fs = part.filesystem as FilesystemProbe;
      if (part.volume !== undefined) this.makeDir(join(path, '..', '..'), journal);
      this.makeDir(join(path, '..'), journal);
      this.makeDir(path, journal);
      const device = await attachLoop(disk.path, part.offset, part.size);
      journal.add({ kind: 'loop', device, backing: disk.path, offset: part.offset });
      await mountDevice(device, path, driver, [...MOUNT_OPTIONS[driver]!, ...HARDENING_OPTIONS]);
      journal.add({ kind: 'mount', path, device });
      out.push({
        disk: disk.name,
        partition: part.number,
        ...(part.volume !== undefined ? { volume: part.volume } : {}),
        fstype: fs.fstype,
        path,
        offset: part.offset,
      });
    }
    return out.sort((a, b) => a.disk.localeCompare(b.disk) || a.partition - b.partition || (a.volume ?? '').localeCompare(b.volume ?? ''));
  }

  /**
   * The session's mount root, closed to other users (0700): a guest
   * filesystem keeps the guest's modes, so a world-readable file in the
   * guest would be readable on the host by anyone who can reach it. A
   * directory we were given keeps its old mode in the journal, to get it back.
   */
  private makeRoot(dir: string, journal: SessionJournal): void {
    if (existsSync(dir)) {
      const mode = statSync(dir).mode & 0o7777;
      if (mode === 0o700) return;
      journal.add({ kind: 'mode', path: dir, mode });
      chmodSync(dir, 0o700);
      return;
    }
    mkdirSync(dir, { mode: 0o700 });
    journal.add({ kind: 'dir', path: dir });
  }

  private makeDir(path: string, journal: SessionJournal): void {
    if (existsSync(path)) return;
    mkdirSync(path);
    journal.add({ kind: 'dir', path });
  }

  async release(r: Resource): Promise<void> {
    switch (r.kind) {
      case 'mount': {
        // Only unmount what is still the mount we made (same device).
        if (isMountPoint(r.path)) await unmount(r.path);
        return;
      }
      case 'loop': {
        const info = loopInfo(r.device);
        if (info && info.offset === r.offset && (info.backing === r.backing || info.backing.startsWith(`${r.backing} (`)))
          await detachLoop(r.device);
        return;
      }
      case 'dir': {
        try {
          rmdirSync(r.path);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
        }
        return;
      }
      case 'mode': {
        try {
          chmodSync(r.path, r.mode);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
        }
        return;
      }
      case 'holder':
        return;
    }
  }
}

/**
 * A test guest whose restore points change between backups the way a
 * compromised VM's would: a copy of a var/guests image, its root partition
 * (MBR, ext4 at sector 2048) mounted read-write through a loop device at the
 * partition's offset, files planted or changed, unmounted, backed up.
 * The scan tests, the recovery gate test and bench/scan.ts use it.
 */
import { execFileSync } from 'node:child_process';
import { appendFileSync, copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { join, dirname } from 'node:path';
import { backupVm } from '../../src/backup/engine.js';
import { initRepository, type LocalRepository } from '../../src/repo/repository.js';
import type { RestorePoint } from '../../src/repo/contract.js';
import { loadVmDefinition, type VmDefinition } from '../../src/vm/definition.js';
import { projectPath } from '../../src/paths.js';
import { guestImage } from './guests.js';

/** The guest images' root partition: MBR entry 1, from sector 2048. */
const ROOT_OFFSET = 2048 * 512;

/** A string no real file holds: the test rule matches it. */
export const PLANTED_MARKER = 'RESTORELAB-TEST-MALWARE-5f3c9a1e';
export const PLANTED_PATH = '/var/lib/planted/dropper.bin';
/** A YARA rule set that matches the planted file and nothing else of a test guest. */
export const TEST_RULES = `rule RestorelabTestDropper {
  meta: description = "the file planted by test/helpers/planted-guest.ts"
  strings: $m = "${PLANTED_MARKER}"
  condition: $m
}
`;

export function sha256(b: Buffer | string): string {
  return createHash('sha256').update(b).digest('hex');
}

export function plantedContent(): Buffer {
  return Buffer.from(`#!/bin/sh\n# ${PLANTED_MARKER}\nexec nc -l -p 4444 -e /bin/sh\n`);
}

/** Runs `change` on a read-write mount of the image's root partition, then unmounts and detaches. */
export function changeGuest(image: string, change: (root: string) => void): void {
  const dev = execFileSync('losetup', ['--find', '--show', '--offset', String(ROOT_OFFSET), image], { encoding: 'utf8' }).trim();
  const dir = mkdtempSync(join(dirname(image), 'rw-'));
  try {
    execFileSync('mount', ['-t', 'ext4', dev, dir]);
    try {
      change(dir);
    } finally {
      execFileSync('umount', [dir]);
    }
  } finally {
    execFileSync('losetup', ['-d', dev]);
    rmSync(dir, { recursive: true, force: true });
  }
}

export function writeGuestFile(root: string, guestPath: string, content: Buffer | string): void {
  mkdirSync(dirname(join(root, guestPath)), { recursive: true });
  writeFileSync(join(root, guestPath), content);
}

export interface PlantedGuest {
  repoDir: string;
  repository: LocalRepository;
  vm: VmDefinition;
  image: string;
  points: RestorePoint[];
}

/**
 * A repository in `<dir>/repo` with three points of a copy of `variant`:
 * 1 as built (clean), 2 with PLANTED_PATH added, 3 as 2 with one existing
 * file changed (a comment appended to /etc/inittab, harmless to init).
 */
export async function plantedGuest(dir: string, variant = 'web'): Promise<PlantedGuest> {
  const image = join(dir, `${variant}.raw`);
  copyFileSync(await guestImage(variant), image);
  const repoDir = join(dir, 'repo');
  const repository = await initRepository(repoDir);
  const vm = loadVmDefinition(projectPath('lab-templates', 'vms', `${variant}.json`));
  const disk = vm.disks[0]?.name ?? 'root';
  const backup = (): Promise<RestorePoint> => backupVm({ repo: repository, vm, disks: { [disk]: image }, source: image });
  const points = [await backup()];
  changeGuest(image, (root) => writeGuestFile(root, PLANTED_PATH, plantedContent()));
  points.push(await backup());
  changeGuest(image, (root) => appendFileSync(join(root, 'etc/inittab'), `# changed after the second backup ${Date.now()}\n`));
  points.push(await backup());
  return { repoDir, repository, vm, image, points };
}

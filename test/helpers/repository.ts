/**
 * A real repository holding a backup of a test guest, and a fingerprint of
 * its chunks, for every integration test that publishes, recovers or serves
 * a restore point and must prove the backup never changed.
 */
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { projectPath } from '../../src/paths.js';
import { initRepository, type LocalRepository } from '../../src/repo/repository.js';
import { CHUNKS_DIR } from '../../src/repo/format.js';
import { backupVm } from '../../src/backup/engine.js';
import { loadVmDefinition, type VmDefinition } from '../../src/vm/definition.js';
import type { RestorePoint } from '../../src/repo/contract.js';
import { guestImage } from './guests.js';

export interface GuestRepository {
  /** Repository directory (`<dir>/repo`). */
  repo: string;
  repository: LocalRepository;
  point: RestorePoint;
  vm: VmDefinition;
  /** The image the point was taken from. */
  image: string;
}

/** A repository in `<dir>/repo` with one restore point of the test guest `variant` (default `web`). */
export async function guestRepository(dir: string, variant = 'web'): Promise<GuestRepository> {
  const image = await guestImage(variant);
  const repoDir = join(dir, 'repo');
  const repository = await initRepository(repoDir);
  const vm = loadVmDefinition(projectPath('lab-templates', 'vms', `${variant}.json`));
  const point = await backupVm({ repo: repository, vm, disks: { [vm.disks[0]?.name ?? 'root']: image }, source: image });
  return { repo: repoDir, repository, point, vm, image };
}

/** Name, size, mtime and content hash of every chunk file: any write to the repository changes it. */
export function chunkFingerprint(repo: string): string {
  return treeFingerprint(join(repo, CHUNKS_DIR));
}

/**
 * Path, size, mtime and content hash of every file below `dir` (every
 * directory too, so an empty one made counts): any change to the tree
 * changes it. A missing `dir` has a fingerprint of its own.
 */
export function treeFingerprint(dir: string): string {
  const h = createHash('sha256');
  if (!existsSync(dir)) return 'absent';
  const walk = (d: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      const p = join(d, e.name);
      if (e.isDirectory()) {
        h.update(`${p}/\n`);
        walk(p);
      } else {
        const st = statSync(p);
        h.update(`${p} ${st.size} ${st.mtimeMs}\n`);
        h.update(readFileSync(p));
      }
    }
  };
  walk(dir);
  return h.digest('hex');
}

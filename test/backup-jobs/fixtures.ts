/**
 * Backup job fixtures: small VM definitions and raw images written by the
 * test itself (distinct random data per VM, so points differ), and a job
 * file over them.
 */
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** Writes `<dir>/<name>.json` (one disk "root", format raw) and `<dir>/<name>.raw` of `mib` MiB; returns both paths. */
export function smallVm(dir: string, name: string, mib = 2): { vm: string; image: string } {
  const vm = join(dir, `${name}.json`);
  const image = join(dir, `${name}.raw`);
  writeFileSync(vm, JSON.stringify({ name, memoryMiB: 64, vcpus: 1, disks: [{ name: 'root', format: 'raw' }], nics: [] }));
  writeFileSync(image, randomBytes(mib * 1024 * 1024));
  return { vm, image };
}

/** Writes a job file `<dir>/<file>` and returns its path. */
export function jobFile(dir: string, file: string, job: Record<string, unknown>): string {
  const path = join(dir, file);
  writeFileSync(path, JSON.stringify(job, null, 2));
  return path;
}

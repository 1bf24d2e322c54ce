/**
 * The host paths an API request may name: images to back up only under
 * api.sourceRoots, restore targets only under api.restoreRoots (config,
 * docs/security-h5.md). An operator is trusted with restore points, not with
 * the host: without these limits one could back up /etc/shadow and restore
 * it over any root-owned file. The returned path is the real one, so the
 * work reads and writes exactly what was checked.
 */
import { mkdirSync } from 'node:fs';
import type { ApiLimits } from '../config/config.js';
import { resolve } from 'node:path';
import { confine, isInside } from '../host/confine.js';
import { apiError } from './errors.js';

/** The image `path` as its real path, or 403 PATH_NOT_ALLOWED. */
export function allowedSource(limits: ApiLimits, path: string, what: string): string {
  const real = confine(path, limits.sourceRoots);
  if (real !== undefined) return real;
  throw apiError('PATH_NOT_ALLOWED', `${what} ${path} is outside the backup source directories (${limits.sourceRoots.join(', ')})`, undefined,
    'copy the image under one of them, or add its directory to api.sourceRoots in the server\'s config file');
}

/** The target `path` as its real path, or 403 PATH_NOT_ALLOWED. */
export function allowedTarget(limits: ApiLimits, path: string, what: string): string {
  const real = confine(path, limits.restoreRoots);
  if (real !== undefined) return real;
  throw apiError('PATH_NOT_ALLOWED', `${what} ${path} is outside the restore target directories (${limits.restoreRoots.join(', ')})`, undefined,
    'choose a path under one of them, or add a directory to api.restoreRoots in the server\'s config file');
}

/**
 * Creates the roots and the scripts directory that lie in the state
 * directory (the defaults) when missing, so they work from the first start;
 * one configured elsewhere is the host admin's to make. Only root may write
 * them (0755): a script user that could write the scripts directory could
 * choose what the server runs.
 */
export function createApiDirs(limits: ApiLimits, stateDir: string): void {
  for (const dir of [...limits.sourceRoots, ...limits.restoreRoots, limits.scriptsDir]) {
    if (!isInside(resolve(dir), resolve(stateDir))) continue;
    try { mkdirSync(dir, { recursive: true, mode: 0o755 }); } catch { /* a root that cannot be made allows nothing; the refusal says which */ }
  }
}

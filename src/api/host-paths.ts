/**
 * The host paths an API request may name (config `api`, docs/security.md, "API roles and the host"):
 * images to back up only under api.sourceRoots; restored disks and migrated
 * session disks only under api.restoreRoots; FUSE publications mounted only
 * below api.mountRoots; new repositories only under api.repositoryRoots or
 * at the configured repository. An operator is trusted with restore points,
 * not with the host: without these limits one could back up /etc/shadow and
 * restore it over any root-owned file, or mount a publication over /etc.
 * The returned path is the real one, so the work reads and writes exactly
 * what was checked.
 */
import { mkdirSync } from 'node:fs';
import type { ApiLimits } from '../config/config.js';
import { resolve } from 'node:path';
import { confine, isInside, realPathOrParent } from '../host/confine.js';
import { apiError } from './errors.js';
import { isS3Url } from '../repo/s3-config.js';
import { resolveRepository } from '../repo/open.js';

/** One kind of host path an API request may name: its roots, its config key, and what the roots hold. */
interface HostPathRule {
  roots: readonly string[];
  key: string;
  holds: string;
}

function refuse(rule: HostPathRule, path: string, what: string, detail = ''): never {
  throw apiError(
    'PATH_NOT_ALLOWED',
    `${what} ${path} is outside the ${rule.holds} (${rule.roots.join(', ')})${detail}`,
    undefined,
    `choose a path under one of them, or add a directory to ${rule.key} in the server's config file`,
  );
}

function allowed(rule: HostPathRule, path: string, what: string): string {
  const real = confine(path, rule.roots);
  if (real !== undefined) return real;
  return refuse(rule, path, what);
}

/** The image `path` as its real path, or 403 PATH_NOT_ALLOWED. */
export function allowedSource(limits: ApiLimits, path: string, what: string): string {
  const real = confine(path, limits.sourceRoots);
  if (real !== undefined) return real;
  throw apiError(
    'PATH_NOT_ALLOWED',
    `${what} ${path} is outside the backup source directories (${limits.sourceRoots.join(', ')})`,
    undefined,
    "copy the image under one of them, or add its directory to api.sourceRoots in the server's config file",
  );
}

/**
 * The target `path` (a restored disk file, or the directory a session's
 * disks migrate into) as its real path, or 403 PATH_NOT_ALLOWED.
 */
export function allowedTarget(limits: ApiLimits, path: string, what: string): string {
  return allowed({ roots: limits.restoreRoots, key: 'api.restoreRoots', holds: 'restore target directories' }, path, what);
}

/**
 * The directory a FUSE publication mounts on, as its real path, or 403
 * PATH_NOT_ALLOWED. Strictly below a root: a mount on the root itself would
 * hide every other publication's mount point under it.
 */
export function allowedMountDir(limits: ApiLimits, path: string, what: string): string {
  const rule: HostPathRule = { roots: limits.mountRoots, key: 'api.mountRoots', holds: 'FUSE mount directories' };
  const real = allowed(rule, path, what);
  if (limits.mountRoots.some((root) => realPathOrParent(root) === real))
    refuse(rule, path, what, '; a mount goes in a directory below one, not on it');
  return real;
}

/**
 * The directory a new repository is made in, as its real path, or 403
 * PATH_NOT_ALLOWED: under api.repositoryRoots, or exactly the configured
 * repository (so a fresh server's admin can create it over the API). That
 * one is returned as configured, so the catalog and the `default` name agree.
 */
export function allowedRepositoryDir(limits: ApiLimits, configured: string, path: string, what: string): string {
  if (isS3Url(path)) return allowedObjectRepository(limits, configured, path, what);
  const real = realPathOrParent(path);
  if (real !== undefined && real === realPathOrParent(configured)) return resolve(configured);
  return allowed({ roots: limits.repositoryRoots, key: 'api.repositoryRoots', holds: 'repository directories' }, path, what);
}

/**
 * An s3:// repository the API may create: the configured repository, or one
 * under an `s3://BUCKET/PREFIX/` entry of api.repositoryRoots (compared in
 * canonical form, whole prefix segments), so an admin's token cannot reach
 * every bucket the server's credentials can.
 */
function allowedObjectRepository(limits: ApiLimits, configured: string, path: string, what: string): string {
  const want = resolveRepository(path);
  if (isS3Url(configured) && resolveRepository(configured) === want) return want;
  const roots = limits.repositoryRoots.filter(isS3Url).map(resolveRepository);
  if (roots.some((r) => want.startsWith(r))) return want;
  throw apiError(
    'PATH_NOT_ALLOWED',
    `${what} ${want} is outside the object-storage repository roots (${roots.join(', ') || 'none configured'})`,
    undefined,
    "choose a prefix under one of them, or add an s3://BUCKET/PREFIX/ entry to api.repositoryRoots in the server's config file",
  );
}

/**
 * Creates the roots and the scripts directory that lie in the state
 * directory (the defaults) when missing, so they work from the first start;
 * one configured elsewhere is the host admin's to make. Only root may write
 * them (0755): a script user that could write the scripts directory could
 * choose what the server runs.
 */
export function createApiDirs(limits: ApiLimits, stateDir: string): void {
  const dirs = [...limits.sourceRoots, ...limits.restoreRoots, ...limits.mountRoots, ...limits.repositoryRoots.filter((r) => !isS3Url(r))];
  for (const dir of [...dirs, limits.scriptsDir]) {
    if (!isInside(resolve(dir), resolve(stateDir))) continue;
    try {
      mkdirSync(dir, { recursive: true, mode: 0o755 });
    } catch {
      /* a root that cannot be made allows nothing; the refusal says which */
    }
  }
}

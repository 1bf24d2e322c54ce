/**
 * The repositories the API serves: the configured one, named `default`, and
 * any other the catalog has indexed (named by the repository id in its
 * config.json, which stays the same when the directory moves). The route
 * files open them through here (src/api/routes/repositories.ts and the
 * points, publications, backups and file-restore routes).
 *
 * The server holds one key file at most, `repositoryKeyFile`, for the
 * configured repository; any other encrypted repository is opened without
 * one, and its error says the key is needed.
 */
import type { ApiContext } from './context.js';
import { apiError } from './errors.js';
import { openRepository } from '../repo/repository.js';
import type { Repository, RepositoryMaintenance } from '../repo/api.js';
import type { RepositoryReader } from '../repo/contract.js';
import { catalogKnows, indexedRepositories, listPoints, reindex } from '../catalog/catalog.js';
import { RestorelabError } from '../errors.js';
import { keyFileOption } from '../config/key-file.js';
import { syncLevelOption } from '../config/config.js';
import { resolveRepository } from '../repo/open.js';

export const DEFAULT_REPOSITORY = 'default';

/**
 * How to open the repository at `path`: with the server's key file
 * (resolveKeyFile: RESTORELAB_KEY_FILE, then repositoryKeyFile) when it is the
 * configured repository, without otherwise: API clients name the other
 * repositories, and the server's key is for its own.
 */
export function openOptions(ctx: ApiContext, path: string): { keyFile?: string } {
  return resolveRepository(path) === resolveRepository(ctx.config.repository) ? keyFileOption(undefined, ctx.config) : {};
}

/** The configured repository, opened fresh (opening reads config.json and the key file only), at the host's sync level. */
export function openDefaultRepository(ctx: ApiContext): Promise<RepositoryMaintenance> {
  return openRepository(ctx.config.repository, { ...openOptions(ctx, ctx.config.repository), ...syncLevelOption(ctx.config) });
}

/** Fills the catalog from a repository it has never seen, as `restorelab points` does. */
export async function ensureIndexed(ctx: ApiContext, repo: RepositoryReader): Promise<void> {
  if (!(await catalogKnows(ctx.sql, repo.path))) await reindex(ctx.sql, repo);
}

/** `default`, or the id of a repository the catalog knows. */
export async function openNamedRepository(ctx: ApiContext, name: string): Promise<RepositoryMaintenance> {
  if (name === DEFAULT_REPOSITORY) return openDefaultRepository(ctx);
  for (const path of await indexedRepositories(ctx.sql)) {
    if (path === resolveRepository(ctx.config.repository)) continue;
    const repo = await openRepository(path, syncLevelOption(ctx.config)).catch(() => undefined);
    if (repo?.config.id === name) return repo;
  }
  throw apiError(
    'NOT_FOUND',
    `no repository named ${name}: use "${DEFAULT_REPOSITORY}" (the configured one) or the id of a repository GET /api/v1/repositories lists`,
  );
}

export interface RepositoryView {
  name: string;
  path: string;
  default: boolean;
  id: string;
  format: { version: number; chunkSize: number; hash: string; compression: string; encryption: string; created: string };
  counts: { points: number; vms: number; damagedPoints: number };
  latestPoint: string | null;
}

export async function describeRepository(ctx: ApiContext, repo: Repository): Promise<RepositoryView> {
  await ensureIndexed(ctx, repo);
  const points = await listPoints(ctx.sql, repo.path);
  const c = repo.config;
  const isDefault = repo.path === resolveRepository(ctx.config.repository);
  return {
    name: isDefault ? DEFAULT_REPOSITORY : c.id,
    path: repo.path,
    default: isDefault,
    id: c.id,
    format: {
      version: c.version,
      chunkSize: c.chunkSize,
      hash: c.hash,
      compression: c.compression,
      encryption: c.encryption,
      created: c.created,
    },
    counts: { points: points.length, vms: new Set(points.map((p) => p.vm)).size, damagedPoints: points.filter((p) => p.damaged).length },
    latestPoint: points.at(-1)?.id ?? null,
  };
}

/** A repository that cannot be opened still appears in the list, with why. */
export function unopenable(ctx: ApiContext, path: string, err: unknown): Record<string, unknown> {
  const isDefault = path === resolveRepository(ctx.config.repository);
  const e =
    err instanceof RestorelabError
      ? { code: err.code, message: err.message, ...(err.hint ? { hint: err.hint } : {}) }
      : { code: 'REPO_UNREADABLE', message: String(err) };
  return { name: isDefault ? DEFAULT_REPOSITORY : null, path, default: isDefault, error: e };
}

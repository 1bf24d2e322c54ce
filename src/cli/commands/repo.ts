/**
 * `restorelab repo init|reindex`, and what every repository command shares:
 * opening the repository named by --repo (with --key-file when encrypted) and
 * the catalog beside the state directory.
 */
import type { Command } from 'commander';
import { contextFor, type CommandContext } from '../context.js';
import type { RepositoryMaintenance } from '../../repo/api.js';
import type { Catalog } from '../../catalog/sql.js';
import type { CodecInit } from '../../backup/chunk-pool.js';
import { badInput } from '../../errors.js';
import { formatBytes } from '../../format/output.js';
import { keyFileOption } from '../../config/key-file.js';

export interface RepoFlags {
  repo?: string;
  keyFile?: string;
}

export interface OpenedRepo {
  repo: RepositoryMaintenance;
  /** What worker threads need to rebuild the repository's codec. */
  codecInit: CodecInit;
}

/**
 * The repository of --repo, else the configured one, with the key file of
 * resolveKeyFile (--key-file, RESTORELAB_KEY_FILE, the config) and the
 * config's sync level (repositorySyncLevel, RESTORELAB_SYNC_LEVEL).
 */
export async function openRepoFromFlags(ctx: CommandContext, o: RepoFlags): Promise<OpenedRepo> {
  const { openRepository } = await import('../../repo/index.js');
  const { syncLevelOption } = await import('../../config/config.js');
  const cfg = await ctx.config();
  const dir = o.repo ?? cfg.repository;
  const repo = await openRepository(dir, { ...keyFileOption(o.keyFile, cfg), ...syncLevelOption(cfg) });
  const key = repo.masterKey;
  return { repo, codecInit: { config: repo.config, ...(key ? { key } : {}) } };
}

/**
 * Runs `fn` with the catalog open. The catalog is a cache of the repository:
 * when it cannot be opened or updated the command still succeeds, with a
 * warning saying how to rebuild it.
 */
export function withCatalog(ctx: CommandContext, fn: (db: Catalog) => void | Promise<void>): Promise<void> {
  return (async () => {
    const { connectCatalog } = await import('../../catalog/catalog.js');
    let db: Catalog | undefined;
    try {
      db = await connectCatalog((await ctx.config()).catalog);
      await fn(db);
    } catch (err) {
      ctx.out.warn(`the catalog was not updated (${(err as Error).message}); rebuild it with: restorelab repo reindex --repo <dir>`);
    } finally {
      await db?.close();
    }
  })();
}

/** Runs `fn` with the catalog open on the seam (SQLite file or PostgreSQL), closing it after; errors propagate. */
export async function usingCatalog<T>(ctx: CommandContext, fn: (db: Catalog) => Promise<T>): Promise<T> {
  const { connectCatalog } = await import('../../catalog/catalog.js');
  const db = await connectCatalog((await ctx.config()).catalog);
  try {
    return await fn(db);
  } finally {
    await db.close();
  }
}

export function parseSize(v: string): number {
  const m = /^(\d+)\s*([KMG]i?B?|[kmg])?$/i.exec(v.trim());
  if (!m) throw badInput('BAD_SIZE', `"${v}" is not a size`, 'give bytes, or a number with K, M or G (powers of 1024), e.g. 4M');
  const unit = (m[2] ?? '').toUpperCase().charAt(0);
  const mult = unit === 'K' ? 1024 : unit === 'M' ? 1024 ** 2 : unit === 'G' ? 1024 ** 3 : 1;
  return Number(m[1]) * mult;
}

export function registerRepo(program: Command): void {
  const cmd = program.command('repo').description('create and maintain backup repositories');
  cmd
    .command('init <repo>')
    .description('create an empty repository in a directory or under an s3:// prefix (chunk size fixed for its lifetime)')
    .option('--chunk-size <size>', 'bytes per chunk, a power of two from 256K to 8M (default 1M; 4M under s3://)')
    .option('--encrypt', 'encrypt chunks with AES-256-GCM (needs --key-file)')
    .option('--key-file <file>', 'the key file; created with a new random key when it does not exist')
    .option('--json', 'print one JSON object')
    .action(async (dir: string, o: { chunkSize?: string; encrypt?: boolean; keyFile?: string }, c: Command) => {
      const { initRepository } = await import('../../repo/index.js');
      const ctx = contextFor(c);
      if (o.encrypt && !o.keyFile)
        throw badInput(
          'KEY_REQUIRED',
          '--encrypt needs --key-file',
          'add --key-file <file>; it is created when it does not exist, keep a copy safe',
        );
      if (o.keyFile && !o.encrypt)
        throw badInput('ENCRYPT_REQUIRED', '--key-file is only used with --encrypt', 'add --encrypt, or leave out --key-file');
      const repo = await initRepository(dir, {
        ...(o.chunkSize ? { chunkSize: parseSize(o.chunkSize) } : {}),
        ...(o.encrypt && o.keyFile ? { keyFile: o.keyFile } : {}),
      });
      const c2 = repo.config;
      ctx.out.result(
        { path: repo.path, id: c2.id, version: c2.version, chunkSize: c2.chunkSize, encryption: c2.encryption },
        () =>
          `repository ${repo.path} created: chunks of ${formatBytes(c2.chunkSize)}, ${c2.encryption === 'none' ? 'not encrypted' : 'encrypted (keep the key file safe: without it nothing restores)'}`,
      );
    });
  cmd
    .command('reindex')
    .description('rebuild the catalog from the repository files (the source of truth)')
    .option('--repo <repo>', 'repository directory or s3:// URL (default: the configured one)')
    .option('--key-file <file>', 'key file of an encrypted repository')
    .option('--json', 'print one JSON object')
    .action(async (o: RepoFlags, c: Command) => {
      const { reindex } = await import('../../catalog/catalog.js');
      const ctx = contextFor(c);
      const { repo } = await openRepoFromFlags(ctx, o);
      await usingCatalog(ctx, async (db) => {
        const points = await reindex(db, repo);
        // db.target: a PostgreSQL URL is printed without its password.
        const catalog = db.target;
        ctx.out.result({ repo: repo.path, catalog, points }, () => `catalog ${catalog}: ${points} restore point(s) of ${repo.path}`);
      });
    });
}

/**
 * The catalog: an index of what the repository holds (SQLite on one host,
 * or PostgreSQL shared by several), so listing restore points does not read
 * every manifest. The repository files stay the
 * source of truth; `reindex` rebuilds the catalog from them at any time, so
 * losing or corrupting the catalog loses nothing.
 *
 * Words:
 * - *migration*: a named, ordered list of SQL statements. Each area (points
 *   here; scans, tokens, backup job and SureBackup history in their modules)
 *   owns its migrations and applies them with `migrateCatalog(catalog, area,
 *   steps)` (the seam, either dialect); the sessions' host-local mirror uses
 *   `migrate(db, area, sql)` on a SQLite handle.
 *   Applied steps are recorded per area in `schema_migrations`; on SQLite the
 *   database's `user_version` pragma is bumped on every applied step, so
 *   tools can see the schema changed.
 * - *target*: where the catalog is, a SQLite file path (the default, one
 *   host) or a `postgres://` URL (a catalog shared by several hosts), from
 *   RESTORELAB_CATALOG or the config's `catalog`.
 */
import { closeSync, mkdirSync, openSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import type { PointSignals, RepositoryReader, RestorePoint } from '../repo/contract.js';
import { RestorelabError } from '../errors.js';
import { PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, tightenMode } from '../host/private-files.js';
import { isPostgresTarget, redactUrl, sqliteCatalog, upsertSql, type Catalog, type Dialect, type SqlRunner } from './sql.js';

export type CatalogDb = Database.Database;

/** Companion files SQLite keeps beside the database. */
const SQLITE_SIDE_FILES = ['-wal', '-shm', '-journal'];

/**
 * Opens (creating when needed) the catalog database with the points tables
 * migrated. The catalog holds API token hashes and every point's manifest,
 * so it is owner-only (0600): created so before SQLite opens it (SQLite gives
 * its -wal and -shm files the database's mode), and tightened when an older
 * installation left it readable by others. A directory it creates is 0700.
 */
export function openCatalog(path: string): CatalogDb {
  // Every area is on the seam: a postgres:// target reaching here is a caller that should use connectCatalog.
  if (isPostgresTarget(path)) {
    throw new RestorelabError('INTERNAL', `openCatalog opens SQLite files only; ${redactUrl(path)} is PostgreSQL (use connectCatalog)`);
  }
  let db: CatalogDb;
  try {
    mkdirSync(dirname(path), { recursive: true, mode: PRIVATE_DIR_MODE });
    closeSync(openSync(path, 'a', PRIVATE_FILE_MODE));
    for (const f of [path, ...SQLITE_SIDE_FILES.map((s) => path + s)]) tightenMode(f);
    db = new Database(path);
    db.pragma('journal_mode = WAL');
    db.pragma('busy_timeout = 5000');
  } catch (err) {
    throw new RestorelabError('CATALOG_UNREADABLE', `cannot open the catalog ${path}: ${(err as Error).message}`, {
      hint: 'delete the catalog file and rebuild it with: restorelab repo reindex --repo <dir>',
      cause: err,
    });
  }
  migrate(db, 'points', POINTS_MIGRATIONS);
  return db;
}

/**
 * Applies the steps of `area` not applied yet, each in its own transaction.
 * Steps are append-only: never edit or reorder one that has shipped.
 */
export function migrate(db: CatalogDb, area: string, steps: readonly MigrationStep[]): void {
  db.exec(
    'CREATE TABLE IF NOT EXISTS schema_migrations (area TEXT NOT NULL, step INTEGER NOT NULL, applied TEXT NOT NULL, PRIMARY KEY (area, step))',
  );
  const row = db.prepare('SELECT MAX(step) AS step FROM schema_migrations WHERE area = ?').get(area) as { step: number | null };
  const done = row.step ?? -1;
  for (let step = done + 1; step < steps.length; step++) {
    db.transaction(() => {
      db.exec(stepSql(steps[step] as MigrationStep, 'sqlite'));
      db.prepare('INSERT INTO schema_migrations (area, step, applied) VALUES (?, ?, ?)').run(area, step, new Date().toISOString());
      const v = db.pragma('user_version', { simple: true }) as number;
      db.pragma(`user_version = ${v + 1}`);
    })();
  }
}

/** A migration step: one SQL text for both dialects, or one per dialect where they differ. */
export type MigrationStep = string | { sqlite: string; postgres: string };

/** Every migrator on a PostgreSQL catalog takes this advisory lock (a constant: "rlmg" in ASCII). */
export const MIGRATION_LOCK = 0x726c6d67;

const SCHEMA_MIGRATIONS_SQL =
  'CREATE TABLE IF NOT EXISTS schema_migrations (area TEXT NOT NULL, step INTEGER NOT NULL, applied TEXT NOT NULL, PRIMARY KEY (area, step))';

/**
 * `migrate` on the seam: applies the steps of `area` not applied yet, each in
 * its own transaction, in either dialect. On PostgreSQL every step's
 * transaction first takes an advisory lock, so two hosts (or workers)
 * starting at once never both apply a step: the second waits, then sees the
 * step recorded. On SQLite the transaction is IMMEDIATE, which serializes
 * migrators the same way. Steps are append-only: never edit or reorder one
 * that has shipped.
 */
export async function migrateCatalog(cat: Catalog, area: string, steps: readonly MigrationStep[]): Promise<void> {
  if (cat.dialect === 'sqlite') await cat.exec(SCHEMA_MIGRATIONS_SQL);
  for (;;) {
    const applied = await cat.transaction(async (tx) => {
      if (tx.dialect === 'postgres') {
        await tx.get('SELECT pg_advisory_xact_lock(?)', [MIGRATION_LOCK]);
        // Inside the lock: CREATE TABLE IF NOT EXISTS is not safe against a concurrent creator on PostgreSQL.
        await tx.exec(SCHEMA_MIGRATIONS_SQL);
      }
      const row = await tx.get<{ step: number | null }>('SELECT MAX(step) AS step FROM schema_migrations WHERE area = ?', [area]);
      const step = (row?.step ?? -1) + 1;
      if (step >= steps.length) return false;
      await tx.exec(stepSql(steps[step] as MigrationStep, tx.dialect));
      await tx.run('INSERT INTO schema_migrations (area, step, applied) VALUES (?, ?, ?)', [area, step, new Date().toISOString()]);
      if (tx.dialect === 'sqlite') {
        const v = (await tx.get<{ user_version: number }>('PRAGMA user_version'))?.user_version ?? 0;
        await tx.exec(`PRAGMA user_version = ${v + 1}`);
      }
      return true;
    });
    if (!applied) return;
  }
}

function stepSql(step: MigrationStep, dialect: Dialect): string {
  return typeof step === 'string' ? step : step[dialect];
}

/**
 * Opens the catalog at `target` on the seam, with the points tables
 * migrated: a `postgres://` URL connects to PostgreSQL, anything else is the
 * SQLite file (opened as openCatalog does).
 */
export async function connectCatalog(target: string): Promise<Catalog> {
  if (!isPostgresTarget(target)) {
    const cat = sqliteCatalog(openCatalog(target));
    return cat;
  }
  const { PostgresCatalog } = await import('./postgres.js');
  return migrated(await PostgresCatalog.connect(target), 'points', POINTS_MIGRATIONS);
}

/** `cat` with `area` migrated (migrateCatalog); closed again when a step fails, so no caller leaks the connection. */
export async function migrated(cat: Catalog, area: string, steps: readonly MigrationStep[]): Promise<Catalog> {
  try {
    await migrateCatalog(cat, area, steps);
  } catch (err) {
    await cat.close();
    throw err;
  }
  return cat;
}

const POINTS_MIGRATIONS: MigrationStep[] = [
  {
    sqlite: `CREATE TABLE points (
     repo TEXT NOT NULL,
     id TEXT NOT NULL,
     vm TEXT NOT NULL,
     time TEXT NOT NULL,
     consistency TEXT NOT NULL,
     parent TEXT,
     disks TEXT NOT NULL,
     size INTEGER NOT NULL,
     bytes_new INTEGER NOT NULL,
     damaged INTEGER NOT NULL DEFAULT 0,
     manifest TEXT NOT NULL,
     PRIMARY KEY (repo, id)
   );
   CREATE INDEX points_vm_time ON points (repo, vm, time);
   CREATE TABLE repos (repo TEXT PRIMARY KEY, indexed TEXT NOT NULL)`,
    // Sizes are BIGINT: a disk passes 2 GiB (PostgreSQL's INTEGER is 4 bytes, SQLite's grows to 8).
    postgres: `CREATE TABLE points (
     repo TEXT NOT NULL,
     id TEXT NOT NULL,
     vm TEXT NOT NULL,
     time TEXT NOT NULL,
     consistency TEXT NOT NULL,
     parent TEXT,
     disks TEXT NOT NULL,
     size BIGINT NOT NULL,
     bytes_new BIGINT NOT NULL,
     damaged INTEGER NOT NULL DEFAULT 0,
     manifest TEXT NOT NULL,
     PRIMARY KEY (repo, id)
   );
   CREATE INDEX points_vm_time ON points (repo, vm, time);
   CREATE TABLE repos (repo TEXT PRIMARY KEY, indexed TEXT NOT NULL)`,
  },
];

/** What `points` lists: enough to choose a point without opening the repository. */
export interface PointSummary {
  id: string;
  vm: string;
  time: string;
  consistency: string;
  parent?: string;
  disks: { name: string; size: number }[];
  /** Sum of the disks' virtual sizes. */
  size: number;
  bytesNew: number;
  damaged: boolean;
  /** Ransomware signals of the backup (src/backup/signals.ts); null for points taken before they existed. */
  signals: PointSignals | null;
}

interface PointRow {
  id: string;
  vm: string;
  time: string;
  consistency: string;
  parent: string | null;
  disks: string;
  size: number;
  bytes_new: number;
  damaged: number;
  signals: string | null;
}

/** Whether `reindex` ever ran for this repository (otherwise the catalog may miss its older points). */
export async function catalogKnows(db: SqlRunner, repoPath: string): Promise<boolean> {
  return (await db.get('SELECT 1 AS known FROM repos WHERE repo = ?', [repoPath])) !== undefined;
}

/** Paths of every repository `reindex` ever ran for, sorted. */
export async function indexedRepositories(db: SqlRunner): Promise<string[]> {
  return (await db.all<{ repo: string }>('SELECT repo FROM repos ORDER BY repo')).map((r) => r.repo);
}

const POINT_COLUMNS = ['repo', 'id', 'vm', 'time', 'consistency', 'parent', 'disks', 'size', 'bytes_new', 'damaged', 'manifest'];

export async function recordPoint(db: SqlRunner, repoPath: string, p: RestorePoint): Promise<void> {
  await db.run(upsertSql(db.dialect, 'points', POINT_COLUMNS, ['repo', 'id']), [
    repoPath,
    p.id,
    p.vm.name,
    p.time,
    p.consistency,
    p.parent ?? null,
    JSON.stringify(p.disks.map((d) => ({ name: d.name, size: d.size }))),
    p.disks.reduce((s, d) => s + d.size, 0),
    p.stats.bytesNew,
    p.damaged ? 1 : 0,
    JSON.stringify(p),
  ]);
}

export async function forgetPoints(db: Catalog, repoPath: string, ids: readonly string[]): Promise<void> {
  await db.transaction(async (tx) => {
    for (const id of ids) await tx.run('DELETE FROM points WHERE repo = ? AND id = ?', [repoPath, id]);
  });
}

/**
 * The signals straight from the stored manifest, no column or migration
 * needed: SQLite's JSON1 extracts them; PostgreSQL's jsonb does (its JSON
 * null becomes SQL NULL, as json_extract gives it).
 */
const SIGNALS: Record<Dialect, string> = {
  sqlite: "json_extract(manifest, '$.stats.signals') AS signals",
  postgres: "NULLIF((manifest::jsonb -> 'stats' -> 'signals')::text, 'null') AS signals",
};

export async function listPoints(db: SqlRunner, repoPath: string, filter: { vm?: string } = {}): Promise<PointSummary[]> {
  const signals = SIGNALS[db.dialect];
  const rows = filter.vm
    ? await db.all<PointRow>(`SELECT *, ${signals} FROM points WHERE repo = ? AND vm = ? ORDER BY time, id`, [repoPath, filter.vm])
    : await db.all<PointRow>(`SELECT *, ${signals} FROM points WHERE repo = ? ORDER BY time, id`, [repoPath]);
  return rows.map((r) => ({
    id: r.id,
    vm: r.vm,
    time: r.time,
    consistency: r.consistency,
    ...(r.parent ? { parent: r.parent } : {}),
    disks: JSON.parse(r.disks) as { name: string; size: number }[],
    size: r.size,
    bytesNew: r.bytes_new,
    damaged: r.damaged === 1,
    signals: r.signals === null ? null : (JSON.parse(r.signals) as PointSignals),
  }));
}

/** Replaces everything the catalog knows about `repo` with what its files say. */
export async function reindex(db: Catalog, repo: RepositoryReader): Promise<number> {
  const points = await repo.listPoints();
  await db.transaction(async (tx) => {
    await tx.run('DELETE FROM points WHERE repo = ?', [repo.path]);
    for (const p of points) await recordPoint(tx, repo.path, p);
    await tx.run(upsertSql(tx.dialect, 'repos', ['repo', 'indexed'], ['repo']), [repo.path, new Date().toISOString()]);
  });
  return points.length;
}

/**
 * The catalog: a SQLite index of what the repository holds, so listing
 * restore points does not read every manifest. The repository files stay the
 * source of truth; `reindex` rebuilds the catalog from them at any time, so
 * losing or corrupting the catalog loses nothing.
 *
 * Words:
 * - *migration*: a named, ordered list of SQL statements. Each area (points
 *   here; jobs, runs, sessions in later modules) owns its migrations and
 *   applies them with `migrate(db, area, sql)`. Applied steps are recorded per
 *   area in `schema_migrations`, and the database's `user_version` pragma is
 *   bumped on every applied step, so tools can see the schema changed.
 */
import { closeSync, mkdirSync, openSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import type { PointSignals, RepositoryReader, RestorePoint } from '../repo/contract.js';
import { RestorelabError } from '../errors.js';
import { PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, tightenMode } from '../host/private-files.js';

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
export function migrate(db: CatalogDb, area: string, steps: readonly string[]): void {
  db.exec(
    'CREATE TABLE IF NOT EXISTS schema_migrations (area TEXT NOT NULL, step INTEGER NOT NULL, applied TEXT NOT NULL, PRIMARY KEY (area, step))',
  );
  const row = db.prepare('SELECT MAX(step) AS step FROM schema_migrations WHERE area = ?').get(area) as { step: number | null };
  const done = row.step ?? -1;
  for (let step = done + 1; step < steps.length; step++) {
    db.transaction(() => {
      db.exec(steps[step] as string);
      db.prepare('INSERT INTO schema_migrations (area, step, applied) VALUES (?, ?, ?)').run(area, step, new Date().toISOString());
      const v = db.pragma('user_version', { simple: true }) as number;
      db.pragma(`user_version = ${v + 1}`);
    })();
  }
}

const POINTS_MIGRATIONS = [
  `CREATE TABLE points (
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
export function catalogKnows(db: CatalogDb, repoPath: string): boolean {
  return db.prepare('SELECT 1 FROM repos WHERE repo = ?').get(repoPath) !== undefined;
}

/** Paths of every repository `reindex` ever ran for, sorted. */
export function indexedRepositories(db: CatalogDb): string[] {
  return (db.prepare('SELECT repo FROM repos ORDER BY repo').all() as { repo: string }[]).map((r) => r.repo);
}

export function recordPoint(db: CatalogDb, repoPath: string, p: RestorePoint): void {
  db.prepare(
    `INSERT OR REPLACE INTO points (repo, id, vm, time, consistency, parent, disks, size, bytes_new, damaged, manifest)
              VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
  ).run(
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
  );
}

export function forgetPoints(db: CatalogDb, repoPath: string, ids: readonly string[]): void {
  const del = db.prepare('DELETE FROM points WHERE repo = ? AND id = ?');
  db.transaction(() => {
    for (const id of ids) del.run(repoPath, id);
  })();
}

/** The signals straight from the stored manifest: SQLite's JSON1 extracts them, no column or migration needed. */
const SIGNALS = "json_extract(manifest, '$.stats.signals') AS signals";

export function listPoints(db: CatalogDb, repoPath: string, filter: { vm?: string } = {}): PointSummary[] {
  const rows = (
    filter.vm
      ? db.prepare(`SELECT *, ${SIGNALS} FROM points WHERE repo = ? AND vm = ? ORDER BY time, id`).all(repoPath, filter.vm)
      : db.prepare(`SELECT *, ${SIGNALS} FROM points WHERE repo = ? ORDER BY time, id`).all(repoPath)
  ) as PointRow[];
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
export async function reindex(db: CatalogDb, repo: RepositoryReader): Promise<number> {
  const points = await repo.listPoints();
  db.transaction(() => {
    db.prepare('DELETE FROM points WHERE repo = ?').run(repo.path);
    for (const p of points) recordPoint(db, repo.path, p);
    db.prepare('INSERT OR REPLACE INTO repos (repo, indexed) VALUES (?, ?)').run(repo.path, new Date().toISOString());
  })();
  return points.length;
}

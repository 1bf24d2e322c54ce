/**
 * What scanning keeps in the catalog (migration area `scan`):
 *
 * - *verdicts*: per (file content SHA-256, rule-set hash), the rules that
 *   matched (an empty list: no match). A file whose content was scanned
 *   with the same rules before is answered from here and not read by yara
 *   again. Keyed by content, never by name, size or timestamps: a guest
 *   controls those, so an "unchanged" judgement on them can be spoofed.
 * - *point scans*: per restore point and rule set, the verdict, the
 *   matches and the file counts of its latest scan.
 *
 * Words: a point's *scan status* is the verdict of its newest scan
 * (`clean` or `infected`); a point never scanned is `suspect` when the
 * nearest older scanned point of the same VM is infected (it may carry the
 * same infection), `unscanned` otherwise.
 */
import { migrateCatalog, type MigrationStep, type PointSummary } from '../catalog/catalog.js';
import { upsertSql, type Catalog, type SqlParam, type SqlRunner } from '../catalog/sql.js';

export type ScanVerdict = 'clean' | 'infected';
export type ScanStatus = ScanVerdict | 'suspect' | 'unscanned';

export interface ScanMatch {
  rule: string;
  disk: string;
  partition: number;
  /** The LVM logical volume ("vg/lv") the file is on, when it is on one. */
  volume?: string;
  /** Guest path inside the partition ("/etc/cron.d/x"); bytes that are not UTF-8 show as U+FFFD. */
  path: string;
  sha256: string;
}

export interface PointScanRecord {
  repo: string;
  point: string;
  vm: string;
  ruleset: string;
  verdict: ScanVerdict;
  /** ISO 8601. */
  scannedAt: string;
  matches: ScanMatch[];
  files: { scanned: number; cached: number };
}

const SCAN_MIGRATIONS: MigrationStep[] = [
  {
    sqlite: `CREATE TABLE scan_verdicts (
     sha256 TEXT NOT NULL,
     ruleset TEXT NOT NULL,
     rules TEXT NOT NULL,
     scanned_at TEXT NOT NULL,
     PRIMARY KEY (sha256, ruleset)
   ) WITHOUT ROWID;
   CREATE TABLE scan_points (
     repo TEXT NOT NULL,
     point TEXT NOT NULL,
     vm TEXT NOT NULL,
     ruleset TEXT NOT NULL,
     verdict TEXT NOT NULL,
     scanned_at TEXT NOT NULL,
     matches TEXT NOT NULL,
     files_scanned INTEGER NOT NULL,
     files_cached INTEGER NOT NULL,
     PRIMARY KEY (repo, point, ruleset)
   );
   CREATE INDEX scan_points_time ON scan_points (repo, point, scanned_at)`,
    postgres: `CREATE TABLE scan_verdicts (
     sha256 TEXT NOT NULL,
     ruleset TEXT NOT NULL,
     rules TEXT NOT NULL,
     scanned_at TEXT NOT NULL,
     PRIMARY KEY (sha256, ruleset)
   );
   CREATE TABLE scan_points (
     repo TEXT NOT NULL,
     point TEXT NOT NULL,
     vm TEXT NOT NULL,
     ruleset TEXT NOT NULL,
     verdict TEXT NOT NULL,
     scanned_at TEXT NOT NULL,
     matches TEXT NOT NULL,
     files_scanned BIGINT NOT NULL,
     files_cached BIGINT NOT NULL,
     PRIMARY KEY (repo, point, ruleset)
   );
   CREATE INDEX scan_points_time ON scan_points (repo, point, scanned_at)`,
  },
  // File maps (src/scan/filemap.ts): per scanned point, each file's content hash and extents, so a later point's unchanged files are not read.
  {
    sqlite: `CREATE TABLE scan_files (
     repo TEXT NOT NULL,
     point TEXT NOT NULL,
     disk TEXT NOT NULL,
     partition INTEGER NOT NULL,
     path BLOB NOT NULL,
     size INTEGER NOT NULL,
     sha256 TEXT NOT NULL,
     extents TEXT NOT NULL,
     PRIMARY KEY (repo, point, disk, partition, path)
   ) WITHOUT ROWID;
   CREATE TABLE scan_maps (
     repo TEXT NOT NULL,
     point TEXT NOT NULL,
     vm TEXT NOT NULL,
     time TEXT NOT NULL,
     disk TEXT NOT NULL,
     partition INTEGER NOT NULL,
     offset INTEGER NOT NULL,
     PRIMARY KEY (repo, point, disk, partition)
   );
   CREATE INDEX scan_maps_vm ON scan_maps (repo, vm, disk, partition, time)`,
    // PostgreSQL: BYTEA for raw path bytes, BIGINT sizes, and "offset" quoted (a reserved word there).
    postgres: `CREATE TABLE scan_files (
     repo TEXT NOT NULL,
     point TEXT NOT NULL,
     disk TEXT NOT NULL,
     partition INTEGER NOT NULL,
     path BYTEA NOT NULL,
     size BIGINT NOT NULL,
     sha256 TEXT NOT NULL,
     extents TEXT NOT NULL,
     PRIMARY KEY (repo, point, disk, partition, path)
   );
   CREATE TABLE scan_maps (
     repo TEXT NOT NULL,
     point TEXT NOT NULL,
     vm TEXT NOT NULL,
     time TEXT NOT NULL,
     disk TEXT NOT NULL,
     partition INTEGER NOT NULL,
     "offset" BIGINT NOT NULL,
     PRIMARY KEY (repo, point, disk, partition)
   );
   CREATE INDEX scan_maps_vm ON scan_maps (repo, vm, disk, partition, time)`,
  },
];

/**
 * Rows per statement of insertRows: one statement per row cost a scan's
 * file map a round trip (PostgreSQL) or a statement step (SQLite) per file;
 * 100 rows of 8 columns stay far below either engine's parameter limit.
 */
const ROWS_PER_INSERT = 100;

/**
 * Upserts `rows` (values in `columns` order) into `table`, many rows per
 * statement. Of rows with the same key the last wins, as it would row by
 * row (PostgreSQL refuses a statement that touches one key twice).
 */
export async function insertRows(
  tx: SqlRunner,
  table: string,
  columns: readonly string[],
  key: readonly string[],
  rows: readonly SqlParam[][],
): Promise<void> {
  const keyAt = key.map((k) => columns.indexOf(k));
  const unique = new Map<string, SqlParam[]>();
  for (const r of rows)
    unique.set(keyAt.map((i) => (Buffer.isBuffer(r[i]) ? `b${(r[i] as Buffer).toString('latin1')}` : `v${String(r[i])}`)).join('\0'), r);
  const all = [...unique.values()];
  for (let at = 0; at < all.length; at += ROWS_PER_INSERT) {
    const part = all.slice(at, at + ROWS_PER_INSERT);
    await tx.run(upsertSql(tx.dialect, table, columns, key, part.length), part.flat());
  }
}

/** Applies the scan area's migrations (idempotent). */
export function migrateScan(db: Catalog): Promise<void> {
  return migrateCatalog(db, 'scan', SCAN_MIGRATIONS);
}

/** The verdict cache of one rule set. */
export class VerdictCache {
  private constructor(
    private readonly db: Catalog,
    readonly ruleset: string,
  ) {}

  /** The cache of `ruleset` in the catalog `db`, migrated. */
  static async open(db: Catalog, ruleset: string): Promise<VerdictCache> {
    await migrateScan(db);
    return new VerdictCache(db, ruleset);
  }

  /**
   * Verdicts read ahead by preload (the reference points' files): a scan of
   * a nightly point asks for each unchanged file's verdict, and one query
   * for all of them costs what two or three single ones do. A verdict never
   * changes for its (content, rule set) key, so a copy in memory cannot go stale.
   */
  private readonly known = new Map<string, string[]>();

  /** Reads ahead the verdicts of the files of `refs` (file maps of scanned points), at most `limit` (bounded memory). */
  async preload(repo: string, refs: readonly { point: string; disk: string; partition: number }[], limit = 100_000): Promise<void> {
    for (const r of refs) {
      const rows = await this.db.all<{ sha256: string; rules: string }>(
        `SELECT DISTINCT v.sha256, v.rules FROM scan_files f JOIN scan_verdicts v ON v.sha256 = f.sha256 AND v.ruleset = ?
          WHERE f.repo = ? AND f.point = ? AND f.disk = ? AND f.partition = ? LIMIT ?`,
        [this.ruleset, repo, r.point, r.disk, r.partition, limit - this.known.size],
      );
      for (const row of rows) this.known.set(row.sha256, JSON.parse(row.rules) as string[]);
      if (this.known.size >= limit) return;
    }
  }

  /** Rules that matched this content before (empty: none), or undefined when it was never scanned with this rule set. */
  async lookup(sha256: string): Promise<string[] | undefined> {
    const hit = this.known.get(sha256);
    if (hit) return hit;
    const row = await this.db.get<{ rules: string }>('SELECT rules FROM scan_verdicts WHERE sha256 = ? AND ruleset = ?', [
      sha256,
      this.ruleset,
    ]);
    return row ? (JSON.parse(row.rules) as string[]) : undefined;
  }

  /** Records many verdicts in one transaction (a batch's). */
  async storeAll(verdicts: Iterable<[sha256: string, rules: string[]]>): Promise<void> {
    const at = new Date().toISOString();
    const rows = [...verdicts];
    if (rows.length === 0) return;
    await this.db.transaction((tx) =>
      insertRows(
        tx,
        'scan_verdicts',
        ['sha256', 'ruleset', 'rules', 'scanned_at'],
        ['sha256', 'ruleset'],
        rows.map(([sha, rules]) => [sha, this.ruleset, JSON.stringify(rules), at]),
      ),
    );
  }
}

export async function recordPointScan(db: Catalog, r: PointScanRecord): Promise<void> {
  await migrateScan(db);
  await db.run(
    upsertSql(
      db.dialect,
      'scan_points',
      ['repo', 'point', 'vm', 'ruleset', 'verdict', 'scanned_at', 'matches', 'files_scanned', 'files_cached'],
      ['repo', 'point', 'ruleset'],
    ),
    [r.repo, r.point, r.vm, r.ruleset, r.verdict, r.scannedAt, JSON.stringify(r.matches), r.files.scanned, r.files.cached],
  );
}

interface PointScanRow {
  repo: string;
  point: string;
  vm: string;
  ruleset: string;
  verdict: string;
  scanned_at: string;
  matches: string;
  files_scanned: number;
  files_cached: number;
}

/** The newest scan of each point of `repo` (any rule set). */
export async function latestPointScans(db: Catalog, repo: string): Promise<Map<string, PointScanRecord>> {
  await migrateCatalog(db, 'scan', SCAN_MIGRATIONS);
  const rows = await db.all<PointScanRow>('SELECT * FROM scan_points WHERE repo = ? ORDER BY scanned_at', [repo]);
  const out = new Map<string, PointScanRecord>();
  for (const r of rows) {
    out.set(r.point, {
      repo: r.repo,
      point: r.point,
      vm: r.vm,
      ruleset: r.ruleset,
      verdict: r.verdict as ScanVerdict,
      scannedAt: r.scanned_at,
      matches: JSON.parse(r.matches) as ScanMatch[],
      files: { scanned: r.files_scanned, cached: r.files_cached },
    });
  }
  return out;
}

/** Each point's scan status (see the module comment); `points` may span several VMs. */
export async function scanStatuses(
  db: Catalog,
  repo: string,
  points: readonly Pick<PointSummary, 'id' | 'vm' | 'time'>[],
): Promise<Map<string, ScanStatus>> {
  const scans = await latestPointScans(db, repo);
  const byVm = new Map<string, Pick<PointSummary, 'id' | 'vm' | 'time'>[]>();
  for (const p of points) byVm.set(p.vm, [...(byVm.get(p.vm) ?? []), p]);
  const out = new Map<string, ScanStatus>();
  for (const list of byVm.values()) {
    let lastScanned: ScanVerdict | undefined;
    for (const p of [...list].sort((a, b) => a.time.localeCompare(b.time) || a.id.localeCompare(b.id))) {
      const s = scans.get(p.id);
      if (s) {
        lastScanned = s.verdict;
        out.set(p.id, s.verdict);
      } else {
        out.set(p.id, lastScanned === 'infected' ? 'suspect' : 'unscanned');
      }
    }
  }
  return out;
}

/** The points with their `scan` status added (what `points` and the API list). */
export async function withScanStatus<P extends Pick<PointSummary, 'id' | 'vm' | 'time'>>(
  db: Catalog,
  repo: string,
  points: P[],
): Promise<(P & { scan: ScanStatus })[]> {
  const st = await scanStatuses(db, repo, points);
  return points.map((p) => ({ ...p, scan: st.get(p.id) ?? 'unscanned' }));
}

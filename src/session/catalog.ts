/**
 * Recovery sessions in the catalog: the `sessions` table, on the catalog
 * seam (src/catalog/sql.ts), in either dialect.
 *
 * Words:
 * - *local mirror*: without a shared catalog, each host mirrors its own
 *   sessions into the SQLite file beside its state (`catalog.sqlite`), as it
 *   always did; only that host reads it.
 * - *shared catalog*: the PostgreSQL the lab workers and the server share
 *   (RESTORELAB_QUEUE, else a postgres:// RESTORELAB_CATALOG). With one,
 *   every host records its sessions there, each row naming the worker that
 *   runs it (null for a session started where it runs), so the server lists
 *   and stops sessions that run on other hosts.
 *
 * Either way the JSON records under `<stateDir>/sessions` stay the source of
 * truth on the host that runs the VM: a row is a copy, written after the
 * record, and a failure to write it is a warning, never a lost state change.
 */
import { migrate, migrated, type CatalogDb, type MigrationStep } from '../catalog/catalog.js';
import { isPostgresTarget, redactUrl, type Catalog, type SqlRunner } from '../catalog/sql.js';
import type { RecoverySession } from './session.js';

/** Append-only (src/catalog/catalog.ts). Step 0's SQLite text is the one existing mirrors were made with: never edit it. */
export const SESSIONS_MIGRATIONS: MigrationStep[] = [
  {
    sqlite: `CREATE TABLE sessions (
     id TEXT PRIMARY KEY,
     vm TEXT NOT NULL,
     point TEXT NOT NULL,
     repo TEXT NOT NULL,
     driver TEXT NOT NULL,
     state TEXT NOT NULL,
     created TEXT NOT NULL,
     updated TEXT NOT NULL,
     heartbeat_seconds REAL,
     record TEXT NOT NULL
   );
   CREATE INDEX sessions_state ON sessions (state)`,
    postgres: `CREATE TABLE sessions (
     id TEXT PRIMARY KEY,
     vm TEXT NOT NULL,
     point TEXT NOT NULL,
     repo TEXT NOT NULL,
     driver TEXT NOT NULL,
     state TEXT NOT NULL,
     created TEXT NOT NULL,
     updated TEXT NOT NULL,
     heartbeat_seconds DOUBLE PRECISION,
     record TEXT NOT NULL
   );
   CREATE INDEX sessions_state ON sessions (state)`,
  },
  // The lab worker that runs the session; NULL for one that runs where it was started.
  `ALTER TABLE sessions ADD COLUMN worker TEXT;
   CREATE INDEX sessions_worker ON sessions (worker)`,
];

/** Internal: the shared catalog a recover hands to its session supervisor (in the environment, so no password shows in `ps`). */
export const SESSIONS_CATALOG_ENV = 'RESTORELAB_SESSIONS_CATALOG';

/**
 * The shared catalog sessions are recorded in, or undefined for the local
 * mirror: RESTORELAB_SESSIONS_CATALOG (a supervisor's), RESTORELAB_QUEUE, else
 * the catalog when it is on PostgreSQL. It is the workers' queue database, so
 * the server and every worker see the same rows.
 */
export function sharedSessionsUrl(env: NodeJS.ProcessEnv = process.env): string | undefined {
  for (const k of [SESSIONS_CATALOG_ENV, 'RESTORELAB_QUEUE', 'RESTORELAB_CATALOG']) {
    const v = env[k];
    if (v !== undefined && v !== '' && isPostgresTarget(v)) return v;
  }
  return undefined;
}

const COLUMNS = 'id, vm, point, repo, driver, state, created, updated, heartbeat_seconds, record, worker';

/**
 * The upsert. A row is only replaced by a newer record: the CLI's `starting`
 * write and the supervisor's `running` one come from two processes, and the
 * older must not land last.
 */
const UPSERT = `INSERT INTO sessions (${COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
  ON CONFLICT (id) DO UPDATE SET state = excluded.state, updated = excluded.updated,
    heartbeat_seconds = excluded.heartbeat_seconds, record = excluded.record, worker = excluded.worker
  WHERE sessions.updated <= excluded.updated`;

function params(s: RecoverySession): (string | number | null)[] {
  return [
    s.id,
    s.vm,
    s.point,
    s.repo,
    s.driver,
    s.state,
    s.createdAt,
    s.updatedAt,
    s.heartbeatSeconds ?? null,
    JSON.stringify(s),
    s.worker ?? null,
  ];
}

/** The local mirror (a better-sqlite3 handle, synchronous): one row per save. */
export function mirrorLocal(db: CatalogDb, s: RecoverySession): void {
  migrateLocal(db);
  db.prepare(UPSERT).run(...params(s));
}

export function migrateLocal(db: CatalogDb): void {
  migrate(db, 'sessions', SESSIONS_MIGRATIONS);
}

/** The sessions table on the seam (either dialect). */
export class SessionCatalog {
  constructor(private readonly db: SqlRunner) {}

  async record(s: RecoverySession): Promise<void> {
    await this.db.run(UPSERT, params(s));
  }

  async remove(id: string): Promise<void> {
    await this.db.run('DELETE FROM sessions WHERE id = ?', [id]);
  }

  /** Sessions as the catalog lists them: id, state, worker and timestamps, oldest first. */
  async rows(): Promise<{ id: string; state: string; created: string; worker: string | null }[]> {
    return this.db.all('SELECT id, state, created, worker FROM sessions ORDER BY created, id');
  }

  /** The records of sessions that run on lab workers (any worker, or one), oldest first. */
  async onWorkers(worker?: string): Promise<RecoverySession[]> {
    const rows =
      worker === undefined
        ? await this.db.all<{ record: string }>('SELECT record FROM sessions WHERE worker IS NOT NULL ORDER BY created, id')
        : await this.db.all<{ record: string }>('SELECT record FROM sessions WHERE worker = ? ORDER BY created, id', [worker]);
    return rows.map((r) => JSON.parse(r.record) as RecoverySession);
  }

  async get(id: string): Promise<RecoverySession | undefined> {
    const r = await this.db.get<{ record: string }>('SELECT record FROM sessions WHERE id = ?', [id]);
    return r ? (JSON.parse(r.record) as RecoverySession) : undefined;
  }
}

/** One connection pool per shared catalog and process, migrated once (its pool lets an idle process exit). */
const shared = new Map<string, Promise<Catalog>>();

export function sharedCatalog(url: string): Promise<Catalog> {
  let c = shared.get(url);
  if (!c) {
    c = (async () => {
      const { PostgresCatalog } = await import('../catalog/postgres.js');
      return migrated(await PostgresCatalog.connect(url), 'sessions', SESSIONS_MIGRATIONS);
    })();
    c.catch(() => shared.delete(url));
    shared.set(url, c);
  }
  return c;
}

export async function sharedSessions(url: string): Promise<SessionCatalog> {
  return new SessionCatalog(await sharedCatalog(url));
}

/** Writes to the shared catalog, in the order the records were saved; flushSessionCatalog waits for them. */
let pending: Promise<void> = Promise.resolve();

export function mirrorShared(url: string, s: RecoverySession): void {
  const copy = JSON.parse(JSON.stringify(s)) as RecoverySession;
  pending = pending.then(async () => {
    try {
      await (await sharedSessions(url)).record(copy);
    } catch (e) {
      process.emitWarning(`session ${copy.id} not recorded in the shared catalog ${redactUrl(url)}: ${(e as Error).message}`);
    }
  });
}

export function removeShared(url: string, id: string): void {
  pending = pending.then(async () => {
    try {
      await (await sharedSessions(url)).remove(id);
    } catch (e) {
      process.emitWarning(`session ${id} not removed from the shared catalog ${redactUrl(url)}: ${(e as Error).message}`);
    }
  });
}

/** Resolves once every row written so far reached the shared catalog (before a process exits). */
export async function flushSessionCatalog(): Promise<void> {
  for (let p = pending; ; p = pending) {
    await p;
    if (p === pending) return;
  }
}

/**
 * Where sessions are persisted: one JSON file per session under
 * `<stateDir>/sessions/<id>.json`, written crash-safely (temp file, fsync,
 * rename, fsync of the directory), so a reader never sees half a record and
 * a crash keeps either the old or the new state.
 *
 * Each save is mirrored into the `sessions` table (src/session/catalog.ts):
 * of the shared PostgreSQL catalog when one is configured (so the server
 * lists the sessions of every lab worker), else of the host's own SQLite
 * catalog. The JSON file stays the source of truth: the supervisor must
 * record a state change even when the catalog is locked, unreachable or
 * damaged (it is rebuilt from the files by `syncCatalog`).
 */
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { basename, join } from 'node:path';
import { writeFileAtomicSync } from '../host/atomic-file.js';
import { badInput, notFound } from '../errors.js';
import { openCatalog, type CatalogDb } from '../catalog/catalog.js';
import type { RecoverySession } from './session.js';
import {
  flushSessionCatalog,
  migrateLocal,
  mirrorLocal,
  mirrorShared,
  removeShared,
  sharedSessions,
  sharedSessionsUrl,
} from './catalog.js';

/**
 * What a session id may look like (recover makes 8 hex digits): a plain name,
 * so `<dir>/<id>.json` never names a file outside the sessions directory. A
 * record read from elsewhere would have its pids signalled and its resources
 * removed by `stop`.
 */
const SESSION_ID = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;

export function checkSessionId(id: string): void {
  if (!SESSION_ID.test(id)) {
    throw badInput(
      'BAD_SESSION_ID',
      `"${id}" is not a session id (letters, digits, '-' and '_')`,
      'restorelab sessions lists the sessions',
    );
  }
}

export class SessionStore {
  readonly dir: string;
  readonly catalogPath: string;

  /** The shared catalog's URL, when sessions are recorded there rather than in the local mirror. */
  readonly shared: string | undefined;

  constructor(
    readonly stateDir: string,
    catalogPath?: string,
    shared: string | undefined = sharedSessionsUrl(),
  ) {
    this.dir = join(stateDir, 'sessions');
    this.catalogPath = catalogPath ?? join(stateDir, 'catalog.sqlite');
    this.shared = shared;
  }

  private withCatalog(f: (db: CatalogDb) => void): void {
    let db: CatalogDb | undefined;
    try {
      db = openCatalog(this.catalogPath);
      migrateLocal(db);
      f(db);
    } catch (e) {
      process.emitWarning(`session catalog ${this.catalogPath} not updated: ${(e as Error).message}`);
    } finally {
      db?.close();
    }
  }

  private mirror(s: RecoverySession): void {
    if (this.shared !== undefined) mirrorShared(this.shared, s);
    else this.withCatalog((db) => mirrorLocal(db, s));
  }

  /** Sessions as the catalog this store mirrors into lists them (the shared one, or the local SQLite file). */
  async catalogRows(): Promise<{ id: string; state: string; created: string; worker: string | null }[]> {
    if (this.shared !== undefined) {
      await flushSessionCatalog();
      return (await sharedSessions(this.shared)).rows();
    }
    let rows: { id: string; state: string; created: string; worker: string | null }[] = [];
    this.withCatalog((db) => {
      rows = db.prepare('SELECT id, state, created, worker FROM sessions ORDER BY created').all() as typeof rows;
    });
    return rows;
  }

  /** Rebuilds the catalog's rows from the JSON records. */
  syncCatalog(): void {
    for (const s of this.list()) this.mirror(s);
  }

  path(id: string): string {
    checkSessionId(id);
    return join(this.dir, `${id}.json`);
  }

  /** A per-session scratch directory (FUSE mount point, supervisor log, control socket). */
  workDir(id: string): string {
    checkSessionId(id);
    return join(this.dir, id);
  }

  save(s: RecoverySession): void {
    mkdirSync(this.dir, { recursive: true });
    s.updatedAt = new Date().toISOString();
    writeFileAtomicSync(this.dir, basename(this.path(s.id)), JSON.stringify(s, null, 2));
    this.mirror(s);
  }

  find(id: string): RecoverySession | undefined {
    try {
      return JSON.parse(readFileSync(this.path(id), 'utf8')) as RecoverySession;
    } catch {
      return undefined;
    }
  }

  get(id: string): RecoverySession {
    checkSessionId(id);
    const s = this.find(id);
    if (!s) throw notFound('SESSION_NOT_FOUND', `no recovery session ${id}`, 'restorelab sessions lists the sessions');
    return s;
  }

  list(): RecoverySession[] {
    if (!existsSync(this.dir)) return [];
    return readdirSync(this.dir)
      .filter((f) => f.endsWith('.json'))
      .map((f) => this.find(f.slice(0, -5)))
      .filter((s): s is RecoverySession => s !== undefined)
      .sort((a, b) => a.createdAt.localeCompare(b.createdAt));
  }

  /** Read-modify-write of one record (only the supervisor and `stop` of a dead supervisor write). */
  update(id: string, change: (s: RecoverySession) => void): RecoverySession {
    const s = this.get(id);
    change(s);
    this.save(s);
    return s;
  }

  remove(id: string): void {
    rmSync(this.path(id), { force: true });
    if (this.shared !== undefined) removeShared(this.shared, id);
    else this.withCatalog((db) => db.prepare('DELETE FROM sessions WHERE id = ?').run(id));
    rmSync(this.workDir(id), { recursive: true, force: true });
  }
}

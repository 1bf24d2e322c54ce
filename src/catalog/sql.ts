/**
 * The catalog seam: one small asynchronous SQL interface that the catalog's
 * areas use, with SQLite (one host, the default) and PostgreSQL (a catalog
 * shared by several hosts) behind it.
 *
 * Words:
 * - *dialect*: which database answers, `sqlite` or `postgres`. SQL that is
 *   the same in both is written once; where it differs (upserts, JSON, BLOB
 *   versus BYTEA, rowid) an area branches on `dialect`.
 * - *placeholder*: SQL is always written with `?`; the PostgreSQL adapter
 *   rewrites them to `$1..$n` (never inside string literals, quoted names or
 *   comments), so an area's SQL is one string for both.
 * - *transaction*: `transaction(fn)` runs `fn` with a runner bound to one
 *   connection between BEGIN and COMMIT; a throw rolls everything back.
 */
import type Database from 'better-sqlite3';

/** What a statement's `?` may be bound to. Booleans are stored as 0/1 by the caller (SQLite has no boolean). */
export type SqlParam = string | number | bigint | null | Buffer;
export type Dialect = 'sqlite' | 'postgres';

/** The statements of the seam; a transaction's runner is one of these too. */
export interface SqlRunner {
  readonly dialect: Dialect;
  /** Every row the query returns. */
  all<T>(sql: string, params?: readonly SqlParam[]): Promise<T[]>;
  /** The first row, or undefined when there is none. */
  get<T>(sql: string, params?: readonly SqlParam[]): Promise<T | undefined>;
  /** A statement that returns no rows; how many rows it changed. */
  run(sql: string, params?: readonly SqlParam[]): Promise<{ changes: number }>;
  /** One or more statements without parameters (migrations). */
  exec(sql: string): Promise<void>;
}

/** An open catalog database. */
export interface Catalog extends SqlRunner {
  /** Where it is, fit to print: a file path, or a postgres URL without its password. */
  readonly target: string;
  /**
   * Runs `fn` in one transaction: COMMIT when it resolves, ROLLBACK when it
   * throws (the error is rethrown). `fn` should await only the runner it is
   * given, so the transaction stays short.
   */
  transaction<T>(fn: (tx: SqlRunner) => Promise<T>): Promise<T>;
  close(): Promise<void>;
}

/** Whether a catalog target names a PostgreSQL server rather than a SQLite file. */
export function isPostgresTarget(target: string): boolean {
  return /^postgres(ql)?:\/\//i.test(target);
}

/** The text with the password of every URL in it replaced by `***`, for messages and logs (a catalog URL may carry one). */
export function redactUrl(text: string): string {
  return text.replace(/([a-z][a-z0-9+.-]*:\/\/[^/@:\s]*):[^/@\s]*@/gi, '$1:***@');
}

/**
 * Rewrites `?` placeholders to PostgreSQL's `$1..$n`. A `?` inside a
 * '…' string literal (with '' escapes, and E'…' with backslash escapes), a
 * "…" quoted name, a $tag$…$tag$ body or a comment is left alone.
 */
export function toPostgresPlaceholders(sql: string): string {
  let out = '';
  let n = 0;
  let i = 0;
  while (i < sql.length) {
    const c = sql[i] as string;
    const next = sql[i + 1];
    if (c === "'" || c === '"') {
      // Backslash escapes only in E'…' literals (standard_conforming_strings is on by default).
      const backslash = c === "'" && i > 0 && /[eE]/.test(sql[i - 1] as string) && !/[\w]/.test(sql[i - 2] ?? ' ');
      let j = i + 1;
      while (j < sql.length) {
        if (backslash && sql[j] === '\\') j += 2;
        else if (sql[j] === c && sql[j + 1] === c) j += 2;
        else if (sql[j] === c) break;
        else j++;
      }
      out += sql.slice(i, j + 1);
      i = j + 1;
    } else if (c === '-' && next === '-') {
      const end = sql.indexOf('\n', i);
      const j = end === -1 ? sql.length : end;
      out += sql.slice(i, j);
      i = j;
    } else if (c === '/' && next === '*') {
      const end = sql.indexOf('*/', i + 2);
      const j = end === -1 ? sql.length : end + 2;
      out += sql.slice(i, j);
      i = j;
    } else if (c === '$' && !/[\w$]/.test(sql[i - 1] ?? ' ')) {
      const tag = /^\$([A-Za-z_]\w*)?\$/.exec(sql.slice(i));
      if (tag) {
        const end = sql.indexOf(tag[0], i + tag[0].length);
        const j = end === -1 ? sql.length : end + tag[0].length;
        out += sql.slice(i, j);
        i = j;
      } else {
        out += c;
        i++;
      }
    } else if (c === '?') {
      out += `$${++n}`;
      i++;
    } else {
      out += c;
      i++;
    }
  }
  return out;
}

/**
 * The SQLite adapter around a better-sqlite3 handle. better-sqlite3 is
 * synchronous, so each call completes before its promise is returned; the
 * one thing to guard is a transaction that spans awaits: while it is open,
 * statements from outside it wait, so they never land inside it by accident.
 * The guard is per database file, not per handle: a second handle of this
 * process on the same file would otherwise block the thread in SQLite's busy
 * wait on the write lock the first one holds, which only this thread can release.
 */
export class SqliteCatalog implements Catalog {
  readonly dialect = 'sqlite' as const;

  constructor(
    /** The better-sqlite3 handle (tests and the sessions' host-local mirror read it directly). */
    readonly db: Database.Database,
    readonly target: string = db.name,
  ) {}

  private get key(): unknown {
    return this.db.memory ? this.db : this.db.name;
  }

  /**
   * The open transaction to wait for, if any. Callers loop on it and then act
   * with no await in between, so nothing starts a transaction in the gap.
   */
  private busy(): Promise<void> | undefined {
    return openTransactions.get(this.key);
  }

  async all<T>(sql: string, params: readonly SqlParam[] = []): Promise<T[]> {
    for (let open = this.busy(); open; open = this.busy()) await open;
    return sqliteAll<T>(this.db, sql, params);
  }
  async get<T>(sql: string, params: readonly SqlParam[] = []): Promise<T | undefined> {
    for (let open = this.busy(); open; open = this.busy()) await open;
    return prepared(this.db, sql).get(...params) as T | undefined;
  }
  async run(sql: string, params: readonly SqlParam[] = []): Promise<{ changes: number }> {
    for (let open = this.busy(); open; open = this.busy()) await open;
    return { changes: prepared(this.db, sql).run(...params).changes };
  }
  async exec(sql: string): Promise<void> {
    for (let open = this.busy(); open; open = this.busy()) await open;
    this.db.exec(sql);
  }

  async transaction<T>(fn: (tx: SqlRunner) => Promise<T>): Promise<T> {
    for (let open = this.busy(); open; open = this.busy()) await open;
    let done!: () => void;
    const key = this.key;
    openTransactions.set(key, new Promise((r) => (done = r)));
    const db = this.db;
    const tx: SqlRunner = {
      dialect: 'sqlite',
      all: async <R>(sql: string, params: readonly SqlParam[] = []) => sqliteAll<R>(db, sql, params),
      get: async <R>(sql: string, params: readonly SqlParam[] = []) => prepared(db, sql).get(...params) as R | undefined,
      run: async (sql: string, params: readonly SqlParam[] = []) => ({ changes: prepared(db, sql).run(...params).changes }),
      exec: async (sql: string) => void db.exec(sql),
    };
    try {
      // IMMEDIATE takes the write lock up front: two processes migrating or
      // reindexing at once queue on busy_timeout instead of failing to upgrade a read lock.
      db.exec('BEGIN IMMEDIATE');
      try {
        const v = await fn(tx);
        db.exec('COMMIT');
        return v;
      } catch (err) {
        if (db.inTransaction) db.exec('ROLLBACK');
        throw err;
      }
    } finally {
      openTransactions.delete(key);
      done();
    }
  }

  async close(): Promise<void> {
    for (let open = this.busy(); open; open = this.busy()) await open;
    this.db.close();
  }
}

/** The transaction open on each SQLite database of this process (by file, or by handle for :memory:). */
const openTransactions = new Map<unknown, Promise<void>>();

function sqliteAll<T>(db: Database.Database, sql: string, params: readonly SqlParam[]): T[] {
  return prepared(db, sql).all(...params) as T[];
}

/**
 * Statements kept prepared per handle, by SQL text. Preparing parses and
 * plans the statement each time: a scan's per-file queries spent as long
 * preparing as running (issue 17). Bounded, least recently used out; SQLite
 * re-prepares a kept statement itself when a migration changed the schema.
 */
const STATEMENTS_KEPT = 128;
const statements = new WeakMap<Database.Database, Map<string, Database.Statement>>();

function prepared(db: Database.Database, sql: string): Database.Statement {
  let kept = statements.get(db);
  if (!kept) statements.set(db, (kept = new Map()));
  let st = kept.get(sql);
  if (st) {
    kept.delete(sql);
  } else {
    st = db.prepare(sql);
    if (kept.size >= STATEMENTS_KEPT) kept.delete(kept.keys().next().value as string);
  }
  kept.set(sql, st);
  return st;
}

/** One adapter per handle, so every user of a shared handle shares its transaction guard. */
const adapters = new WeakMap<Database.Database, SqliteCatalog>();

/** The seam over a better-sqlite3 handle that is already open (the API server's shared one, a job history's). */
export function sqliteCatalog(db: Database.Database): SqliteCatalog {
  let a = adapters.get(db);
  if (!a) {
    a = new SqliteCatalog(db);
    adapters.set(db, a);
  }
  return a;
}

/**
 * `INSERT OR REPLACE` in either dialect: SQLite's own form, and on
 * PostgreSQL `INSERT … ON CONFLICT (key) DO UPDATE` setting every other column.
 * `rows` > 1: that many rows in one statement (their parameters one row
 * after the other); PostgreSQL refuses one statement that touches a key twice.
 */
export function upsertSql(dialect: Dialect, table: string, columns: readonly string[], key: readonly string[], rows = 1): string {
  const row = `(${columns.map(() => '?').join(', ')})`;
  const values = Array.from({ length: rows }, () => row).join(', ');
  if (dialect === 'sqlite') return `INSERT OR REPLACE INTO ${table} (${columns.join(', ')}) VALUES ${values}`;
  const set = columns.filter((c) => !key.includes(c)).map((c) => `${c} = EXCLUDED.${c}`);
  return (
    `INSERT INTO ${table} (${columns.join(', ')}) VALUES ${values} ON CONFLICT (${key.join(', ')}) ` +
    (set.length === 0 ? 'DO NOTHING' : `DO UPDATE SET ${set.join(', ')}`)
  );
}

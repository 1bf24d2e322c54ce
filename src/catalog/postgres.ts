/**
 * The PostgreSQL adapter of the catalog seam (src/catalog/sql.ts): a catalog
 * several hosts share, through node-postgres with a bounded pool.
 *
 * Words:
 * - *pool*: at most POOL_MAX connections per process; a statement waits for
 *   a free one. Every connection runs with a statement timeout, so a stuck
 *   lock or a runaway query fails instead of hanging a backup.
 * - *unreachable*: the server refused us, did not answer, or rejected the
 *   login; CATALOG_UNREACHABLE names the host (never the password).
 */
import type { Pool, PoolClient, QueryResultRow } from 'pg';
import { RestorelabError } from '../errors.js';
import { redactUrl, toPostgresPlaceholders, type Catalog, type SqlParam, type SqlRunner } from './sql.js';

/** Connections per process: the catalog's statements are short, and the server's max_connections is shared by every host. */
export const POOL_MAX = 4;
/** A statement running longer than this fails (milliseconds). */
export const STATEMENT_TIMEOUT_MS = 30_000;
/** How long to wait for a connection to the server (milliseconds). */
export const CONNECT_TIMEOUT_MS = 5_000;

const PG_INT8 = 20;

/** Connection failures that mean "the server is not there or will not let us in", as opposed to a bad statement. */
const UNREACHABLE_CODES = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ECONNRESET']);
/** SQLSTATE classes 08 (connection exception), 28 (invalid authorization), 3D000 (no such database), 57P03 (starting up). */
const UNREACHABLE_SQLSTATE = /^(08|28)|^3D000$|^57P03$/;

export class PostgresCatalog implements Catalog {
  readonly dialect = 'postgres' as const;
  readonly target: string;

  private constructor(
    private readonly pool: Pool,
    url: string,
  ) {
    this.target = redactUrl(url);
  }

  /** Connects (one round trip, so a wrong URL fails here, not at the first statement). */
  static async connect(url: string): Promise<PostgresCatalog> {
    const pg = (await import('pg')).default;
    const pool = new pg.Pool({
      connectionString: url,
      max: POOL_MAX,
      statement_timeout: STATEMENT_TIMEOUT_MS,
      connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
      idleTimeoutMillis: 10_000,
      // Idle connections do not keep a CLI process alive.
      allowExitOnIdle: true,
      application_name: 'restorelab',
      // COUNT(*) and BIGINT columns come back as numbers, as SQLite gives them (catalog values stay below 2^53).
      types: {
        getTypeParser: ((oid: number, format?: string) =>
          oid === PG_INT8 ? (v: string) => Number(v) : pg.types.getTypeParser(oid, format as 'text')) as typeof pg.types.getTypeParser,
      },
    });
    // An idle connection the server drops must not crash the process; the next query reconnects.
    pool.on('error', () => undefined);
    const cat = new PostgresCatalog(pool, url);
    try {
      await pool.query('SELECT 1');
    } catch (err) {
      await pool.end().catch(() => undefined);
      throw cat.failure(err);
    }
    return cat;
  }

  /** A connection-level failure as CATALOG_UNREACHABLE; anything else unchanged. */
  private failure(err: unknown): unknown {
    const e = err as { code?: string; message?: string };
    const unreachable =
      (e.code !== undefined && (UNREACHABLE_CODES.has(e.code) || UNREACHABLE_SQLSTATE.test(e.code))) ||
      /timeout exceeded when trying to connect|Connection terminated/i.test(e.message ?? '');
    if (!unreachable) return err;
    const u = safeUrl(this.target);
    return new RestorelabError(
      'CATALOG_UNREACHABLE',
      `cannot reach the PostgreSQL catalog ${this.target}: ${redactUrl(e.message ?? String(err))}`,
      {
        hint:
          `check that PostgreSQL runs and listens on ${u?.host || 'the host'} (scripts/services status), that the role and password ` +
          `in RESTORELAB_CATALOG (or the config's "catalog") are right, and that database ${u?.pathname.slice(1) || '(default)'} exists`,
      },
    );
  }

  private runner(q: (text: string, values: readonly SqlParam[]) => Promise<{ rows: unknown[]; rowCount: number | null }>): SqlRunner {
    const call = async (sql: string, params: readonly SqlParam[]): Promise<{ rows: unknown[]; rowCount: number | null }> => {
      try {
        return await q(toPostgresPlaceholders(sql), params);
      } catch (err) {
        throw this.failure(err);
      }
    };
    return {
      dialect: 'postgres',
      all: async <T>(sql: string, params: readonly SqlParam[] = []) => (await call(sql, params)).rows as T[],
      get: async <T>(sql: string, params: readonly SqlParam[] = []) => (await call(sql, params)).rows[0] as T | undefined,
      run: async (sql: string, params: readonly SqlParam[] = []) => ({ changes: (await call(sql, params)).rowCount ?? 0 }),
      // No parameters: the simple protocol, which runs several statements in one string (a migration step).
      exec: async (sql: string) => void (await call(sql, [])),
    };
  }

  private readonly direct = this.runner((text, values) =>
    values.length === 0 ? this.pool.query<QueryResultRow>(text) : this.pool.query<QueryResultRow>(text, values as SqlParam[]),
  );

  all<T>(sql: string, params?: readonly SqlParam[]): Promise<T[]> {
    return this.direct.all<T>(sql, params);
  }
  get<T>(sql: string, params?: readonly SqlParam[]): Promise<T | undefined> {
    return this.direct.get<T>(sql, params);
  }
  run(sql: string, params?: readonly SqlParam[]): Promise<{ changes: number }> {
    return this.direct.run(sql, params);
  }
  exec(sql: string): Promise<void> {
    return this.direct.exec(sql);
  }

  async transaction<T>(fn: (tx: SqlRunner) => Promise<T>): Promise<T> {
    let client: PoolClient;
    try {
      client = await this.pool.connect();
    } catch (err) {
      throw this.failure(err);
    }
    const tx = this.runner((text, values) =>
      values.length === 0 ? client.query<QueryResultRow>(text) : client.query<QueryResultRow>(text, values as SqlParam[]),
    );
    let broken: Error | undefined;
    try {
      await tx.exec('BEGIN');
      const v = await fn(tx);
      await tx.exec('COMMIT');
      return v;
    } catch (err) {
      try {
        await client.query('ROLLBACK');
      } catch (e) {
        // The connection is gone: give it back destroyed, not to the pool.
        broken = e as Error;
      }
      throw err;
    } finally {
      client.release(broken);
    }
  }

  async close(): Promise<void> {
    await this.pool.end();
  }
}

function safeUrl(target: string): URL | undefined {
  try {
    return new URL(target);
  } catch {
    return undefined;
  }
}

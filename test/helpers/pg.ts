/**
 * PostgreSQL for tests: the server `scripts/services up --json` starts
 * (test/helpers/services.ts; idempotent: when the services pool's setup
 * already started it, this only reads its URL back), and a fresh database
 * per test so files and tests never see each other's tables. When it cannot
 * be started, the test fails saying which component is missing.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { services } from './services.js';

let cached: Promise<string> | undefined;

/** The URL of the PostgreSQL server (its maintenance database, as the services script prints it). */
export function postgresUrl(): Promise<string> {
  cached ??= (async () => {
    let url: string | undefined;
    try {
      url = (await services()).postgres?.url;
    } catch (err) {
      throw new Error(`PostgreSQL is missing: ${(err as Error).message}`, { cause: err });
    }
    if (!url) throw new Error('PostgreSQL is missing: the services report has no postgres.url');
    return url;
  })();
  return cached;
}

/** `url` with another database name. */
export function withDatabase(url: string, db: string): string {
  const u = new URL(url);
  u.pathname = `/${db}`;
  return u.toString();
}

/**
 * A new, empty database `test_<random>` (the services role may create
 * databases); its URL. Dropped when `t` ends, even with connections left open.
 */
export async function freshDatabase(t: { teardown(fn: () => Promise<void>): void }): Promise<string> {
  const url = await postgresUrl();
  const name = `test_${randomBytes(6).toString('hex')}`;
  await admin(url, `CREATE DATABASE ${name}`);
  t.teardown(() => admin(url, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`));
  return withDatabase(url, name);
}

async function admin(url: string, sql: string): Promise<void> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    await c.query(sql);
  } finally {
    await c.end();
  }
}

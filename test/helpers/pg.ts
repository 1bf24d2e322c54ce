/**
 * PostgreSQL for catalog tests: the server `scripts/services up --json`
 * starts (idempotent: when the services pool's setup already started it, this
 * only reads its URL back), and a fresh database per test so files and tests
 * never see each other's tables.
 *
 * Until scripts/services exists on a branch, the URL of a running instance is
 * read from the file RESTORELAB_SERVICES_JSON names (default
 * /work/wt/services.json, where the development services helper writes it).
 * Neither there: the test fails saying which component is missing.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { promisify } from 'node:util';
import pg from 'pg';
import { projectPath } from '../../src/paths.js';

const SERVICES_SCRIPT = projectPath('scripts', 'services');
const SERVICES_JSON = process.env.RESTORELAB_SERVICES_JSON ?? '/work/wt/services.json';

let cached: Promise<string> | undefined;

/** The URL of the PostgreSQL server (its maintenance database, as the services script prints it). */
export function postgresUrl(): Promise<string> {
  cached ??= (async () => {
    let out: string;
    if (existsSync(SERVICES_SCRIPT)) {
      try {
        ({ stdout: out } = await promisify(execFile)(SERVICES_SCRIPT, ['up', '--json'], { encoding: 'utf8', timeout: 600_000 }));
      } catch (e) {
        const err = e as { stderr?: string; message: string };
        throw new Error(`PostgreSQL is missing: scripts/services up failed: ${(err.stderr ?? '').trim() || err.message}`, { cause: e });
      }
    } else if (existsSync(SERVICES_JSON)) {
      out = readFileSync(SERVICES_JSON, 'utf8');
    } else {
      throw new Error(`PostgreSQL is missing: no scripts/services to start it and no ${SERVICES_JSON} naming a running one`);
    }
    const url = (JSON.parse(out) as { postgres?: { url?: string } }).postgres?.url;
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

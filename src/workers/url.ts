import { badInput } from '../errors.js';

/** A connection URL as it may appear in messages and logs: the password never does. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return url.replace(/\/\/([^:@/]*):[^@/]*@/, '//$1:***@');
  }
}

export function isPostgresUrl(s: string | undefined): s is string {
  return s !== undefined && /^postgres(ql)?:\/\//.test(s);
}

/**
 * The PostgreSQL the workers share: the catalog's (RESTORELAB_CATALOG, or a
 * postgres:// `catalog` in the config). Workers need it: a queue and a
 * registry in a SQLite file on one host would be no queue at all.
 */
export function workersUrl(catalog: string, env: NodeJS.ProcessEnv = process.env): string {
  const url = isPostgresUrl(env['RESTORELAB_CATALOG']) ? env['RESTORELAB_CATALOG'] : catalog;
  if (!isPostgresUrl(url)) {
    throw badInput(
      'WORKERS_NEED_POSTGRES',
      `lab workers need the shared PostgreSQL catalog, and the catalog is ${url}`,
      'start it with scripts/services up, then export RESTORELAB_CATALOG=postgres://… on the server and on every worker',
    );
  }
  return url;
}

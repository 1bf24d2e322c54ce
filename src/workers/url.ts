import { badInput } from '../errors.js';
import { isPostgresTarget, redactUrl } from '../catalog/sql.js';

/**
 * The PostgreSQL the lab queue and the worker registry live in:
 * RESTORELAB_QUEUE when set, else the catalog when it is on PostgreSQL
 * (RESTORELAB_CATALOG or the config's `catalog`). A queue in a SQLite file
 * on one host would be no queue at all, so anything else is refused. The
 * separate knob lets a server whose catalog is still a SQLite file (the
 * SureBackup history is SQLite-only so far) hand its runs to workers.
 */
export function workersUrl(catalog: string, env: NodeJS.ProcessEnv = process.env): string {
  const queue = env['RESTORELAB_QUEUE'];
  const url = queue !== undefined && queue !== '' ? queue : catalog;
  if (!isPostgresTarget(url)) {
    throw badInput(
      'WORKERS_NEED_POSTGRES',
      `lab workers need a PostgreSQL queue, and ${queue ? 'RESTORELAB_QUEUE' : 'the catalog'} is ${redactUrl(url)}`,
      'start one with scripts/services up, then export RESTORELAB_QUEUE=postgres://… (or a postgres:// RESTORELAB_CATALOG) on the server and on every worker',
    );
  }
  return url;
}

/**
 * Operator (and test) knobs for the queue's timing (docs/workers.md). The
 * lease is set by whoever submits a task (the server), so a shorter one makes
 * a dead worker's task come back sooner, but must outlast the longest task.
 */
export function queueTuning(env: NodeJS.ProcessEnv = process.env): {
  maintenanceSeconds?: number;
  pollSeconds?: number;
  leaseSeconds?: number;
} {
  const num = (k: string): number | undefined => {
    const v = env[k];
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isFinite(n) || n < 1) throw badInput('BAD_FLAGS', `${k} must be a number of seconds, at least 1, not "${v}"`);
    return n;
  };
  const m = num('RESTORELAB_QUEUE_MAINTENANCE_SECONDS');
  const p = num('RESTORELAB_QUEUE_POLL_SECONDS');
  const l = num('RESTORELAB_TASK_LEASE_SECONDS');
  return {
    ...(m !== undefined ? { maintenanceSeconds: m } : {}),
    ...(p !== undefined ? { pollSeconds: p } : {}),
    ...(l !== undefined ? { leaseSeconds: l } : {}),
  };
}

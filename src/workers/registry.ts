/**
 * Lab workers as the shared catalog knows them: one row per worker name,
 * refreshed by its heartbeat. A worker whose last heartbeat is older than
 * STALE_AFTER_MS is shown as gone (`alive: false`); its tasks come back to
 * the queue when their leases expire (queue.ts), not because of this table.
 */
import { hostname } from 'node:os';
import type { SqlRunner } from './queue.js';

/** Heartbeat period of a running worker. */
export const HEARTBEAT_MS = 5_000;
/** Three missed heartbeats: the worker is gone. */
export const STALE_AFTER_MS = 3 * HEARTBEAT_MS;

export interface WorkerInfo {
  name: string;
  host: string;
  pid: number;
  slots: number;
  running: number;
  /** Its memory budget for VMs (MiB): `worker --memory`, else the config's limits.memoryBudgetMiB. */
  memoryMiB: number;
  /** VM memory of its running tasks and recovery sessions (MiB). */
  memoryUsedMiB: number;
  /** Lab networks this host can mirror (bridges it may attach, or "isolated" for namespace-only labs). */
  networks: string[];
  startedAt: string;
  lastSeen: string;
  alive: boolean;
  /** Ids of the tasks it runs now. */
  tasks: string[];
}

// One statement list, run under a transaction-scoped advisory lock: two workers starting at once must not race on CREATE TABLE.
const SCHEMA = `
BEGIN;
SELECT pg_advisory_xact_lock(hashtext('restorelab_workers'));
CREATE TABLE IF NOT EXISTS restorelab_workers (
  name TEXT PRIMARY KEY,
  host TEXT NOT NULL,
  pid INTEGER NOT NULL,
  slots INTEGER NOT NULL,
  running INTEGER NOT NULL DEFAULT 0,
  memory_mib INTEGER NOT NULL,
  networks JSONB NOT NULL,
  tasks JSONB NOT NULL DEFAULT '[]',
  started_at TIMESTAMPTZ NOT NULL,
  last_seen TIMESTAMPTZ NOT NULL
);
ALTER TABLE restorelab_workers ADD COLUMN IF NOT EXISTS memory_used_mib INTEGER NOT NULL DEFAULT 0;
COMMIT;`;

export class WorkerRegistry {
  constructor(private readonly sql: SqlRunner) {}

  async ensureSchema(): Promise<void> {
    await this.sql(SCHEMA);
  }

  async register(w: { name: string; slots: number; memoryMiB: number; networks: string[] }): Promise<void> {
    await this.sql(
      `INSERT INTO restorelab_workers (name, host, pid, slots, running, memory_mib, networks, tasks, started_at, last_seen)
       VALUES ($1, $2, $3, $4, 0, $5, $6, '[]', now(), now())
       ON CONFLICT (name) DO UPDATE SET host = $2, pid = $3, slots = $4, running = 0, memory_mib = $5, networks = $6, tasks = '[]',
         started_at = now(), last_seen = now()`,
      [w.name, hostname(), process.pid, w.slots, w.memoryMiB, JSON.stringify(w.networks)],
    );
  }

  async heartbeat(name: string, tasks: string[], memoryUsedMiB = 0): Promise<void> {
    await this.sql('UPDATE restorelab_workers SET last_seen = now(), running = $2, tasks = $3, memory_used_mib = $4 WHERE name = $1', [
      name,
      tasks.length,
      JSON.stringify(tasks),
      memoryUsedMiB,
    ]);
  }

  async unregister(name: string): Promise<void> {
    await this.sql('DELETE FROM restorelab_workers WHERE name = $1', [name]);
  }

  async list(): Promise<WorkerInfo[]> {
    const { rows } = await this.sql(
      `SELECT name, host, pid, slots, running, memory_mib, memory_used_mib, networks, tasks, started_at, last_seen,
              (now() - last_seen) < make_interval(secs => $1) AS alive
       FROM restorelab_workers ORDER BY name`,
      [STALE_AFTER_MS / 1000],
    );
    return rows.map((r) => {
      const alive = r['alive'] === true;
      return {
        name: String(r['name']),
        host: String(r['host']),
        pid: Number(r['pid']),
        slots: Number(r['slots']),
        running: alive ? Number(r['running']) : 0,
        memoryMiB: Number(r['memory_mib']),
        memoryUsedMiB: alive ? Number(r['memory_used_mib']) : 0,
        networks: r['networks'] as string[],
        startedAt: (r['started_at'] as Date).toISOString(),
        lastSeen: (r['last_seen'] as Date).toISOString(),
        alive,
        tasks: alive ? (r['tasks'] as string[]) : [],
      };
    });
  }
}

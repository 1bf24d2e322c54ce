/**
 * What the run tables of the job areas share (SureBackup runs in
 * `surebackup_runs`, backup job runs in `backup_job_runs`): a run id that
 * sorts by start time, and the newest runs of a job. Each area keeps its
 * own table and migrations; these helpers take the table's name, which is
 * always one of the constants below, never input.
 */
import { randomUUID } from 'node:crypto';
import type { CatalogDb } from './catalog.js';

export type JobRunTable = 'surebackup_runs' | 'backup_job_runs';

/** `20261202T041350Z-1a2b3c4d`: the start time (so ids sort by it) and a random suffix. */
export function newRunId(at: Date): string {
  return `${at
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d+Z$/, 'Z')}-${randomUUID().slice(0, 8)}`;
}

/** Raw rows of the newest runs, of one job or all; newest first. */
export function newestRunRows<Row>(db: CatalogDb, table: JobRunTable, o: { job?: string | undefined; limit?: number | undefined }): Row[] {
  return (
    o.job === undefined
      ? db.prepare(`SELECT * FROM ${table} ORDER BY started_at DESC, rowid DESC LIMIT ?`).all(o.limit ?? 20)
      : db.prepare(`SELECT * FROM ${table} WHERE job = ? ORDER BY started_at DESC, rowid DESC LIMIT ?`).all(o.job, o.limit ?? 20)
  ) as Row[];
}

/** The raw row of one run, by its id. */
export function runRow<Row>(db: CatalogDb, table: JobRunTable, id: string): Row | undefined {
  return db.prepare(`SELECT * FROM ${table} WHERE id = ?`).get(id) as Row | undefined;
}

/** Ends a run: its status, the time it ended, and why (null when there is nothing to say). */
export function endRun(db: CatalogDb, table: JobRunTable, id: string, status: string, detail: string | null): void {
  db.prepare(`UPDATE ${table} SET status = ?, ended_at = ?, detail = ? WHERE id = ?`).run(status, new Date().toISOString(), detail, id);
}

/**
 * When the job last started a real run (not a skipped or missed trigger),
 * or, with `missed`, when its last `missed` entry was recorded.
 */
export function lastStartedAt(db: CatalogDb, table: JobRunTable, job: string, which: 'run' | 'missed' = 'run'): Date | undefined {
  const where = which === 'run' ? `status NOT IN ('skipped-overlap', 'missed')` : `status = 'missed'`;
  const r = db.prepare(`SELECT MAX(started_at) AS at FROM ${table} WHERE job = ? AND ${where}`).get(job) as { at: string | null };
  return r.at === null ? undefined : new Date(r.at);
}

/** A new run row, `running` from `at`; its id. */
export function insertRun(db: CatalogDb, table: JobRunTable, job: string, trigger: string, at: Date): string {
  const id = newRunId(at);
  db.prepare(`INSERT INTO ${table} (id, job, trigger, status, started_at) VALUES (?, ?, ?, ?, ?)`).run(
    id,
    job,
    trigger,
    'running',
    at.toISOString(),
  );
  return id;
}

/** A trigger that ran nothing (the job was still running, or the server was down when it was due), ended now; its id. */
export function insertNonRun(
  db: CatalogDb,
  table: JobRunTable,
  job: string,
  trigger: string,
  status: 'skipped-overlap' | 'missed',
  detail: string,
  dueAt?: Date,
): string {
  const at = new Date();
  const id = insertRun(db, table, job, trigger, at);
  db.prepare(`UPDATE ${table} SET status = ?, ended_at = ?, due_at = ?, detail = ? WHERE id = ?`).run(
    status,
    at.toISOString(),
    dueAt?.toISOString() ?? null,
    detail,
    id,
  );
  return id;
}

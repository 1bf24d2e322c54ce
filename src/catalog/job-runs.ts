/**
 * What the run tables of the job areas share (SureBackup runs in
 * `surebackup_runs`, backup job runs in `backup_job_runs`): a run id that
 * sorts by start time, and the newest runs of a job. Each area keeps its
 * own table and migrations; these helpers take the table's name, which is
 * always one of the constants below, never input.
 *
 * `jobRuns(runner, table)` gives the statements on the catalog seam, in
 * either dialect. Ties in start time are broken by insertion order: SQLite's rowid, and on
 * PostgreSQL a `seq BIGSERIAL` column every run table has there.
 */
import { randomUUID } from 'node:crypto';
import type { Dialect, SqlRunner } from './sql.js';

export type JobRunTable = 'surebackup_runs' | 'backup_job_runs';

/** `20261202T041350Z-1a2b3c4d`: the start time (so ids sort by it) and a random suffix. */
export function newRunId(at: Date): string {
  return `${at
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d+Z$/, 'Z')}-${randomUUID().slice(0, 8)}`;
}

/** The column that orders a run table's rows by insertion. */
export const insertionOrder = (dialect: Dialect): string => (dialect === 'sqlite' ? 'rowid' : 'seq');

const sql = {
  newest: (d: Dialect, table: JobRunTable, byJob: boolean) =>
    `SELECT * FROM ${table}${byJob ? ' WHERE job = ?' : ''} ORDER BY started_at DESC, ${insertionOrder(d)} DESC LIMIT ?`,
  row: (table: JobRunTable) => `SELECT * FROM ${table} WHERE id = ?`,
  end: (table: JobRunTable) => `UPDATE ${table} SET status = ?, ended_at = ?, detail = ? WHERE id = ?`,
  lastStarted: (table: JobRunTable, which: 'run' | 'missed') =>
    `SELECT MAX(started_at) AS at FROM ${table} WHERE job = ? AND ${which === 'run' ? `status NOT IN ('skipped-overlap', 'missed')` : `status = 'missed'`}`,
  insert: (table: JobRunTable) => `INSERT INTO ${table} (id, job, trigger, status, started_at) VALUES (?, ?, ?, ?, ?)`,
  nonRun: (table: JobRunTable) =>
    `INSERT INTO ${table} (id, job, trigger, status, started_at, ended_at, due_at, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
};

/** The run statements of one table on the catalog seam. */
export interface JobRuns {
  /** Raw rows of the newest runs, of one job or all; newest first. */
  newest<Row>(o: { job?: string | undefined; limit?: number | undefined }): Promise<Row[]>;
  /** The raw row of one run, by its id. */
  row<Row>(id: string): Promise<Row | undefined>;
  /** Ends a run: its status, the time it ended, and why (null when there is nothing to say). */
  end(id: string, status: string, detail: string | null, runner?: SqlRunner): Promise<void>;
  /** When the job last started a real run (not a skipped or missed trigger), or, with `missed`, when its last `missed` entry was recorded. */
  lastStartedAt(job: string, which?: 'run' | 'missed'): Promise<Date | undefined>;
  /** A new run row, `running` from `at`; its id. */
  insert(job: string, trigger: string, at: Date): Promise<string>;
  /** A trigger that ran nothing (the job was still running, or the server was down when it was due), ended now; its id. */
  insertNonRun(job: string, trigger: string, status: 'skipped-overlap' | 'missed', detail: string, dueAt?: Date): Promise<string>;
}

export function jobRuns(db: SqlRunner, table: JobRunTable): JobRuns {
  return {
    newest: <Row>(o: { job?: string | undefined; limit?: number | undefined }) =>
      o.job === undefined
        ? db.all<Row>(sql.newest(db.dialect, table, false), [o.limit ?? 20])
        : db.all<Row>(sql.newest(db.dialect, table, true), [o.job, o.limit ?? 20]),
    row: <Row>(id: string) => db.get<Row>(sql.row(table), [id]),
    end: async (id, status, detail, runner = db) => {
      await runner.run(sql.end(table), [status, new Date().toISOString(), detail, id]);
    },
    lastStartedAt: async (job, which = 'run') => {
      const r = await db.get<{ at: string | null }>(sql.lastStarted(table, which), [job]);
      return r?.at == null ? undefined : new Date(r.at);
    },
    insert: async (job, trigger, at) => {
      const id = newRunId(at);
      await db.run(sql.insert(table), [id, job, trigger, 'running', at.toISOString()]);
      return id;
    },
    insertNonRun: async (job, trigger, status, detail, dueAt) => {
      const at = new Date();
      const id = newRunId(at);
      await db.run(sql.nonRun(table), [id, job, trigger, status, at.toISOString(), at.toISOString(), dueAt?.toISOString() ?? null, detail]);
      return id;
    },
  };
}

/**
 * Backup job history in the catalog (SQLite or PostgreSQL, through the seam
 * of src/catalog/sql.ts), migration area `backup-jobs` (src/catalog/catalog.ts). A *run* row exists for every trigger, including
 * those that backed up nothing: `skipped-overlap` (the job was still
 * running) and `missed` (the server was down when it was due). Each VM of a
 * run gets a row once its backup (and, after success, its prune) ended.
 */
import { connectCatalog, migrateCatalog, migrated, type MigrationStep } from '../../catalog/catalog.js';
import { jobRuns, type JobRuns } from '../../catalog/job-runs.js';
import { upsertSql, type Catalog } from '../../catalog/sql.js';
import type { Consistency } from '../../repo/contract.js';

export type BackupJobTrigger = 'manual' | 'schedule';
/**
 * success: every VM backed up (and pruned); warning: every VM backed up, but
 * a prune, gc or the firing of a SureBackup job failed; partial: some VMs
 * failed; failed: every VM failed.
 */
export type BackupRunStatus =
  'running' | 'success' | 'warning' | 'partial' | 'failed' | 'cancelled' | 'error' | 'skipped-overlap' | 'missed';

/** A SureBackup job fired after a run: its run id, or why it did not start. */
export interface FiredSureBackup {
  job: string;
  run: string | null;
  status: string;
  detail?: string | null;
}

export interface BackupVmResult {
  vm: string;
  status: 'success' | 'failed' | 'cancelled';
  point: string | null;
  /** Achieved (a live backup may fall back to crash). */
  consistency: Consistency | null;
  changedBlockTracking: { used: boolean; reason: string } | null;
  bytesRead: number;
  bytesNew: number;
  seconds: number;
  /** Points the retention removed after this backup. */
  pruned: string[];
  error: string | null;
  /** A prune or gc that failed after the backup succeeded. */
  pruneError: string | null;
}

export interface BackupRunRow {
  id: string;
  job: string;
  trigger: BackupJobTrigger;
  status: BackupRunStatus;
  startedAt: string;
  endedAt: string | null;
  dueAt: string | null;
  detail: string | null;
  surebackup: FiredSureBackup[];
}

const VM_RESULT_COLUMNS = [
  'run_id',
  'seq',
  'vm',
  'status',
  'point',
  'consistency',
  'cbt',
  'bytes_read',
  'bytes_new',
  'seconds',
  'pruned',
  'error',
  'prune_error',
];

/** Append-only (src/catalog/catalog.ts). The SQLite text is the one existing catalogs were migrated with: never edit it. */
const MIGRATIONS: MigrationStep[] = [
  {
    sqlite: `CREATE TABLE backup_job_runs (
     id TEXT PRIMARY KEY,
     job TEXT NOT NULL,
     trigger TEXT NOT NULL,
     status TEXT NOT NULL,
     started_at TEXT NOT NULL,
     ended_at TEXT,
     due_at TEXT,
     detail TEXT,
     surebackup TEXT NOT NULL DEFAULT '[]'
   );
   CREATE INDEX backup_job_runs_job ON backup_job_runs (job, started_at);
   CREATE TABLE backup_job_vm_results (
     run_id TEXT NOT NULL REFERENCES backup_job_runs (id) ON DELETE CASCADE,
     seq INTEGER NOT NULL,
     vm TEXT NOT NULL,
     status TEXT NOT NULL,
     point TEXT,
     consistency TEXT,
     cbt TEXT,
     bytes_read INTEGER NOT NULL,
     bytes_new INTEGER NOT NULL,
     seconds REAL NOT NULL,
     pruned TEXT NOT NULL,
     error TEXT,
     prune_error TEXT,
     PRIMARY KEY (run_id, vm)
   )`,
    // seq orders runs that started in the same millisecond (SQLite has rowid); byte counts pass 2^31.
    postgres: `CREATE TABLE backup_job_runs (
     id TEXT PRIMARY KEY,
     seq BIGSERIAL NOT NULL,
     job TEXT NOT NULL,
     trigger TEXT NOT NULL,
     status TEXT NOT NULL,
     started_at TEXT NOT NULL,
     ended_at TEXT,
     due_at TEXT,
     detail TEXT,
     surebackup TEXT NOT NULL DEFAULT '[]'
   );
   CREATE INDEX backup_job_runs_job ON backup_job_runs (job, started_at);
   CREATE TABLE backup_job_vm_results (
     run_id TEXT NOT NULL REFERENCES backup_job_runs (id) ON DELETE CASCADE,
     seq INTEGER NOT NULL,
     vm TEXT NOT NULL,
     status TEXT NOT NULL,
     point TEXT,
     consistency TEXT,
     cbt TEXT,
     bytes_read BIGINT NOT NULL,
     bytes_new BIGINT NOT NULL,
     seconds DOUBLE PRECISION NOT NULL,
     pruned TEXT NOT NULL,
     error TEXT,
     prune_error TEXT,
     PRIMARY KEY (run_id, vm)
   )`,
  },
];

interface RunDbRow {
  id: string;
  job: string;
  trigger: string;
  status: string;
  started_at: string;
  ended_at: string | null;
  due_at: string | null;
  detail: string | null;
  surebackup: string;
}
interface VmDbRow {
  vm: string;
  status: string;
  point: string | null;
  consistency: string | null;
  cbt: string | null;
  bytes_read: number;
  bytes_new: number;
  seconds: number;
  pruned: string;
  error: string | null;
  prune_error: string | null;
}

const toRun = (r: RunDbRow): BackupRunRow => ({
  id: r.id,
  job: r.job,
  trigger: r.trigger as BackupJobTrigger,
  status: r.status as BackupRunStatus,
  startedAt: r.started_at,
  endedAt: r.ended_at,
  dueAt: r.due_at,
  detail: r.detail,
  surebackup: JSON.parse(r.surebackup) as FiredSureBackup[],
});
const toVm = (r: VmDbRow): BackupVmResult => ({
  vm: r.vm,
  status: r.status as BackupVmResult['status'],
  point: r.point,
  consistency: r.consistency as Consistency | null,
  changedBlockTracking: r.cbt === null ? null : (JSON.parse(r.cbt) as { used: boolean; reason: string }),
  bytesRead: r.bytes_read,
  bytesNew: r.bytes_new,
  seconds: r.seconds,
  pruned: JSON.parse(r.pruned) as string[],
  error: r.error,
  pruneError: r.prune_error,
});

export class BackupJobHistory {
  private readonly runs: JobRuns;

  private constructor(
    /** The catalog it keeps its tables in (points recorded by a run go there too). */
    readonly catalog: Catalog,
    private readonly owned: boolean,
  ) {
    this.runs = jobRuns(catalog, 'backup_job_runs');
  }

  /** The history in a catalog already open (the API server's); close() leaves the catalog open. */
  static async on(catalog: Catalog): Promise<BackupJobHistory> {
    await migrateCatalog(catalog, 'backup-jobs', MIGRATIONS);
    return new BackupJobHistory(catalog, false);
  }

  /** Opens the catalog at `target` (a SQLite file or a postgres:// URL); close() closes it. */
  static async open(target: string): Promise<BackupJobHistory> {
    return new BackupJobHistory(await migrated(await connectCatalog(target), 'backup-jobs', MIGRATIONS), true);
  }

  async close(): Promise<void> {
    if (this.owned) await this.catalog.close();
  }

  startRun(job: string, trigger: BackupJobTrigger, at = new Date()): Promise<string> {
    return this.runs.insert(job, trigger, at);
  }

  /** A trigger that backed up nothing: the job was still running, or the server was down when it was due. */
  recordNonRun(
    job: string,
    trigger: BackupJobTrigger,
    status: 'skipped-overlap' | 'missed',
    detail: string,
    dueAt?: Date,
  ): Promise<string> {
    return this.runs.insertNonRun(job, trigger, status, detail, dueAt);
  }

  async recordVm(runId: string, seq: number, r: BackupVmResult): Promise<void> {
    await this.catalog.run(upsertSql(this.catalog.dialect, 'backup_job_vm_results', VM_RESULT_COLUMNS, ['run_id', 'vm']), [
      runId,
      seq,
      r.vm,
      r.status,
      r.point,
      r.consistency,
      r.changedBlockTracking === null ? null : JSON.stringify(r.changedBlockTracking),
      r.bytesRead,
      r.bytesNew,
      r.seconds,
      JSON.stringify(r.pruned),
      r.error,
      r.pruneError,
    ]);
  }

  async finishRun(
    id: string,
    status: Exclude<BackupRunStatus, 'running'>,
    detail: string | null,
    surebackup: FiredSureBackup[] = [],
  ): Promise<void> {
    await this.catalog.transaction(async (tx) => {
      await tx.run('UPDATE backup_job_runs SET surebackup = ? WHERE id = ?', [JSON.stringify(surebackup), id]);
      await this.runs.end(id, status, detail, tx);
    });
  }

  /** Newest first. */
  async lastRuns(o: { job?: string; limit?: number } = {}): Promise<BackupRunRow[]> {
    return (await this.runs.newest<RunDbRow>(o)).map(toRun);
  }

  /** When the job last started a real run (not a skipped or missed trigger). */
  lastRunTime(job: string): Promise<Date | undefined> {
    return this.runs.lastStartedAt(job);
  }

  /** When the job's last `missed` entry was recorded. */
  lastMissTime(job: string): Promise<Date | undefined> {
    return this.runs.lastStartedAt(job, 'missed');
  }

  /** One run with its VMs, in job order. */
  async run(id: string): Promise<(BackupRunRow & { vms: BackupVmResult[] }) | undefined> {
    const row = await this.runs.row<RunDbRow>(id);
    if (!row) return undefined;
    const vms = await this.catalog.all<VmDbRow>('SELECT * FROM backup_job_vm_results WHERE run_id = ? ORDER BY seq', [id]);
    return { ...toRun(row), vms: vms.map(toVm) };
  }
}

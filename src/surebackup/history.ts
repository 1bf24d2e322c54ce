/**
 * SureBackup history in the catalog (SQLite or PostgreSQL, through the seam
 * of src/catalog/sql.ts): jobs, runs, per-VM results,
 * per-test results, screenshot paths (the PNG files live in the state
 * directory; the catalog keeps their paths). Tables belong to the
 * `surebackup` migration area (src/catalog/catalog.ts).
 *
 * A *run* row exists for every trigger, including those that did not verify
 * anything: `skipped-overlap` (the job was still running) and `missed` (the
 * server was down when it was due), so nothing is silently dropped.
 *
 * Times: runs carry ISO 8601 strings; VM rows carry epoch milliseconds as
 * well, so concurrency can be checked from the catalog alone.
 */
import { connectCatalog, migrateCatalog, migrated, type MigrationStep } from '../catalog/catalog.js';
import { insertionOrder, jobRuns, type JobRuns } from '../catalog/job-runs.js';
import { upsertSql, type Catalog } from '../catalog/sql.js';
import type { RunResult, VmResult } from '../verify/contract.js';
import type { TrendPoint } from '../report/report.js';

export type RunTrigger = 'manual' | 'schedule' | 'after-backup';
export type RunStatus = 'running' | 'success' | 'warning' | 'failed' | 'cancelled' | 'error' | 'skipped-overlap' | 'missed';

/** Append-only (src/catalog/catalog.ts). The SQLite text is the one existing catalogs were migrated with: never edit it. */
const MIGRATIONS: MigrationStep[] = [
  {
    sqlite: `CREATE TABLE surebackup_jobs (
     name TEXT PRIMARY KEY,
     file TEXT,
     definition TEXT NOT NULL,
     updated TEXT NOT NULL
   );
   CREATE TABLE surebackup_runs (
     id TEXT PRIMARY KEY,
     job TEXT NOT NULL,
     trigger TEXT NOT NULL,
     status TEXT NOT NULL,
     started_at TEXT NOT NULL,
     ended_at TEXT,
     due_at TEXT,
     detail TEXT,
     report_html TEXT,
     report_json TEXT
   );
   CREATE INDEX surebackup_runs_job ON surebackup_runs (job, started_at);
   CREATE TABLE surebackup_vm_results (
     run_id TEXT NOT NULL REFERENCES surebackup_runs (id) ON DELETE CASCADE,
     vm TEXT NOT NULL,
     point TEXT NOT NULL,
     grp INTEGER NOT NULL,
     result TEXT NOT NULL,
     started_ms INTEGER NOT NULL,
     ended_ms INTEGER NOT NULL,
     boot_to_heartbeat_s REAL,
     to_first_answer_s REAL,
     recovery_s REAL NOT NULL,
     screenshot TEXT,
     PRIMARY KEY (run_id, vm)
   );
   CREATE INDEX surebackup_vm_results_vm ON surebackup_vm_results (vm, started_ms);
   CREATE TABLE surebackup_test_results (
     run_id TEXT NOT NULL,
     vm TEXT NOT NULL,
     seq INTEGER NOT NULL,
     name TEXT NOT NULL,
     kind TEXT NOT NULL,
     result TEXT NOT NULL,
     seconds REAL NOT NULL,
     detail TEXT NOT NULL,
     PRIMARY KEY (run_id, vm, seq)
   )`,
    // seq orders runs that started in the same millisecond (SQLite has rowid); epoch milliseconds pass 2^31.
    postgres: `CREATE TABLE surebackup_jobs (
     name TEXT PRIMARY KEY,
     file TEXT,
     definition TEXT NOT NULL,
     updated TEXT NOT NULL
   );
   CREATE TABLE surebackup_runs (
     id TEXT PRIMARY KEY,
     seq BIGSERIAL NOT NULL,
     job TEXT NOT NULL,
     trigger TEXT NOT NULL,
     status TEXT NOT NULL,
     started_at TEXT NOT NULL,
     ended_at TEXT,
     due_at TEXT,
     detail TEXT,
     report_html TEXT,
     report_json TEXT
   );
   CREATE INDEX surebackup_runs_job ON surebackup_runs (job, started_at);
   CREATE TABLE surebackup_vm_results (
     run_id TEXT NOT NULL REFERENCES surebackup_runs (id) ON DELETE CASCADE,
     vm TEXT NOT NULL,
     point TEXT NOT NULL,
     grp INTEGER NOT NULL,
     result TEXT NOT NULL,
     started_ms BIGINT NOT NULL,
     ended_ms BIGINT NOT NULL,
     boot_to_heartbeat_s DOUBLE PRECISION,
     to_first_answer_s DOUBLE PRECISION,
     recovery_s DOUBLE PRECISION NOT NULL,
     screenshot TEXT,
     PRIMARY KEY (run_id, vm)
   );
   CREATE INDEX surebackup_vm_results_vm ON surebackup_vm_results (vm, started_ms);
   CREATE TABLE surebackup_test_results (
     run_id TEXT NOT NULL,
     vm TEXT NOT NULL,
     seq INTEGER NOT NULL,
     name TEXT NOT NULL,
     kind TEXT NOT NULL,
     result TEXT NOT NULL,
     seconds DOUBLE PRECISION NOT NULL,
     detail TEXT NOT NULL,
     PRIMARY KEY (run_id, vm, seq)
   )`,
  },
];

export interface RunRow {
  id: string;
  job: string;
  trigger: RunTrigger;
  status: RunStatus;
  startedAt: string;
  endedAt: string | null;
  dueAt: string | null;
  detail: string | null;
  reportHtml: string | null;
  reportJson: string | null;
}
/** The newest SureBackup result of a restore point, as the API's points show it. */
export interface PointVerification {
  run: string;
  job: string;
  vm: string;
  /** success, warning, failed or dependency-failed. */
  result: string;
  /** When the VM's verification started (ISO 8601). */
  at: string;
  recoverySeconds: number;
  /** Whether a console screenshot was kept for this VM in that run. */
  screenshot: boolean;
}
export interface VmTiming {
  run: string;
  vm: string;
  startedMs: number;
  endedMs: number;
  recoverySeconds: number;
  result: string;
}

interface RunDbRow {
  id: string;
  job: string;
  trigger: string;
  status: string;
  started_at: string;
  ended_at: string | null;
  due_at: string | null;
  detail: string | null;
  report_html: string | null;
  report_json: string | null;
}
const toRun = (r: RunDbRow): RunRow => ({
  id: r.id,
  job: r.job,
  trigger: r.trigger as RunTrigger,
  status: r.status as RunStatus,
  startedAt: r.started_at,
  endedAt: r.ended_at,
  dueAt: r.due_at,
  detail: r.detail,
  reportHtml: r.report_html,
  reportJson: r.report_json,
});

const JOB_COLUMNS = ['name', 'file', 'definition', 'updated'];
const VM_COLUMNS = [
  'run_id',
  'vm',
  'point',
  'grp',
  'result',
  'started_ms',
  'ended_ms',
  'boot_to_heartbeat_s',
  'to_first_answer_s',
  'recovery_s',
  'screenshot',
];
const TEST_COLUMNS = ['run_id', 'vm', 'seq', 'name', 'kind', 'result', 'seconds', 'detail'];

export class History {
  private readonly runs: JobRuns;

  private constructor(
    /** The catalog it keeps its tables in. */
    readonly catalog: Catalog,
    private readonly owned: boolean,
  ) {
    this.runs = jobRuns(catalog, 'surebackup_runs');
  }

  /** The history in a catalog already open (the API server's, a backup job history's); close() leaves the catalog open. */
  static async on(catalog: Catalog): Promise<History> {
    await migrateCatalog(catalog, 'surebackup', MIGRATIONS);
    return new History(catalog, false);
  }

  /** Opens the catalog at `target` (a SQLite file or a postgres:// URL); close() closes it. */
  static async open(target: string): Promise<History> {
    return new History(await migrated(await connectCatalog(target), 'surebackup', MIGRATIONS), true);
  }

  async close(): Promise<void> {
    if (this.owned) await this.catalog.close();
  }

  async recordJob(name: string, definition: unknown, file?: string): Promise<void> {
    await this.catalog.run(upsertSql(this.catalog.dialect, 'surebackup_jobs', JOB_COLUMNS, ['name']), [
      name,
      file ?? null,
      JSON.stringify(definition),
      new Date().toISOString(),
    ]);
  }

  startRun(job: string, trigger: RunTrigger, at = new Date()): Promise<string> {
    return this.runs.insert(job, trigger, at);
  }

  /** A trigger that verified nothing: skipped because the job was running, or missed while the server was down. */
  recordNonRun(job: string, trigger: RunTrigger, status: 'skipped-overlap' | 'missed', detail: string, dueAt?: Date): Promise<string> {
    return this.runs.insertNonRun(job, trigger, status, detail, dueAt);
  }

  async finishRun(id: string, r: RunResult, reports: { html?: string; json?: string } = {}): Promise<void> {
    const vmIns = upsertSql(this.catalog.dialect, 'surebackup_vm_results', VM_COLUMNS, ['run_id', 'vm']);
    const testIns = upsertSql(this.catalog.dialect, 'surebackup_test_results', TEST_COLUMNS, ['run_id', 'vm', 'seq']);
    await this.catalog.transaction(async (tx) => {
      for (const v of r.vms) {
        await tx.run(vmIns, [
          id,
          v.name,
          v.point,
          v.group ? 1 : 0,
          v.result,
          v.startedAt,
          v.endedAt,
          v.bootToHeartbeatSeconds,
          v.toFirstAnswerSeconds,
          v.recoverySeconds,
          v.screenshot,
        ]);
        for (const [i, t] of v.tests.entries()) await tx.run(testIns, [id, v.name, i, t.name, t.kind, t.result, t.seconds, t.detail]);
      }
      await tx.run('UPDATE surebackup_runs SET status = ?, ended_at = ?, report_html = ?, report_json = ? WHERE id = ?', [
        r.result,
        new Date().toISOString(),
        reports.html ?? null,
        reports.json ?? null,
        id,
      ]);
    });
  }

  /** A run that ended without a result (cancelled, or an error before/while verifying). */
  abortRun(id: string, status: 'cancelled' | 'error', detail: string): Promise<void> {
    return this.runs.end(id, status, detail);
  }

  async setReports(id: string, reports: { html?: string; json?: string }): Promise<void> {
    await this.catalog.run('UPDATE surebackup_runs SET report_html = ?, report_json = ? WHERE id = ?', [
      reports.html ?? null,
      reports.json ?? null,
      id,
    ]);
  }

  /** Newest first. */
  async lastRuns(o: { job?: string; limit?: number } = {}): Promise<RunRow[]> {
    return (await this.runs.newest<RunDbRow>(o)).map(toRun);
  }

  /** When the job last started a real run (not a skipped or missed trigger). */
  lastRunTime(job: string): Promise<Date | undefined> {
    return this.runs.lastStartedAt(job);
  }

  /** Share of finished runs (success or warning count as passed) among the last `lastN` finished runs. */
  async passRate(o: { job?: string; lastN?: number } = {}): Promise<{ runs: number; passed: number; rate: number | null }> {
    const where = `status IN ('success', 'warning', 'failed', 'error')${o.job === undefined ? '' : ' AND job = ?'}`;
    const args = o.job === undefined ? [] : [o.job];
    const rows = await this.catalog.all<{ status: string }>(
      `SELECT status FROM surebackup_runs WHERE ${where} ORDER BY started_at DESC, ${insertionOrder(this.catalog.dialect)} DESC LIMIT ?`,
      [...args, o.lastN ?? 1000],
    );
    const passed = rows.filter((r) => r.status === 'success' || r.status === 'warning').length;
    return { runs: rows.length, passed, rate: rows.length === 0 ? null : passed / rows.length };
  }

  /** Measured recovery time of one VM across runs, oldest first (the last `limit`). */
  async recoveryTrend(vm: string, o: { job?: string; limit?: number } = {}): Promise<TrendPoint[]> {
    const rows = await this.catalog.all<{ run: string; at: string; s: number; result: string }>(
      `SELECT v.run_id AS run, r.started_at AS at, v.recovery_s AS s, v.result AS result
      FROM surebackup_vm_results v JOIN surebackup_runs r ON r.id = v.run_id
      WHERE v.vm = ? AND v.result != 'dependency-failed' ${o.job === undefined ? '' : 'AND r.job = ?'}
      ORDER BY v.started_ms DESC LIMIT ?`,
      [...(o.job === undefined ? [vm] : [vm, o.job]), o.limit ?? 30],
    );
    return rows.reverse().map((r) => ({ run: r.run, at: r.at, recoverySeconds: r.s, result: r.result }));
  }

  /**
   * The console screenshots of each VM's last passing results (success or
   * warning) in this job, newest first, at most `perVm` each: the pictures a
   * new screenshot is compared with. Read once before a run, so the
   * comparison never needs the catalog mid-run (and never sees this run). A
   * warning counts as passing so a screen that changed for good warns once,
   * not at every run after. Runs whose PNG is gone are skipped by the caller.
   */
  async passingScreenshots(job: string, perVm = 5): Promise<Map<string, { run: string; path: string }[]>> {
    const rows = await this.catalog.all<{ vm: string; run: string; path: string }>(
      `SELECT vm, run, path FROM (
         SELECT v.vm AS vm, v.run_id AS run, v.screenshot AS path, v.started_ms AS started_ms,
           ROW_NUMBER() OVER (PARTITION BY v.vm ORDER BY v.started_ms DESC) AS n
         FROM surebackup_vm_results v JOIN surebackup_runs r ON r.id = v.run_id
         WHERE r.job = ? AND v.result IN ('success', 'warning') AND v.screenshot IS NOT NULL
       ) newest WHERE n <= ? ORDER BY vm, started_ms DESC`,
      [job, perVm],
    );
    const out = new Map<string, { run: string; path: string }[]>();
    for (const r of rows) out.set(r.vm, [...(out.get(r.vm) ?? []), { run: r.run, path: r.path }]);
    return out;
  }

  /** How many runs ended (or are running) with each status, for the server's metrics. */
  async runsByStatus(): Promise<Record<string, number>> {
    const rows = await this.catalog.all<{ status: string; n: number }>('SELECT status, COUNT(*) AS n FROM surebackup_runs GROUP BY status');
    return Object.fromEntries(rows.map((r) => [r.status, r.n]));
  }

  /** The newest verification of a restore point, or null when none verified it. */
  async pointVerification(pointId: string): Promise<PointVerification | null> {
    const row = await this.catalog.get<{
      run: string;
      job: string;
      vm: string;
      result: string;
      startedMs: number;
      recoverySeconds: number;
      screenshot: string | null;
    }>(
      `SELECT v.run_id AS run, r.job AS job, v.vm AS vm, v.result AS result, v.started_ms AS "startedMs",
        v.recovery_s AS "recoverySeconds", v.screenshot AS screenshot
      FROM surebackup_vm_results v JOIN surebackup_runs r ON r.id = v.run_id
      WHERE v.point = ? ORDER BY v.started_ms DESC, r.started_at DESC LIMIT 1`,
      [pointId],
    );
    if (!row) return null;
    return {
      run: row.run,
      job: row.job,
      vm: row.vm,
      result: row.result,
      at: new Date(row.startedMs).toISOString(),
      recoverySeconds: row.recoverySeconds,
      screenshot: row.screenshot !== null,
    };
  }

  /** Per-VM start/end of one run, for reports and for checking the concurrency cap. */
  async vmTimings(runId: string): Promise<VmTiming[]> {
    const rows = await this.catalog.all<{
      run_id: string;
      vm: string;
      started_ms: number;
      ended_ms: number;
      recovery_s: number;
      result: string;
    }>('SELECT run_id, vm, started_ms, ended_ms, recovery_s, result FROM surebackup_vm_results WHERE run_id = ? ORDER BY started_ms', [
      runId,
    ]);
    return rows.map((r) => ({
      run: r.run_id,
      vm: r.vm,
      startedMs: r.started_ms,
      endedMs: r.ended_ms,
      recoverySeconds: r.recovery_s,
      result: r.result,
    }));
  }

  /** One run with its VMs and tests, as the report and `history` show it. */
  async run(
    id: string,
  ): Promise<(RunRow & { vms: (Omit<VmResult, 'startedAt' | 'endedAt'> & { startedAt: number; endedAt: number })[] }) | undefined> {
    const row = await this.runs.row<RunDbRow>(id);
    if (!row) return undefined;
    const vms = await this.catalog.all<{
      vm: string;
      point: string;
      grp: number;
      result: VmResult['result'];
      started_ms: number;
      ended_ms: number;
      boot_to_heartbeat_s: number | null;
      to_first_answer_s: number | null;
      recovery_s: number;
      screenshot: string | null;
    }>('SELECT * FROM surebackup_vm_results WHERE run_id = ? ORDER BY grp DESC, started_ms', [id]);
    const tests = await this.catalog.all<{
      vm: string;
      name: string;
      kind: string;
      result: VmResult['tests'][number]['result'];
      seconds: number;
      detail: string;
    }>('SELECT * FROM surebackup_test_results WHERE run_id = ? ORDER BY vm, seq', [id]);
    return {
      ...toRun(row),
      vms: vms.map((v) => ({
        name: v.vm,
        point: v.point,
        group: v.grp === 1,
        result: v.result,
        startedAt: v.started_ms,
        endedAt: v.ended_ms,
        bootToHeartbeatSeconds: v.boot_to_heartbeat_s,
        toFirstAnswerSeconds: v.to_first_answer_s,
        recoverySeconds: v.recovery_s,
        screenshot: v.screenshot,
        tests: tests
          .filter((t) => t.vm === v.vm)
          .map((t) => ({ name: t.name, kind: t.kind, result: t.result, seconds: t.seconds, detail: t.detail })),
      })),
    };
  }
}

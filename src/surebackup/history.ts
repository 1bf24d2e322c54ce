/**
 * SureBackup history in the SQLite catalog: jobs, runs, per-VM results,
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
import { migrate, openCatalog, type CatalogDb } from '../catalog/catalog.js';
import { endRun, insertNonRun, insertRun, lastStartedAt, newestRunRows, runRow } from '../catalog/job-runs.js';
import type { RunResult, VmResult } from '../verify/contract.js';
import type { TrendPoint } from '../report/report.js';

export type RunTrigger = 'manual' | 'schedule' | 'after-backup';
export type RunStatus = 'running' | 'success' | 'warning' | 'failed' | 'cancelled' | 'error' | 'skipped-overlap' | 'missed';

const MIGRATIONS = [
  `CREATE TABLE surebackup_jobs (
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

export class History {
  constructor(readonly db: CatalogDb) {
    migrate(db, 'surebackup', MIGRATIONS);
  }

  static open(catalogPath: string): History {
    return new History(openCatalog(catalogPath));
  }
  close(): void {
    this.db.close();
  }

  recordJob(name: string, definition: unknown, file?: string): void {
    this.db
      .prepare('INSERT OR REPLACE INTO surebackup_jobs (name, file, definition, updated) VALUES (?, ?, ?, ?)')
      .run(name, file ?? null, JSON.stringify(definition), new Date().toISOString());
  }

  startRun(job: string, trigger: RunTrigger, at = new Date()): string {
    return insertRun(this.db, 'surebackup_runs', job, trigger, at);
  }

  /** A trigger that verified nothing: skipped because the job was running, or missed while the server was down. */
  recordNonRun(job: string, trigger: RunTrigger, status: 'skipped-overlap' | 'missed', detail: string, dueAt?: Date): string {
    return insertNonRun(this.db, 'surebackup_runs', job, trigger, status, detail, dueAt);
  }

  finishRun(id: string, r: RunResult, reports: { html?: string; json?: string } = {}): void {
    const vmIns = this.db.prepare(`INSERT OR REPLACE INTO surebackup_vm_results
      (run_id, vm, point, grp, result, started_ms, ended_ms, boot_to_heartbeat_s, to_first_answer_s, recovery_s, screenshot)
      VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`);
    const testIns = this.db.prepare(
      'INSERT OR REPLACE INTO surebackup_test_results (run_id, vm, seq, name, kind, result, seconds, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
    );
    this.db.transaction(() => {
      for (const v of r.vms) {
        vmIns.run(
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
        );
        v.tests.forEach((t, i) => testIns.run(id, v.name, i, t.name, t.kind, t.result, t.seconds, t.detail));
      }
      this.db
        .prepare('UPDATE surebackup_runs SET status = ?, ended_at = ?, report_html = ?, report_json = ? WHERE id = ?')
        .run(r.result, new Date().toISOString(), reports.html ?? null, reports.json ?? null, id);
    })();
  }

  /** A run that ended without a result (cancelled, or an error before/while verifying). */
  abortRun(id: string, status: 'cancelled' | 'error', detail: string): void {
    endRun(this.db, 'surebackup_runs', id, status, detail);
  }

  setReports(id: string, reports: { html?: string; json?: string }): void {
    this.db
      .prepare('UPDATE surebackup_runs SET report_html = ?, report_json = ? WHERE id = ?')
      .run(reports.html ?? null, reports.json ?? null, id);
  }

  /** Newest first. */
  lastRuns(o: { job?: string; limit?: number } = {}): RunRow[] {
    return newestRunRows<RunDbRow>(this.db, 'surebackup_runs', o).map(toRun);
  }

  /** When the job last started a real run (not a skipped or missed trigger). */
  lastRunTime(job: string): Date | undefined {
    return lastStartedAt(this.db, 'surebackup_runs', job);
  }

  /** Share of finished runs (success or warning count as passed) among the last `lastN` finished runs. */
  passRate(o: { job?: string; lastN?: number } = {}): { runs: number; passed: number; rate: number | null } {
    const where = `status IN ('success', 'warning', 'failed', 'error')${o.job === undefined ? '' : ' AND job = ?'}`;
    const args: unknown[] = o.job === undefined ? [] : [o.job];
    const rows = this.db
      .prepare(`SELECT status FROM surebackup_runs WHERE ${where} ORDER BY started_at DESC, rowid DESC LIMIT ?`)
      .all(...args, o.lastN ?? 1000) as { status: string }[];
    const passed = rows.filter((r) => r.status === 'success' || r.status === 'warning').length;
    return { runs: rows.length, passed, rate: rows.length === 0 ? null : passed / rows.length };
  }

  /** Measured recovery time of one VM across runs, oldest first (the last `limit`). */
  recoveryTrend(vm: string, o: { job?: string; limit?: number } = {}): TrendPoint[] {
    const rows = this.db
      .prepare(
        `SELECT v.run_id AS run, r.started_at AS at, v.recovery_s AS s, v.result AS result
      FROM surebackup_vm_results v JOIN surebackup_runs r ON r.id = v.run_id
      WHERE v.vm = ? AND v.result != 'dependency-failed' ${o.job === undefined ? '' : 'AND r.job = ?'}
      ORDER BY v.started_ms DESC LIMIT ?`,
      )
      .all(...(o.job === undefined ? [vm] : [vm, o.job]), o.limit ?? 30) as { run: string; at: string; s: number; result: string }[];
    return rows.reverse().map((r) => ({ run: r.run, at: r.at, recoverySeconds: r.s, result: r.result }));
  }

  /**
   * The console screenshot of the VM's last passing result (success or
   * warning) in this job, the picture a new screenshot is compared with. A
   * warning counts as passing so a screen that changed for good warns once,
   * not at every run after. Runs whose PNG is gone are skipped by the caller.
   */
  lastPassingScreenshots(vm: string, job: string, limit = 5): { run: string; path: string }[] {
    return this.db
      .prepare(
        `SELECT v.run_id AS run, v.screenshot AS path FROM surebackup_vm_results v JOIN surebackup_runs r ON r.id = v.run_id
      WHERE v.vm = ? AND r.job = ? AND v.result IN ('success', 'warning') AND v.screenshot IS NOT NULL
      ORDER BY v.started_ms DESC LIMIT ?`,
      )
      .all(vm, job, limit) as { run: string; path: string }[];
  }

  /** How many runs ended (or are running) with each status, for the server's metrics. */
  runsByStatus(): Record<string, number> {
    return Object.fromEntries(
      (this.db.prepare('SELECT status, COUNT(*) AS n FROM surebackup_runs GROUP BY status').all() as { status: string; n: number }[]).map(
        (r) => [r.status, r.n],
      ),
    );
  }

  /** Looks up the newest verification of restore points, one statement prepared for a whole listing. */
  pointVerifier(): (pointId: string) => PointVerification | null {
    const q = this.db.prepare(`SELECT v.run_id AS run, r.job AS job, v.vm AS vm, v.result AS result, v.started_ms AS startedMs,
        v.recovery_s AS recoverySeconds, v.screenshot AS screenshot
      FROM surebackup_vm_results v JOIN surebackup_runs r ON r.id = v.run_id
      WHERE v.point = ? ORDER BY v.started_ms DESC, r.started_at DESC LIMIT 1`);
    return (pointId) => {
      const row = q.get(pointId) as
        | { run: string; job: string; vm: string; result: string; startedMs: number; recoverySeconds: number; screenshot: string | null }
        | undefined;
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
    };
  }

  /** Per-VM start/end of one run, for reports and for checking the concurrency cap. */
  vmTimings(runId: string): VmTiming[] {
    return (
      this.db
        .prepare(
          'SELECT run_id, vm, started_ms, ended_ms, recovery_s, result FROM surebackup_vm_results WHERE run_id = ? ORDER BY started_ms',
        )
        .all(runId) as { run_id: string; vm: string; started_ms: number; ended_ms: number; recovery_s: number; result: string }[]
    ).map((r) => ({
      run: r.run_id,
      vm: r.vm,
      startedMs: r.started_ms,
      endedMs: r.ended_ms,
      recoverySeconds: r.recovery_s,
      result: r.result,
    }));
  }

  /** One run with its VMs and tests, as the report and `history` show it. */
  run(id: string): (RunRow & { vms: (Omit<VmResult, 'startedAt' | 'endedAt'> & { startedAt: number; endedAt: number })[] }) | undefined {
    const row = runRow<RunDbRow>(this.db, 'surebackup_runs', id);
    if (!row) return undefined;
    const vms = this.db.prepare('SELECT * FROM surebackup_vm_results WHERE run_id = ? ORDER BY grp DESC, started_ms').all(id) as {
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
    }[];
    const tests = this.db.prepare('SELECT * FROM surebackup_test_results WHERE run_id = ? AND vm = ? ORDER BY seq');
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
        tests: (
          tests.all(id, v.vm) as {
            name: string;
            kind: string;
            result: VmResult['tests'][number]['result'];
            seconds: number;
            detail: string;
          }[]
        ).map((t) => ({ name: t.name, kind: t.kind, result: t.result, seconds: t.seconds, detail: t.detail })),
      })),
    };
  }
}

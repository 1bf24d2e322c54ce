/**
 * One run of a backup job: each VM backed up in job order (one after the
 * other: they share the host's disks and the repository's writers), its
 * point recorded in the catalog, then its group pruned by the job's
 * retention, only after its own backup succeeded: a failed backup never
 * prunes, so a VM whose backups keep failing keeps its last good points.
 * Each VM's outcome is written to the history as soon as it is known, and
 * the linked SureBackup jobs are fired only when every VM got its point.
 */
import { performance } from 'node:perf_hooks';
import type { RepositoryMaintenance } from '../../repo/api.js';
import type { RestorePoint } from '../../repo/contract.js';
import type { CodecInit } from '../chunk-pool.js';
import { backupVm } from '../engine.js';
import { backupLiveVm, type HostScripts } from '../live/index.js';
import { forgetPoints, recordPoint } from '../../catalog/catalog.js';
import { pruneRepository, type PrunePolicy } from '../../repo/prune.js';
import { collectGarbage } from '../../repo/gc.js';
import { allowedScript } from '../../verify/script.js';
import { RestorelabError } from '../../errors.js';
import type { BackupJob, BackupJobVm } from './job.js';
import type { BackupJobHistory, BackupRunStatus, BackupVmResult, FiredSureBackup } from './history.js';

export interface BackupJobProgress {
  vm: string;
  /** 0-based position of the VM in the job, and how many VMs it has. */
  index: number;
  of: number;
  disk: string;
  done: number;
  total: number;
  bytesNew: number;
}

/** Fires SureBackup jobs by name (src/backup/jobs/surebackup-link.ts); never throws for one job that cannot start. */
export type FireSureBackup = (jobs: readonly string[], from: { job: string; run: string }) => Promise<FiredSureBackup[]>;

export interface BackupJobRunOptions {
  job: BackupJob;
  repo: RepositoryMaintenance;
  codecInit?: CodecInit;
  /** Holds the catalog the points are recorded in, and the run's rows. */
  history: BackupJobHistory;
  /** The run's row, made by the starter (history.startRun). */
  runId: string;
  /** The time given to image backups' points; default now. */
  now?: () => Date;
  /** Runs of the server: host scripts must lie inside this directory (api.scriptsDir), as SureBackup scripts must. */
  scriptsDir?: string;
  fireSureBackup?: FireSureBackup;
  onProgress?: (p: BackupJobProgress) => void;
  log?: { info(line: string): void; warn(line: string): void };
  signal?: AbortSignal;
}

export interface BackupJobRunResult {
  run: string;
  job: string;
  status: Exclude<BackupRunStatus, 'running' | 'skipped-overlap' | 'missed' | 'error'>;
  detail: string | null;
  vms: BackupVmResult[];
  surebackup: FiredSureBackup[];
}

const KEEP_RULES = ['keepLast', 'keepHourly', 'keepDaily', 'keepWeekly', 'keepMonthly', 'keepYearly'] as const;

function describe(err: unknown): string {
  if (err instanceof RestorelabError) return `${err.code}: ${err.message}${err.hint ? ` (${err.hint})` : ''}`;
  return (err as Error)?.message ?? String(err);
}

/** The job's host scripts, confined to `scriptsDir` when the server runs the job. */
function confinedScripts(job: BackupJob, scriptsDir: string | undefined): HostScripts | undefined {
  if (job.hostScripts === undefined || scriptsDir === undefined) return job.hostScripts;
  const out: HostScripts = {};
  for (const k of ['preFreeze', 'postThaw'] as const) {
    const p = job.hostScripts[k];
    if (p !== undefined) out[k] = allowedScript(p, scriptsDir, `backup job ${job.name}, hostScripts.${k}`);
  }
  return out;
}

interface Taken {
  point: RestorePoint;
  cbt: BackupVmResult['changedBlockTracking'];
}

async function takeBackup(o: BackupJobRunOptions, entry: BackupJobVm, index: number): Promise<Taken> {
  const { job, repo } = o;
  const onProgress = (p: { disk: string; done: number; total: number; stats: { bytesNew: number } }): void =>
    o.onProgress?.({
      vm: entry.vm.name,
      index,
      of: job.vms.length,
      disk: p.disk,
      done: p.done,
      total: p.total,
      bytesNew: p.stats.bytesNew,
    });
  const onWarning = (m: string): void => o.log?.warn(`backup job ${job.name}, VM ${entry.vm.name}: ${m}`);
  const codec = o.codecInit ? { codecInit: o.codecInit } : {};
  if (entry.source.kind === 'disks') {
    const point = await backupVm({
      repo,
      vm: entry.vm,
      disks: entry.source.disks,
      consistency: job.consistency,
      time: (o.now ?? (() => new Date()))(),
      ...codec,
      onProgress,
      onWarning,
    });
    // An image file is read whole: there is no bitmap to speak of.
    return { point, cbt: null };
  }
  const hostScripts = confinedScripts(job, o.scriptsDir);
  const r = await backupLiveVm({
    repo,
    vm: entry.vm,
    source: entry.source,
    consistency: job.consistency,
    requireConsistency: job.requireConsistency,
    ...codec,
    ...(hostScripts ? { hostScripts } : {}),
    ...(o.signal ? { signal: o.signal } : {}),
    onProgress,
    onWarning,
  });
  return { point: r.point, cbt: r.changedBlockTracking };
}

/** Prunes the VM's group after its backup succeeded; the ids removed. */
async function applyRetention(o: BackupJobRunOptions, vm: string): Promise<string[]> {
  const retention = o.job.retention;
  if (retention === undefined) return [];
  const policy: PrunePolicy = {};
  for (const k of KEEP_RULES) if (retention[k] !== undefined) policy[k] = retention[k];
  const report = await pruneRepository(o.repo, { ...policy, vm });
  const removed = report.removed.map((p) => p.id);
  await forgetPoints(o.history.catalog, o.repo.path, removed);
  if (removed.length > 0) o.log?.info(`backup job ${o.job.name}: pruned ${removed.length} point(s) of ${vm}: ${removed.join(', ')}`);
  if (retention.gc && removed.length > 0) {
    const gc = await collectGarbage(o.repo);
    o.log?.info(`backup job ${o.job.name}: gc freed ${gc.bytesFreed} bytes (${gc.chunksRemoved} chunk(s))`);
  }
  return removed;
}

async function backupOne(o: BackupJobRunOptions, entry: BackupJobVm, index: number): Promise<BackupVmResult> {
  const base = {
    vm: entry.vm.name,
    point: null,
    consistency: null,
    changedBlockTracking: null,
    bytesRead: 0,
    bytesNew: 0,
    pruned: [],
    pruneError: null,
  };
  if (o.signal?.aborted)
    return { ...base, status: 'cancelled', seconds: 0, error: "the run was cancelled before this VM's backup started" };
  const t0 = performance.now();
  let taken: Taken;
  try {
    taken = await takeBackup(o, entry, index);
    await recordPoint(o.history.catalog, o.repo.path, taken.point);
  } catch (err) {
    o.log?.warn(`backup job ${o.job.name}: VM ${entry.vm.name} failed: ${describe(err)}`);
    return {
      ...base,
      status: o.signal?.aborted ? 'cancelled' : 'failed',
      seconds: Math.round(performance.now() - t0) / 1000,
      error: describe(err),
    };
  }
  const { point, cbt } = taken;
  const result: BackupVmResult = {
    ...base,
    status: 'success',
    point: point.id,
    consistency: point.consistency,
    changedBlockTracking: cbt,
    bytesRead: point.stats.bytesRead,
    bytesNew: point.stats.bytesNew,
    seconds: point.stats.seconds,
    error: null,
  };
  try {
    result.pruned = await applyRetention(o, entry.vm.name);
  } catch (err) {
    result.pruneError = describe(err);
    o.log?.warn(`backup job ${o.job.name}: the backup of ${entry.vm.name} is recorded, but its retention failed: ${result.pruneError}`);
  }
  return result;
}

function runStatus(vms: BackupVmResult[], cancelled: boolean): BackupJobRunResult['status'] {
  const ok = vms.filter((v) => v.status === 'success').length;
  if (cancelled && ok < vms.length) return 'cancelled';
  if (ok === vms.length) return vms.some((v) => v.pruneError !== null) ? 'warning' : 'success';
  return ok === 0 ? 'failed' : 'partial';
}

export async function runBackupJob(o: BackupJobRunOptions): Promise<BackupJobRunResult> {
  const vms: BackupVmResult[] = [];
  for (const [i, entry] of o.job.vms.entries()) {
    const r = await backupOne(o, entry, i);
    await o.history.recordVm(o.runId, i, r);
    vms.push(r);
  }
  let status = runStatus(vms, o.signal?.aborted ?? false);
  const notes: string[] = [];
  const failed = vms.filter((v) => v.status !== 'success');
  if (failed.length > 0) notes.push(`${failed.length} of ${vms.length} VM(s) not backed up: ${failed.map((v) => v.vm).join(', ')}`);
  const pruneFailed = vms.filter((v) => v.pruneError !== null);
  if (pruneFailed.length > 0) notes.push(`retention failed for ${pruneFailed.map((v) => v.vm).join(', ')}`);
  let surebackup: FiredSureBackup[] = [];
  if (o.job.surebackup.length > 0) {
    if (failed.length > 0) {
      notes.push(`linked SureBackup job(s) ${o.job.surebackup.join(', ')} not fired: they verify a complete run`);
    } else if (!o.fireSureBackup) {
      notes.push(`linked SureBackup job(s) ${o.job.surebackup.join(', ')} not fired: no scheduler to run them`);
      status = 'warning';
    } else {
      surebackup = await o.fireSureBackup(o.job.surebackup, { job: o.job.name, run: o.runId });
      const bad = surebackup.filter((s) => s.run === null);
      if (bad.length > 0) {
        notes.push(`SureBackup job(s) not started: ${bad.map((s) => `${s.job} (${s.detail ?? s.status})`).join(', ')}`);
        status = 'warning';
      }
    }
  }
  const detail = notes.length > 0 ? notes.join('; ') : null;
  await o.history.finishRun(o.runId, status, detail, surebackup);
  return { run: o.runId, job: o.job.name, status, detail, vms, surebackup };
}

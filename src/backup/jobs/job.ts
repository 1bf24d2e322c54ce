/**
 * Backup jobs (docs/backup.md, "Backup jobs"): which VMs to back up from
 * which source, how consistent, when, how many points to keep, and which
 * SureBackup jobs verify the result.
 *
 * Words:
 * - *source*: where a VM's disks are read: image files (`disks`), a running
 *   QEMU through its QMP socket (`qmp`, optionally `qga`), or a libvirt
 *   domain (`domain`, optionally `uri`).
 * - *group*: the restore points of one VM (by its definition's name), the
 *   unit retention works on (src/repo/prune.ts).
 * - *linked SureBackup jobs*: verification jobs fired once every VM of a
 *   run is backed up.
 *
 * A job file is checked completely when it is loaded (schema, exactly one
 * source per VM, the VM definitions, their disks, the cron expression, the
 * retention rules, host scripts), so a bad job fails before anything is read
 * or written. Relative paths are relative to the job file's directory.
 */
import { existsSync, readdirSync } from 'node:fs';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { Cron } from 'croner';
import { badInput, notFound } from '../../errors.js';
import { assertValid, readJsonFile } from '../../schema/validate.js';
import { loadVmDefinition, type VmDefinition } from '../../vm/definition.js';
import { planDisks } from '../engine.js';
import { resolveScript } from '../../verify/script.js';
import { projectPath } from '../../paths.js';
import type { Config } from '../../config/config.js';
import type { PrunePolicy } from '../../repo/prune.js';
import type { Consistency } from '../../repo/contract.js';
import type { HostScripts, LiveSource } from '../live/index.js';

export type BackupSource = { kind: 'disks'; disks: Record<string, string> } | LiveSource;

export interface BackupJobVm {
  /** The VM definition file, absolute. */
  file: string;
  vm: VmDefinition;
  source: BackupSource;
}

export interface Retention extends PrunePolicy {
  /** Run gc after a prune that removed points. */
  gc?: boolean;
}

export interface BackupJob {
  name: string;
  description?: string;
  /** The job file, absolute. */
  file: string;
  /** Absolute; absent: the configured repository. */
  repository?: string;
  vms: BackupJobVm[];
  consistency: Consistency;
  requireConsistency: boolean;
  schedule?: string;
  retention?: Retention;
  /** Absolute paths of executables, checked at load. */
  hostScripts?: HostScripts;
  surebackup: string[];
}

/** The job file as written (config/schemas/backup-job.schema.json). */
interface BackupJobFile {
  name: string;
  description?: string;
  repository?: string;
  vms: { vm: string; source: { disks?: Record<string, string>; qmp?: string; qga?: string; domain?: string; uri?: string } }[];
  consistency?: Consistency;
  requireConsistency?: boolean;
  schedule?: string;
  retention?: Retention;
  hostScripts?: HostScripts;
  surebackup?: string[];
}

const SOURCE_KINDS = ['disks', 'qmp', 'domain'] as const;
const KEEP_RULES = ['keepLast', 'keepHourly', 'keepDaily', 'keepWeekly', 'keepMonthly', 'keepYearly'] as const;

/**
 * "Exactly one source" checked before the schema, because ajv's report of a
 * failed oneOf is three "must have required property" lines that hide the
 * one thing to fix.
 */
function checkSources(value: unknown, what: string): void {
  const vms = (value as { vms?: unknown } | null)?.vms;
  if (!Array.isArray(vms)) return;
  vms.forEach((v: unknown, i) => {
    const src = (v as { source?: unknown } | null)?.source;
    if (typeof src !== 'object' || src === null || Array.isArray(src)) return;
    const given = SOURCE_KINDS.filter((k) => k in src);
    if (given.length !== 1) {
      throw badInput(
        'BACKUP_JOB_SOURCE',
        `${what}: /vms/${i}/source names ${given.length === 0 ? 'no source' : `${given.length} sources (${given.join(', ')})`}`,
        'give exactly one of "disks" (image files), "qmp" (a running QEMU\'s QMP socket) or "domain" (a libvirt domain)',
      );
    }
  });
}

function sourceOf(s: BackupJobFile['vms'][number]['source'], abs: (p: string) => string): BackupSource {
  if (s.disks !== undefined) return { kind: 'disks', disks: Object.fromEntries(Object.entries(s.disks).map(([d, p]) => [d, abs(p)])) };
  if (s.qmp !== undefined) return { kind: 'qmp', qmp: abs(s.qmp), ...(s.qga !== undefined ? { qga: abs(s.qga) } : {}) };
  return { kind: 'libvirt', domain: s.domain as string, ...(s.uri !== undefined ? { uri: s.uri } : {}) };
}

/** A backup job from its parsed JSON; `file` is where it came from (paths are relative to its directory). */
export function parseBackupJob(value: unknown, file: string): BackupJob {
  const path = resolve(file);
  const what = `backup job ${path}`;
  checkSources(value, what);
  const j = assertValid<BackupJobFile>('backup-job.schema.json', value, what);
  const base = dirname(path);
  const abs = (p: string): string => (isAbsolute(p) ? p : resolve(base, p));
  if (j.schedule !== undefined) {
    try {
      new Cron(j.schedule, { paused: true }).stop();
    } catch (err) {
      throw badInput(
        'BAD_SCHEDULE',
        `backup job ${j.name}: schedule "${j.schedule}" is not a valid cron expression (${(err as Error).message})`,
        'use five or six cron fields, e.g. "0 1 * * *" for 01:00 every day',
      );
    }
  }
  if (j.retention !== undefined && !KEEP_RULES.some((k) => (j.retention?.[k] ?? 0) > 0)) {
    throw badInput(
      'BACKUP_JOB_RETENTION',
      `backup job ${j.name}: retention keeps no point: every backup would be pruned away`,
      `set at least one of ${KEEP_RULES.join(', ')} above 0, or leave "retention" out to keep every point`,
    );
  }
  const seen = new Map<string, string>();
  const vms = j.vms.map((entry, i): BackupJobVm => {
    const vmFile = abs(entry.vm);
    const vm = loadVmDefinition(vmFile);
    const other = seen.get(vm.name);
    if (other !== undefined) {
      throw badInput(
        'BACKUP_JOB_VM_TWICE',
        `backup job ${j.name}: /vms/${i} (${vmFile}) is VM ${vm.name} again (also ${other})`,
        "list each VM once: two backups of one VM in one run would prune each other's points",
      );
    }
    seen.set(vm.name, vmFile);
    const source = sourceOf(entry.source, abs);
    // Disk names and images are checked now, not at 02:00.
    if (source.kind === 'disks') planDisks(vm, source.disks);
    return { file: vmFile, vm, source };
  });
  const hostScripts =
    j.hostScripts === undefined
      ? undefined
      : (Object.fromEntries(
          Object.entries(j.hostScripts).map(([k, p]) => [k, resolveScript(p, base, `backup job ${j.name}, hostScripts.${k}`)]),
        ) as HostScripts);
  return {
    name: j.name,
    file: path,
    vms,
    consistency: j.consistency ?? 'crash',
    requireConsistency: j.requireConsistency ?? false,
    surebackup: j.surebackup ?? [],
    ...(j.description !== undefined ? { description: j.description } : {}),
    ...(j.repository !== undefined ? { repository: abs(j.repository) } : {}),
    ...(j.schedule !== undefined ? { schedule: j.schedule } : {}),
    ...(j.retention !== undefined ? { retention: j.retention } : {}),
    ...(hostScripts !== undefined ? { hostScripts } : {}),
  };
}

export function loadBackupJob(file: string): BackupJob {
  return parseBackupJob(readJsonFile(file, 'backup job'), file);
}

/** Every *.json job in `dir`, checked (a bad file is an error naming it); two files with one job name are refused. */
export function loadBackupJobsDir(dir: string): BackupJob[] {
  let names: string[];
  try {
    names = readdirSync(dir)
      .filter((n) => n.endsWith('.json'))
      .sort();
  } catch {
    throw notFound(
      'BACKUP_JOBS_DIR_NOT_FOUND',
      `backup jobs directory ${dir} does not exist`,
      'create it, or point --backup-jobs (or RESTORELAB_BACKUP_JOBS_DIR, or backupJobsDir in the config) at the directory holding your backup job files',
    );
  }
  const jobs = names.map((n) => loadBackupJob(join(dir, n)));
  const byName = new Map<string, string>();
  for (const job of jobs) {
    const other = byName.get(job.name);
    if (other !== undefined)
      throw badInput(
        'BACKUP_JOB_NAME_TWICE',
        `backup jobs ${other} and ${job.file} are both named ${job.name}`,
        'give each job its own name',
      );
    byName.set(job.name, job.file);
  }
  return jobs;
}

/**
 * `NAME|FILE` of `backup-job run`: a path (it has a `/`, ends in .json or
 * exists) is a job file; anything else names a job in `dir`, whose other
 * files may be broken without hiding it.
 */
export function findBackupJob(nameOrFile: string, dir: string): BackupJob {
  if (nameOrFile.endsWith('.json') || nameOrFile.includes('/') || existsSync(nameOrFile)) return loadBackupJob(nameOrFile);
  const { jobs, invalid } = scanBackupJobsDir(dir);
  const job = jobs.find((x) => x.name === nameOrFile);
  if (!job) {
    throw notFound(
      'BACKUP_JOB_NOT_FOUND',
      `no backup job named ${nameOrFile} in ${dir}`,
      `known jobs: ${jobs.map((x) => x.name).join(', ') || 'none'}${invalid.length ? `; files that do not load: ${invalid.map((x) => x.file).join(', ')}` : ''}; or give the job file's path`,
    );
  }
  return job;
}

/** The backup jobs directory: `--backup-jobs`, else backupJobsDir of the config (RESTORELAB_BACKUP_JOBS_DIR overrides it), else lab-templates/backup-jobs. */
export function backupJobsDir(flag: string | undefined, cfg: Pick<Config, 'backupJobsDir'>): string {
  return resolve(flag ?? cfg.backupJobsDir ?? projectPath('lab-templates', 'backup-jobs'));
}

/** Every job of `dir` that loads, and the files that do not with why: what listings show (the server refuses a bad file instead). */
export function scanBackupJobsDir(dir: string): { jobs: BackupJob[]; invalid: { file: string; error: string }[] } {
  const jobs: BackupJob[] = [];
  const invalid: { file: string; error: string }[] = [];
  const names = existsSync(dir)
    ? readdirSync(dir)
        .filter((n) => n.endsWith('.json'))
        .sort()
    : [];
  for (const n of names) {
    const file = join(dir, n);
    try {
      jobs.push(loadBackupJob(file));
    } catch (err) {
      invalid.push({ file, error: (err as Error).message });
    }
  }
  return { jobs, invalid };
}

/**
 * The record a SureBackup verification VM keeps in its work directory
 * (`<stateDir>/surebackup/vms/<vm>-<id>/vm.json`): which process runs it and
 * what it holds on the host. A run (or a lab worker) killed mid-verification
 * leaves its VM running; the record is how `restorelab cleanup` and a
 * returning worker tell that VM from one a live run still needs.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileAtomicSync } from '../host/atomic-file.js';

export const VM_RECORD_FILE = 'vm.json';

export interface VerificationVmRecord {
  /** The process of the run that verifies this VM. */
  pid: number;
  driver: string;
  /** The domain's name under the driver (`sb-<vm>-<id>`). */
  domain: string;
  lab: string;
  /** Taps it added to the lab, once brought up. */
  taps: string[];
}

export interface VerificationVm {
  /** `<vm>-<id>`: the work directory's name, and the owner id of its publication. */
  name: string;
  dir: string;
  /** Undefined when the record is missing or unreadable (a VM of an older version, or one being set up). */
  record?: VerificationVmRecord;
}

export function verificationVmsDir(stateDir: string): string {
  return join(stateDir, 'surebackup', 'vms');
}

export function writeVmRecord(work: string, rec: VerificationVmRecord): void {
  writeFileAtomicSync(work, VM_RECORD_FILE, JSON.stringify(rec) + '\n');
}

export function listVerificationVms(stateDir: string): VerificationVm[] {
  const root = verificationVmsDir(stateDir);
  if (!existsSync(root)) return [];
  return readdirSync(root)
    .sort()
    .map((name) => {
      const dir = join(root, name);
      const record = readRecord(dir);
      return { name, dir, ...(record ? { record } : {}) };
    });
}

/** Names cleanup hands to the driver and the lab: never a path. */
const SAFE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

function readRecord(dir: string): VerificationVmRecord | undefined {
  try {
    const r = JSON.parse(readFileSync(join(dir, VM_RECORD_FILE), 'utf8')) as Partial<VerificationVmRecord>;
    if (typeof r.pid !== 'number' || typeof r.driver !== 'string' || typeof r.domain !== 'string' || typeof r.lab !== 'string')
      return undefined;
    if (!Number.isInteger(r.pid) || !SAFE_NAME.test(r.domain) || !SAFE_NAME.test(r.lab)) return undefined;
    return {
      pid: r.pid,
      driver: r.driver,
      domain: r.domain,
      lab: r.lab,
      taps: Array.isArray(r.taps) ? r.taps.filter((t) => typeof t === 'string' && SAFE_NAME.test(t)) : [],
    };
  } catch {
    return undefined;
  }
}

/**
 * PLACEHOLDER for live backup of running VMs (issue 15, items 1-4), built on
 * another branch: the lead replaces this file with the real one at merge.
 * Only the signature matters here: backup jobs (src/backup/jobs) call it for
 * `{qmp}` and `{domain}` sources.
 */
import type { Repository } from '../../repo/api.js';
import type { VmDefinition } from '../../vm/definition.js';
import type { Consistency, RestorePoint } from '../../repo/contract.js';
import type { CodecInit } from '../chunk-pool.js';
import type { BackupProgress } from '../engine.js';
import { RestorelabError } from '../../errors.js';

export type LiveSource = { kind: 'qmp'; qmp: string; qga?: string } | { kind: 'libvirt'; domain: string; uri?: string };
export interface HostScripts { preFreeze?: string; postThaw?: string }
export interface LiveBackupOptions {
  repo: Repository; vm: VmDefinition; source: LiveSource; codecInit?: CodecInit;
  consistency: Consistency; requireConsistency?: boolean; hostScripts?: HostScripts;
  onProgress?: (p: BackupProgress) => void; onWarning?: (m: string) => void; signal?: AbortSignal;
}
export interface LiveBackupResult { point: RestorePoint; changedBlockTracking: { used: boolean; reason: string } }

export function backupLiveVm(o: LiveBackupOptions): Promise<LiveBackupResult> {
  const what = o.source.kind === 'qmp' ? `QMP socket ${o.source.qmp}` : `libvirt domain ${o.source.domain}`;
  return Promise.reject(new RestorelabError('LIVE_BACKUP_UNAVAILABLE', `live backup of VM ${o.vm.name} (${what}) is not available in this build`, {
    hint: 'back up the VM\'s disk images instead: a "disks" source in the backup job',
  }));
}

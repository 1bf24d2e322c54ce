/**
 * Backups: the disk images of a VM into a new restore point of the
 * configured repository, as `restorelab backup`, run as a long operation.
 * The VM is named, not given as a file: the API reads definitions from
 * lab-templates/vms only, so a request cannot make the server parse an
 * arbitrary file as a definition; the images a definition names are as
 * trusted as the definition. Image paths given in the body must lie under
 * api.sourceRoots (src/api/host-paths.ts): an operator may back up what the
 * host's admin put there, not any file the server can read.
 * A backup that succeeded triggers the afterBackup jobs covering its VM
 * through the server's scheduler (none when it runs with --no-schedule); the
 * result names their runs. A failed or cancelled backup triggers nothing.
 */
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import type { RegisterRoutes } from './register.js';
import { apiError } from '../errors.js';
import { principal } from '../route-table.js';
import { accepted } from '../sse.js';
import { openDefaultRepository } from '../repositories.js';
import { allowedSource } from '../host-paths.js';
import { percentProgress } from './progress.js';
import { projectPath } from '../../paths.js';
import { loadVmDefinition, type VmDefinition } from '../../vm/definition.js';
import { triggeredRun, type TriggeredRun } from '../../scheduler/notice.js';
import type { ApiContext } from '../context.js';
import { backupVm, planDisks } from '../../backup/engine.js';
import { recordPoint } from '../../catalog/catalog.js';
import type { Consistency } from '../../repo/contract.js';

export const VM_DEFINITIONS_DIR = projectPath('lab-templates', 'vms');

/** The definition file of a VM by name (the schema's pattern keeps `/` and `..` out of it). */
function vmDefinitionFile(name: string): string {
  const file = join(VM_DEFINITIONS_DIR, `${name}.json`);
  if (!existsSync(file)) {
    const known = readdirSync(VM_DEFINITIONS_DIR)
      .filter((f) => f.endsWith('.json'))
      .map((f) => f.slice(0, -5))
      .sort();
    throw apiError('NOT_FOUND', `no VM definition "${name}" in ${VM_DEFINITIONS_DIR} (there are: ${known.join(', ') || 'none'})`);
  }
  return file;
}

/**
 * Triggers the afterBackup jobs covering `vm`; the runs started (or skipped
 * because the job was still running), each with its /runs/:id. The backup
 * itself succeeded: a trigger that fails is logged, not a failed backup.
 */
async function afterBackupRuns(scheduler: ApiContext['scheduler'], vm: VmDefinition, log: (m: string) => void): Promise<TriggeredRun[]> {
  if (!scheduler) {
    log('after-backup: this server runs no scheduler (--no-schedule): afterBackup jobs were not triggered');
    return [];
  }
  try {
    const runs = (await scheduler.notifyBackup([{ name: vm.name, ...(vm.tags ? { tags: vm.tags } : {}) }])).map(triggeredRun);
    for (const r of runs)
      log(
        `after-backup: job ${r.job} ${r.status === 'running' ? 'started as' : 'skipped (still running),'} run ${r.run} (/api/v1/runs/${r.run})`,
      );
    if (runs.length === 0) log(`after-backup: no afterBackup job covers ${vm.name}`);
    return runs;
  } catch (err) {
    log(`after-backup: triggering the afterBackup jobs failed: ${(err as Error).message}`);
    return [];
  }
}

export const backupRoutes: RegisterRoutes = (t, ctx) => {
  t.add({
    method: 'post',
    path: '/backups',
    role: 'operator',
    tag: 'backups',
    summary: 'backs up the disk images of a VM as a new restore point; progress per disk, result = the restore point',
    body: 'api-backup.schema.json',
    success: { status: 202, description: 'the backup operation; once succeeded, `resource` is the new point' },
    handler: async (req, res) => {
      const b = req.body as { vm: string; disks?: Record<string, string>; consistency: Consistency };
      const vm = loadVmDefinition(vmDefinitionFile(b.vm));
      // From here on the real paths: what was checked is what is read.
      const disks =
        b.disks === undefined
          ? undefined
          : Object.fromEntries(
              Object.entries(b.disks).map(([name, path]) => [name, allowedSource(ctx.config.api, path, `image of disk ${name}`)]),
            );
      // Everything that can be checked before the work starts is a 4xx now, not a failed operation later.
      const plan = planDisks(vm, disks);
      for (const d of plan) {
        if (!existsSync(d.path))
          throw apiError('NOT_FOUND', `image ${d.path} of disk ${d.name} of VM ${vm.name} does not exist on the server`);
      }
      const repo = await openDefaultRepository(ctx);
      const order = vm.disks.map((d) => d.name);
      const op = ctx.operations.start('backup', principal(res).name, async (o) => {
        const progress = percentProgress(o);
        const point = await backupVm({
          repo,
          vm,
          consistency: b.consistency,
          ...(disks ? { disks } : {}),
          onWarning: (m) => o.log(m),
          onProgress: (p) => {
            // Disks are backed up one after the other, in definition order.
            const i = Math.max(0, order.indexOf(p.disk));
            const share = p.total > 0 ? p.done / p.total : 1;
            progress((i + share) / order.length, `disk ${p.disk}: ${p.done} of ${p.total} bytes, ${p.stats.bytesNew} new`);
          },
        });
        await recordPoint(ctx.sql, repo.path, point);
        ctx.log.info({ point: point.id, vm: vm.name, stats: point.stats }, 'backup done');
        const signals = point.stats.signals;
        if (signals?.anomaly) {
          o.log(`ransomware signals: ANOMALY: ${signals.reasons.join('; ')}`);
          ctx.log.warn({ point: point.id, vm: vm.name, reasons: signals.reasons }, 'backup is a ransomware anomaly');
        }
        const afterBackup = await afterBackupRuns(ctx.scheduler, vm, (m) => o.log(m));
        return { result: { ...point, afterBackup }, resource: `/api/v1/points/${point.id}` };
      });
      accepted(res, op);
    },
  });
};

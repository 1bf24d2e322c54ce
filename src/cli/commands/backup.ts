/** `restorelab backup`: disk images of a VM into a restore point (docs/backup.md). */
import type { Command } from 'commander';
import { resolve } from 'node:path';
import { contextFor, type CommandContext } from '../context.js';
import type { AfterBackupReport } from '../../scheduler/after-backup.js';
import type { BackedUpVm } from '../../scheduler/scheduler.js';
import { openRepoFromFlags, withCatalog, type RepoFlags } from './repo.js';
import type { VmDefinition } from '../../vm/definition.js';
import type { Consistency } from '../../repo/contract.js';
import { ExitCode, badInput } from '../../errors.js';
import { formatBytes } from '../output.js';
import { projectPath } from '../../paths.js';

/**
 * `--disk NAME=PATH` names the disk; a bare `--disk PATH` goes to the next
 * disk of the definition not named otherwise, in definition order.
 */
export function assignDisks(vm: VmDefinition, args: readonly string[]): Record<string, string> {
  const names = vm.disks.map((d) => d.name);
  const named: Record<string, string> = {};
  const bare: string[] = [];
  for (const a of args) {
    const eq = a.indexOf('=');
    const name = eq > 0 ? a.slice(0, eq) : undefined;
    if (name !== undefined && names.includes(name)) {
      if (named[name] !== undefined) throw badInput('BACKUP_DISK_TWICE', `disk "${name}" is given twice`, 'give each disk once');
      named[name] = a.slice(eq + 1);
    } else {
      bare.push(a);
    }
  }
  const free = names.filter((n) => named[n] === undefined);
  if (bare.length > free.length) {
    throw badInput('BACKUP_DISK_UNKNOWN', `${bare.length} unnamed --disk image(s) given but VM ${vm.name} has only ${free.length} disk(s) left to fill (${free.join(', ') || 'none'})`,
      `name them: --disk NAME=PATH with NAME one of ${names.join(', ')}`);
  }
  bare.forEach((p, i) => { named[free[i] as string] = p; });
  return named;
}

export function registerBackup(program: Command): void {
  program
    .command('backup')
    .description('back up the disk images of a VM as a new restore point')
    .requiredOption('--vm <file>', 'VM definition (JSON, see config/schemas/vm.schema.json)')
    .option('--repo <dir>', 'repository directory (default: the configured one)')
    .option('--disk <image>', 'image of a disk: NAME=PATH, or PATH for the next disk of the definition (repeatable)', (v: string, acc: string[]) => [...acc, v], [] as string[])
    .option('--key-file <file>', 'key file of an encrypted repository')
    .option('--consistency <state>', 'crash, filesystem or application', 'crash')
    .option('--jobs <dir>', 'SureBackup jobs whose afterBackup runs follow the backup (default: RESTORELAB_JOBS_DIR or lab-templates/jobs; a server on this state directory uses its own)')
    .option('--no-after-backup', 'do not run or trigger the afterBackup jobs covering the VM')
    .option('--json', 'print one JSON object')
    .action(async (o: RepoFlags & { vm: string; disk: string[]; consistency: string; jobs?: string; afterBackup: boolean }, c: Command) => {
      const { backupVm } = await import('../../backup/engine.js');
      const { describeSignals } = await import('../../backup/signals.js');
      const { recordPoint } = await import('../../catalog/catalog.js');
      const { loadVmDefinition } = await import('../../vm/definition.js');
      const ctx = contextFor(c);
      if (!['crash', 'filesystem', 'application'].includes(o.consistency)) {
        throw badInput('BAD_CONSISTENCY', `consistency "${o.consistency}" is not one of crash, filesystem, application`, 'pass --consistency crash (the default for images)');
      }
      const vm = loadVmDefinition(o.vm);
      const disks = assignDisks(vm, o.disk);
      const { repo, codecInit } = await openRepoFromFlags(ctx, o);
      const total = vm.disks.length;
      let bar: ReturnType<typeof ctx.out.progress> | undefined;
      let current = '';
      const point = await backupVm({
        repo, vm, disks, codecInit, consistency: o.consistency as Consistency,
        onWarning: (m) => ctx.out.warn(m),
        onProgress: (p) => {
          if (p.disk !== current) {
            bar?.finish();
            current = p.disk;
            bar = ctx.out.progress(`backup ${vm.name}/${p.disk}`, p.total);
          }
          bar?.update(p.done, `new ${formatBytes(p.stats.bytesNew)}`);
        },
      });
      bar?.finish();
      await withCatalog(ctx, (db) => recordPoint(db, repo.path, point));
      const { signals: sig, ...s } = point.stats;
      const signals = sig ?? null;
      const summary = `restore point ${point.id} of ${vm.name} (${total} disk(s)) in ${s.seconds} s: read ${formatBytes(s.bytesRead)}, ` +
        `new ${formatBytes(s.bytesNew)}, reused ${formatBytes(s.bytesReused)}, zero ${formatBytes(s.bytesZero)}` +
        (signals ? `\n${describeSignals(signals)}` : '');
      // Not a failure (the point is good data of whatever the VM holds), but nobody should miss it, --json or not.
      if (signals?.anomaly) ctx.out.warn(`restore point ${point.id} of ${vm.name} is a ransomware ANOMALY: ${signals.reasons.join('; ')}`);
      // afterBackup jobs verify the configured repository: a point elsewhere is not theirs to boot.
      const elsewhere = o.repo !== undefined && resolve(o.repo) !== resolve((await ctx.config()).repository);
      if (o.afterBackup && elsewhere) ctx.out.info(`after-backup: ${repo.path} is not the configured repository, which afterBackup jobs verify: none triggered`);
      if (!o.afterBackup || elsewhere) {
        ctx.out.result({ restorePoint: point.id, vm: vm.name, stats: s, signals, afterBackup: null }, () => summary);
        return;
      }
      const { afterBackupPassed, renderAfterBackup } = await import('../../scheduler/after-backup.js');
      const after = await runAfterBackup(ctx, o.jobs, { name: vm.name, ...(vm.tags ? { tags: vm.tags } : {}) }, point.id);
      ctx.out.result({ restorePoint: point.id, vm: vm.name, stats: s, signals, afterBackup: after ?? null }, () =>
        after ? `${summary}\n${renderAfterBackup(after, vm.name)}` : summary);
      // The point is recorded either way; a failed verdict of it is its own exit code (docs/cli.md).
      if (after && !afterBackupPassed(after)) process.exitCode = ExitCode.verifyFailed;
    });
}

/**
 * Runs or hands over the afterBackup jobs (src/scheduler/after-backup.ts).
 * The backup already succeeded: a problem here is a warning, and undefined.
 */
async function runAfterBackup(ctx: CommandContext, jobs: string | undefined, vm: BackedUpVm, point: string): Promise<AfterBackupReport | undefined> {
  const { afterBackup } = await import('../../scheduler/after-backup.js');
  const cfg = await ctx.config();
  const ac = new AbortController();
  const cancel = (sig: string): void => { ctx.out.warn(`${sig}: cancelling the afterBackup runs, tearing their labs down`); ac.abort(new Error(`cancelled by ${sig}`)); };
  const onInt = (): void => cancel('SIGINT'); const onTerm = (): void => cancel('SIGTERM');
  process.once('SIGINT', onInt); process.once('SIGTERM', onTerm);
  try {
    return await afterBackup({
      cfg, jobsDir: resolve(jobs ?? process.env.RESTORELAB_JOBS_DIR ?? projectPath('lab-templates', 'jobs')), vm, point, signal: ac.signal,
      log: { info: (l) => ctx.out.info(l), warn: (l) => ctx.out.warn(l) },
    });
  } catch (err) {
    const e = err as Error & { hint?: string };
    ctx.out.warn(`the backup is recorded, but its afterBackup jobs did not run: ${e.message}${e.hint ? ` (${e.hint})` : ''}`);
    process.exitCode = ExitCode.verifyFailed;
    return undefined;
  } finally {
    process.off('SIGINT', onInt); process.off('SIGTERM', onTerm);
  }
}

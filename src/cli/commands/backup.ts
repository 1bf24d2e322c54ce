/** `restorelab backup`: disk images of a VM into a restore point (docs/backup.md). */
import type { Command } from 'commander';
import { resolve } from 'node:path';
import { contextFor, type CommandContext } from '../context.js';
import type { AfterBackupReport } from '../../scheduler/after-backup.js';
import type { BackedUpVm } from '../../scheduler/scheduler.js';
import { openRepoFromFlags, withCatalog, type RepoFlags } from './repo.js';
import type { VmDefinition } from '../../vm/definition.js';
import type { Consistency, RestorePoint } from '../../repo/contract.js';
import { ExitCode, RestorelabError, badInput } from '../../errors.js';
import type { BackupProgress } from '../../backup/engine.js';
import type { LiveBackupResult, LiveSource } from '../../backup/live/index.js';
import { formatBytes } from '../../format/output.js';
import { projectPath } from '../../paths.js';
import { resolveRepository } from '../../repo/open.js';
import { tracePhase } from '../../host/trace.js';

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
    throw badInput(
      'BACKUP_DISK_UNKNOWN',
      `${bare.length} unnamed --disk image(s) given but VM ${vm.name} has only ${free.length} disk(s) left to fill (${free.join(', ') || 'none'})`,
      `name them: --disk NAME=PATH with NAME one of ${names.join(', ')}`,
    );
  }
  bare.forEach((p, i) => {
    named[free[i] as string] = p;
  });
  return named;
}

interface LiveFlags {
  qmp?: string;
  qga?: string;
  domain?: string;
  libvirtUri: string;
  requireConsistency?: boolean;
  preFreeze?: string;
  postThaw?: string;
}

/** The live source the flags name, or undefined for an image backup; contradictory flags are refused. */
export function liveSource(o: LiveFlags & { disk: string[] }): LiveSource | undefined {
  if (o.qmp && o.domain)
    throw badInput(
      'BACKUP_SOURCE_CONFLICT',
      '--qmp and --domain both given',
      'give one: --qmp SOCKET for a QEMU VM, --domain NAME for a libvirt domain',
    );
  const live = o.qmp !== undefined || o.domain !== undefined;
  if (live && o.disk.length > 0)
    throw badInput(
      'BACKUP_SOURCE_CONFLICT',
      '--disk cannot be combined with --qmp or --domain',
      'a live backup reads the disks from the running VM; drop --disk',
    );
  if (!live) {
    const stray = (['qga', 'requireConsistency', 'preFreeze', 'postThaw'] as const).filter((k) => o[k] !== undefined);
    if (stray.length > 0)
      throw badInput(
        'BACKUP_SOURCE_CONFLICT',
        `${stray.map((k) => `--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`).join(', ')} only apply to a live backup`,
        'add --qmp SOCKET or --domain NAME',
      );
    return undefined;
  }
  if (o.qga && !o.qmp)
    throw badInput(
      'BACKUP_SOURCE_CONFLICT',
      "--qga goes with --qmp; a libvirt domain is frozen through libvirt's own agent channel",
      'drop --qga',
    );
  return o.qmp !== undefined
    ? { kind: 'qmp', qmp: resolve(o.qmp), ...(o.qga ? { qga: resolve(o.qga) } : {}) }
    : { kind: 'libvirt', domain: o.domain as string, uri: o.libvirtUri };
}

export function registerBackup(program: Command): void {
  program
    .command('backup')
    .description('back up the disk images of a VM as a new restore point')
    .requiredOption('--vm <file>', 'VM definition (JSON, see config/schemas/vm.schema.json)')
    .option('--repo <repo>', 'repository directory or s3:// URL (default: the configured one)')
    .option(
      '--disk <image>',
      'image of a disk: NAME=PATH, or PATH for the next disk of the definition (repeatable)',
      (v: string, acc: string[]) => [...acc, v],
      [] as string[],
    )
    .option('--key-file <file>', 'key file of an encrypted repository')
    .option('--consistency <state>', 'crash, filesystem or application (live backups freeze the guest for the last two)', 'crash')
    .option('--qmp <socket>', 'back up the running VM behind this QMP socket (live backup; no --disk)')
    .option('--qga <socket>', 'its guest-agent socket, for --consistency filesystem|application')
    .option('--domain <name>', 'back up this running libvirt domain (live backup; no --disk)')
    .option('--libvirt-uri <uri>', 'libvirt connection for --domain', 'qemu:///system')
    .option('--require-consistency', 'fail instead of falling back to crash-consistent when the guest cannot be frozen')
    .option('--pre-freeze <script>', 'host script run before the freeze (--consistency application)')
    .option('--post-thaw <script>', 'host script run after the thaw (--consistency application)')
    .option(
      '--jobs <dir>',
      'SureBackup jobs whose afterBackup runs follow the backup (default: RESTORELAB_JOBS_DIR or lab-templates/jobs; a server on this state directory uses its own)',
    )
    .option('--no-after-backup', 'do not run or trigger the afterBackup jobs covering the VM')
    .option('--json', 'print one JSON object')
    .action(
      async (
        o: RepoFlags & LiveFlags & { vm: string; disk: string[]; consistency: string; jobs?: string; afterBackup: boolean },
        c: Command,
      ) => {
        tracePhase('backup: command starts');
        const ctx = contextFor(c);
        if (!['crash', 'filesystem', 'application'].includes(o.consistency)) {
          throw badInput(
            'BAD_CONSISTENCY',
            `consistency "${o.consistency}" is not one of crash, filesystem, application`,
            'pass --consistency crash (the default for images)',
          );
        }
        const live = liveSource(o);
        const { loadVmDefinition } = await import('../../vm/definition.js');
        const vm = loadVmDefinition(o.vm);
        const disks = assignDisks(vm, o.disk);
        // A libvirt monitor opens before the other modules load and the repository opens, so virsh starts and libvirt
        // answers meanwhile (a QMP socket waits for the work directory's claim: it serves one client).
        const liveModule = live ? await import('../../backup/live/index.js') : undefined;
        const monitor = live?.kind === 'libvirt' ? liveModule?.openLiveMonitor(live) : undefined;
        const { backupVm } = await import('../../backup/engine.js');
        // Needed once the point is committed: they load while the backup waits on QEMU, the guest and the disk.
        const afterCommit = Promise.all([import('../../backup/signals.js'), import('../../catalog/catalog.js')]);
        afterCommit.catch(() => undefined);
        tracePhase('backup: modules loaded');
        const { repo, codecInit } = await openRepoFromFlags(ctx, o).catch((err: unknown) => {
          liveModule?.discardMonitor(monitor);
          throw err;
        });
        tracePhase('backup: repository open');
        const total = vm.disks.length;
        let bar: ReturnType<typeof ctx.out.progress> | undefined;
        let current = '';
        const onProgress = (p: BackupProgress): void => {
          if (p.disk !== current) {
            bar?.finish();
            current = p.disk;
            bar = ctx.out.progress(`backup ${vm.name}/${p.disk}`, p.total);
          }
          bar?.update(p.done, `new ${formatBytes(p.stats.bytesNew)}`);
        };
        const onWarning = (m: string): void => ctx.out.warn(m);
        const recordInCatalog = async (p: RestorePoint): Promise<void> => {
          const [, { recordPoint }] = await afterCommit;
          await withCatalog(ctx, (db) => recordPoint(db, repo.path, p));
        };
        let liveResult: LiveBackupResult | undefined;
        if (live && liveModule) {
          const ac = new AbortController();
          const cancel = (): void =>
            ac.abort(
              new RestorelabError(
                'OPERATION_CANCELLED',
                'live backup cancelled by a signal; what it added to the VM was removed and no point was written',
              ),
            );
          process.once('SIGINT', cancel);
          process.once('SIGTERM', cancel);
          try {
            liveResult = await liveModule.backupLiveVm({
              repo,
              vm,
              source: live,
              ...(monitor ? { monitor } : {}),
              // Recorded while the backup removes its QEMU nodes.
              onCommitted: (p) => recordInCatalog(p),
              codecInit,
              consistency: o.consistency as Consistency,
              onProgress,
              onWarning,
              signal: ac.signal,
              ...(o.requireConsistency ? { requireConsistency: true } : {}),
              ...(o.preFreeze || o.postThaw
                ? {
                    hostScripts: {
                      ...(o.preFreeze ? { preFreeze: resolve(o.preFreeze) } : {}),
                      ...(o.postThaw ? { postThaw: resolve(o.postThaw) } : {}),
                    },
                  }
                : {}),
            });
          } finally {
            process.off('SIGINT', cancel);
            process.off('SIGTERM', cancel);
          }
        }
        const point =
          liveResult?.point ??
          (await backupVm({ repo, vm, disks, codecInit, consistency: o.consistency as Consistency, onWarning, onProgress }));
        bar?.finish();
        tracePhase('backup: point committed');
        if (!liveResult) await recordInCatalog(point);
        const [{ describeSignals }] = await afterCommit;
        tracePhase('backup: catalog recorded');
        const { signals: sig, ...s } = point.stats;
        const signals = sig ?? null;
        const cap = point.capture;
        const summary =
          `restore point ${point.id} of ${vm.name} (${total} disk(s)) in ${s.seconds} s: read ${formatBytes(s.bytesRead)}, ` +
          `new ${formatBytes(s.bytesNew)}, reused ${formatBytes(s.bytesReused)}, zero ${formatBytes(s.bytesZero)}` +
          (cap
            ? `\nconsistency: ${point.consistency}${cap.consistencyReason ? ` (wanted ${cap.consistencyWanted}: ${cap.consistencyReason})` : ''}` +
              `${cap.freezeMs !== undefined ? `, guest frozen ${cap.freezeMs} ms` : ''}\nchanged block tracking: ${cap.changedBlockTracking.used ? 'used' : 'not used'}: ${cap.changedBlockTracking.reason}`
            : '') +
          (signals ? `\n${describeSignals(signals)}` : '');
        // Not a failure (the point is good data of whatever the VM holds), but nobody should miss it, --json or not.
        if (signals?.anomaly)
          ctx.out.warn(`restore point ${point.id} of ${vm.name} is a ransomware ANOMALY: ${signals.reasons.join('; ')}`);
        const liveJson = liveResult
          ? {
              consistency: point.consistency,
              changedBlockTracking: liveResult.changedBlockTracking,
              ...(cap?.consistencyReason ? { consistencyReason: cap.consistencyReason } : {}),
              ...(cap?.freezeMs !== undefined ? { freezeMs: cap.freezeMs } : {}),
            }
          : { consistency: point.consistency };
        // Image backups carry the consistency as given (a label: nothing froze the guest).
        // afterBackup jobs verify the configured repository: a point elsewhere is not theirs to boot.
        const elsewhere = o.repo !== undefined && resolveRepository(o.repo) !== resolveRepository((await ctx.config()).repository);
        if (o.afterBackup && elsewhere)
          ctx.out.info(`after-backup: ${repo.path} is not the configured repository, which afterBackup jobs verify: none triggered`);
        if (!o.afterBackup || elsewhere) {
          ctx.out.result({ restorePoint: point.id, vm: vm.name, stats: s, ...liveJson, signals, afterBackup: null }, () => summary);
          return;
        }
        const { afterBackupPassed, renderAfterBackup } = await import('../../scheduler/after-backup.js');
        const after = await runAfterBackup(ctx, o.jobs, { name: vm.name, ...(vm.tags ? { tags: vm.tags } : {}) }, point.id);
        ctx.out.result({ restorePoint: point.id, vm: vm.name, stats: s, ...liveJson, signals, afterBackup: after ?? null }, () =>
          after ? `${summary}\n${renderAfterBackup(after, vm.name)}` : summary,
        );
        // The point is recorded either way; a failed verdict of it is its own exit code (docs/cli.md).
        if (after && !afterBackupPassed(after)) process.exitCode = ExitCode.verifyFailed;
      },
    );
}

/**
 * Runs or hands over the afterBackup jobs (src/scheduler/after-backup.ts).
 * The backup already succeeded: a problem here is a warning, and undefined.
 */
async function runAfterBackup(
  ctx: CommandContext,
  jobs: string | undefined,
  vm: BackedUpVm,
  point: string,
): Promise<AfterBackupReport | undefined> {
  const { afterBackup } = await import('../../scheduler/after-backup.js');
  const cfg = await ctx.config();
  const ac = new AbortController();
  const cancel = (sig: string): void => {
    ctx.out.warn(`${sig}: cancelling the afterBackup runs, tearing their labs down`);
    ac.abort(new Error(`cancelled by ${sig}`));
  };
  const onInt = (): void => cancel('SIGINT');
  const onTerm = (): void => cancel('SIGTERM');
  process.once('SIGINT', onInt);
  process.once('SIGTERM', onTerm);
  try {
    return await afterBackup({
      cfg,
      jobsDir: resolve(jobs ?? process.env.RESTORELAB_JOBS_DIR ?? projectPath('lab-templates', 'jobs')),
      vm,
      point,
      signal: ac.signal,
      log: { info: (l) => ctx.out.info(l), warn: (l) => ctx.out.warn(l) },
    });
  } catch (err) {
    const e = err as Error & { hint?: string };
    ctx.out.warn(`the backup is recorded, but its afterBackup jobs did not run: ${e.message}${e.hint ? ` (${e.hint})` : ''}`);
    process.exitCode = ExitCode.verifyFailed;
    return undefined;
  } finally {
    process.off('SIGINT', onInt);
    process.off('SIGTERM', onTerm);
  }
}

/** `restorelab backup`: disk images of a VM into a restore point (docs/backup.md). */
import type { Command } from 'commander';
import { contextFor } from '../context.js';
import { openRepoFromFlags, withCatalog, type RepoFlags } from './repo.js';
import type { VmDefinition } from '../../vm/definition.js';
import type { Consistency } from '../../repo/contract.js';
import { badInput } from '../../errors.js';
import { formatBytes } from '../output.js';

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
    .option('--json', 'print one JSON object')
    .action(async (o: RepoFlags & { vm: string; disk: string[]; consistency: string }, c: Command) => {
      const { backupVm } = await import('../../backup/engine.js');
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
      const s = point.stats;
      ctx.out.result({ restorePoint: point.id, vm: vm.name, stats: s }, () =>
        `restore point ${point.id} of ${vm.name} (${total} disk(s)) in ${s.seconds} s: read ${formatBytes(s.bytesRead)}, ` +
        `new ${formatBytes(s.bytesNew)}, reused ${formatBytes(s.bytesReused)}, zero ${formatBytes(s.bytesZero)}`);
    });
}

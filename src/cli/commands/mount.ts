/** `restorelab mount`: a restore point's guest filesystems, read-only, for file-level restore (docs/file-level-restore.md). */
import type { Command } from 'commander';
import { resolve } from 'node:path';
import { contextFor, type CommandContext } from '../context.js';
import type { FlrSession } from '../../flr/mount.js';
import { badInput } from '../../errors.js';
import { keyFileOption } from '../../config/key-file.js';
import { resolveRepository } from '../../repo/open.js';

export interface PointFlags {
  repo?: string;
  keyFile?: string;
  disk?: string;
  partition?: string;
}

/** The key file for the holder process that publishes the point (config/key-file.ts): its path, never the key. */
export async function pointKeyFile(ctx: CommandContext, o: { keyFile?: string }): Promise<{ keyFile?: string }> {
  return keyFileOption(o.keyFile, await ctx.config());
}

export async function repoPath(ctx: CommandContext, o: { repo?: string }): Promise<string> {
  return resolveRepository(o.repo ?? (await ctx.config()).repository);
}

export function partitionNumber(o: { partition?: string }): number | undefined {
  if (o.partition === undefined) return undefined;
  const n = Number(o.partition);
  if (!Number.isInteger(n) || n < 0)
    throw badInput(
      'BAD_PARTITION',
      `partition "${o.partition}" is not a partition number`,
      'give the number `restorelab mount` lists (0 for a disk without a partition table)',
    );
  return n;
}

function render(s: FlrSession): string {
  const lines = s.mounts.map((m) => {
    const where = `  ${m.disk} partition ${m.partition}${m.volume ? `, LVM volume ${m.volume}` : ''} (${m.fstype})`;
    return m.skipped ? `${where}: not mounted: ${m.skipped}` : `${where}: ${m.path}`;
  });
  return [`mounted read-only (session ${s.id}):`, ...lines, `unmount with: restorelab umount ${s.dir}`].join('\n');
}

export function registerMount(program: Command): void {
  program
    .command('mount <point> <dir>')
    .description(
      'mount the guest filesystems of a restore point read-only below <dir> (one p<N> per partition); stays mounted until `restorelab umount`',
    )
    .option('--repo <repo>', 'repository directory or s3:// URL (default: the configured one)')
    .option('--key-file <file>', 'key file of an encrypted repository (default: RESTORELAB_KEY_FILE, then repositoryKeyFile)')
    .option('--disk <name>', 'only this disk of the restore point')
    .option('--partition <n>', 'only this partition number')
    .option('--json', 'print one JSON object')
    .action(async (point: string, dir: string, o: PointFlags, c: Command) => {
      const { mountRestorePoint } = await import('../../flr/mount.js');
      const ctx = contextFor(c);
      const s = await mountRestorePoint({
        stateDir: (await ctx.config()).stateDir,
        repo: await repoPath(ctx, o),
        point,
        dir: resolve(dir),
        ...(await pointKeyFile(ctx, o)),
        ...(o.disk !== undefined ? { disk: o.disk } : {}),
        ...(partitionNumber(o) !== undefined ? { partition: partitionNumber(o) } : {}),
      });
      ctx.out.result({ id: s.id, publication: s.publication, mounts: s.mounts }, () => render(s));
    });
}

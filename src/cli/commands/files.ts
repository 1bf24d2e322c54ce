/**
 * `restorelab files ls|get`: browse and extract guest files of a restore
 * point. Uses the mount of a running `restorelab mount` of the same point if
 * there is one; otherwise mounts temporarily and unmounts afterwards.
 */
import type { Command } from 'commander';
import { mkdtempSync, mkdirSync, rmdirSync } from 'node:fs';
import { join } from 'node:path';
import { contextFor, type CommandContext } from '../context.js';
import type { FlrSession } from '../../flr/mount.js';
import type { GuestEntry } from '../../flr/browse.js';
import type { MountedPartition } from '../../flr/session.js';
import { badInput } from '../../errors.js';
import { partitionNumber, pointKeyFile, repoPath, type PointFlags } from './mount.js';

async function withSession<T>(ctx: CommandContext, point: string, o: PointFlags, use: (s: FlrSession) => Promise<T>): Promise<T> {
  const { findMountedSession, mountRestorePoint, umountSession } = await import('../../flr/mount.js');
  const { sessionsDir } = await import('../../flr/session.js');
  const stateDir = (await ctx.config()).stateDir;
  const repo = await repoPath(ctx, o);
  const existing = findMountedSession(stateDir, repo, point);
  if (existing) return use(existing);
  mkdirSync(sessionsDir(stateDir), { recursive: true });
  const parent = mkdtempSync(join(sessionsDir(stateDir), 'tmp-'));
  try {
    ctx.out.info(`mounting restore point ${point} temporarily`);
    const s = await mountRestorePoint({
      stateDir,
      repo,
      point,
      dir: join(parent, 'mnt'),
      temporary: true,
      ...(await pointKeyFile(ctx, o)),
      ...(o.disk !== undefined ? { disk: o.disk } : {}),
      ...(partitionNumber(o) !== undefined ? { partition: partitionNumber(o) } : {}),
    });
    try {
      return await use(s);
    } finally {
      await umountSession(stateDir, s.id);
    }
  } finally {
    rmdirSync(parent);
  }
}

/** The LVM logical volume a mount is, for the JSON answers. */
const volumeOf = (m: { volume?: string }): { volume?: string } => (m.volume !== undefined ? { volume: m.volume } : {});

/** The mounted partition holding `guestPath` (src/flr/browse.ts choosePartition). */
async function pickPartition(s: FlrSession, guestPath: string, o: PointFlags): Promise<MountedPartition> {
  const { choosePartition } = await import('../../flr/browse.js');
  const want = partitionNumber(o);
  return choosePartition(
    s.mounts,
    guestPath,
    { ...(o.disk !== undefined ? { disk: o.disk } : {}), ...(want !== undefined ? { partition: want } : {}) },
    'pick a partition with --disk/--partition and list it with `restorelab files ls <point> /`',
  );
}

function renderEntries(entries: GuestEntry[]): string {
  return entries
    .map(
      (e) =>
        `${e.type === 'directory' ? 'd' : e.type === 'symlink' ? 'l' : e.type === 'file' ? '-' : '?'}${e.mode} ${String(e.size).padStart(12)} ${e.mtime} ${e.name}${e.target !== undefined ? ` -> ${e.target}` : ''}`,
    )
    .join('\n');
}

export function registerFiles(program: Command): void {
  const cmd = program.command('files').description('browse and extract guest files of a restore point (file-level restore)');
  cmd
    .command('ls <point> <guest-path>')
    .description('list a guest directory (symlinks are shown, not followed)')
    .option('--repo <repo>', 'repository directory or s3:// URL (default: the configured one)')
    .option('--key-file <file>', 'key file of an encrypted repository (default: RESTORELAB_KEY_FILE, then repositoryKeyFile)')
    .option('--disk <name>', 'disk of the restore point')
    .option('--partition <n>', 'partition number (default: the first partition where the path exists)')
    .option('--json', 'print one JSON object')
    .action(async (point: string, guestPath: string, o: PointFlags, c: Command) => {
      const { listGuestPath } = await import('../../flr/browse.js');
      const ctx = contextFor(c);
      const r = await withSession(ctx, point, o, async (s) => {
        const m = await pickPartition(s, guestPath, o);
        return { disk: m.disk, partition: m.partition, ...volumeOf(m), fstype: m.fstype, entries: await listGuestPath(m.path, guestPath) };
      });
      ctx.out.result(r, () => renderEntries(r.entries));
    });
  cmd
    .command('get <point> <guest-path>')
    .description('extract a guest file, or a directory as a tar stream')
    .requiredOption('--to <local>', 'local file to write, or - for stdout')
    .option('--tar', 'write a tar stream even for a single file')
    .option('--repo <repo>', 'repository directory or s3:// URL (default: the configured one)')
    .option('--key-file <file>', 'key file of an encrypted repository (default: RESTORELAB_KEY_FILE, then repositoryKeyFile)')
    .option('--disk <name>', 'disk of the restore point')
    .option('--partition <n>', 'partition number (default: the first partition where the path exists)')
    .option('--json', 'print one JSON object')
    .action(async (point: string, guestPath: string, o: PointFlags & { to: string; tar?: boolean }, c: Command) => {
      const { getGuestPath } = await import('../../flr/browse.js');
      const ctx = contextFor(c);
      if (o.to === '-' && ctx.out.json)
        throw badInput('STDOUT_CONFLICT', '--to - and --json both want stdout', 'write to a file with --to <local>, or drop --json');
      const r = await withSession(ctx, point, o, async (s) => {
        const m = await pickPartition(s, guestPath, o);
        return {
          disk: m.disk,
          partition: m.partition,
          ...volumeOf(m),
          ...(await getGuestPath(m.path, guestPath, o.to, { tar: o.tar === true })),
        };
      });
      if (o.to !== '-') ctx.out.result(r, () => `${r.guestPath} -> ${r.to} (${r.format}, ${r.bytes} bytes, ${r.files} file(s))`);
    });
}

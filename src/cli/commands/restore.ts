/** `restorelab restore`: one disk of a restore point back to a raw or qcow2 file. */
import type { Command } from 'commander';
import { contextFor } from '../context.js';
import { openRepoFromFlags, type RepoFlags } from './repo.js';
import type { RestoreFormat } from '../../backup/restore.js';
import { formatBytes } from '../../format/output.js';

export function registerRestore(program: Command): void {
  program
    .command('restore <id>')
    .description('write a disk of a restore point to a file (sparse; written under a temp name, renamed when complete)')
    .requiredOption('--disk <name>', 'disk name as in the VM definition')
    .requiredOption('--to <file>', 'output file (replaced when it exists)')
    .option('--format <format>', 'raw or qcow2', 'raw')
    .option('--repo <repo>', 'repository directory or s3:// URL (default: the configured one)')
    .option('--key-file <file>', 'key file of an encrypted repository')
    .option('--json', 'print one JSON object')
    .action(async (id: string, o: RepoFlags & { disk: string; to: string; format: string }, c: Command) => {
      const { restoreDisk } = await import('../../backup/restore.js');
      const ctx = contextFor(c);
      const { repo } = await openRepoFromFlags(ctx, o);
      let bar: ReturnType<typeof ctx.out.progress> | undefined;
      const r = await restoreDisk({
        repo,
        point: id,
        disk: o.disk,
        to: o.to,
        format: o.format as RestoreFormat,
        onProgress: (done, total) => {
          (bar ??= ctx.out.progress(`restore ${o.disk}`, total)).update(done);
        },
      });
      bar?.finish();
      ctx.out.result(
        r,
        () =>
          `restored ${id}/${o.disk} to ${r.to} (${r.format}, ${formatBytes(r.size)}, ${formatBytes(r.bytesWritten)} of data) in ${r.seconds} s`,
      );
    });
}

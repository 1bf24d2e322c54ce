/** `restorelab verify`: re-read and re-hash what restore points reference (exit 3 on corruption). */
import type { Command } from 'commander';
import { contextFor } from '../context.js';
import { openRepoFromFlags, withCatalog, type RepoFlags } from './repo.js';
import type { VerifyReport } from '../../repo/verify.js';
import { ExitCode } from '../../errors.js';
import { formatBytes } from '../../format/output.js';

function render(r: VerifyReport): string {
  const head = `${r.ok ? 'ok' : 'CORRUPT'}: ${r.chunksChecked} chunk(s), ${formatBytes(r.bytesChecked)} of ${r.pointsChecked} restore point(s) checked in ${r.seconds} s`;
  const lines = r.corrupt.map(
    (f) =>
      `  ${f.kind} ${f.digest || '(manifest)'}: ${f.reason}${f.quarantined ? ' (quarantined)' : ''}; breaks ${f.points.join(', ') || 'no point'}`,
  );
  for (const f of r.repaired) lines.push(`  warning: chunk ${f.digest} repaired: ${f.reason}`);
  if (r.affectedPoints.length) lines.push(`damaged restore points: ${r.affectedPoints.join(', ')}`);
  return [head, ...lines].join('\n');
}

export function registerVerify(program: Command): void {
  program
    .command('verify [id]')
    .description(
      're-read, decompress and re-hash every chunk a restore point (default: every point) references; corrupt chunks are quarantined',
    )
    .option('--repo <repo>', 'repository directory or s3:// URL (default: the configured one)')
    .option('--key-file <file>', 'key file of an encrypted repository')
    .option('--json', 'print one JSON object')
    .action(async (id: string | undefined, o: RepoFlags, c: Command) => {
      const { verifyRepository } = await import('../../repo/verify.js');
      const { reindex } = await import('../../catalog/catalog.js');
      const ctx = contextFor(c);
      const { repo } = await openRepoFromFlags(ctx, o);
      let bar: ReturnType<typeof ctx.out.progress> | undefined;
      const report = await verifyRepository(repo, {
        ...(id ? { point: id } : {}),
        onProgress: (done, total) => {
          (bar ??= ctx.out.progress('verify', total, 'chunks')).update(done);
        },
      });
      bar?.finish();
      // The damaged marks live in the manifests; the catalog mirrors them.
      await withCatalog(ctx, async (db) => {
        await reindex(db, repo);
      });
      ctx.out.result(report, () => render(report));
      if (!report.ok) process.exitCode = ExitCode.verifyFailed;
    });
}

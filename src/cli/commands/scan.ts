/**
 * `restorelab scan --repo R <point|vm> --yara RULES [--last-clean] --json`:
 * scans a restore point's guest filesystems with YARA rules
 * (docs/secure-restore.md). Exit 0 when clean, 3 when infected (or, with
 * --last-clean, when no scanned point is clean).
 */
import type { Command } from 'commander';
import { contextFor, type CommandContext } from '../context.js';
import { ExitCode, RestorelabError } from '../../errors.js';
import { openRepoFromFlags, type RepoFlags } from './repo.js';
import { pointKeyFile } from './mount.js';
import { formatBytes } from '../../format/output.js';
import { tracePhase } from '../../host/trace.js';
import type { LastCleanResult, PointScan } from '../../scan/scan.js';
import type { RepositoryReader } from '../../repo/contract.js';

interface ScanFlags extends RepoFlags {
  yara: string;
  lastClean?: boolean;
  since?: string;
  until?: string;
  mount?: boolean;
}

export function renderScan(s: PointScan): string {
  const head = `${s.point} (${s.vm}): ${s.verdict.toUpperCase()}, ${s.files.scanned} file(s) scanned, ${s.files.cached} answered from the cache, ${s.seconds.toFixed(1)} s`;
  const skipped = s.partitions
    .filter((p) => p.skipped)
    .map((p) => `  ${p.disk} partition ${p.partition} (${p.fstype}) not scanned: ${p.skipped}`);
  const mounted = s.partitions
    .filter((p) => !p.skipped && p.mountReason)
    .map((p) => `  ${p.disk} partition ${p.partition} (${p.fstype}) read through a mount: ${p.mountReason}`);
  const hits = s.matches.map((m) => `  ${m.rule}  ${m.disk} p${m.partition} ${m.path}  sha256 ${m.sha256}`);
  return [head, ...hits, ...skipped, ...mounted].join('\n');
}

function renderLastClean(r: LastCleanResult): string {
  const lines = r.points.map((p) => `  ${p.id}  ${p.verdict}`);
  return [
    ...lines,
    r.lastClean ? `last clean point of ${r.vm}: ${r.lastClean}` : `no clean point of ${r.vm} among the ${r.points.length} scanned`,
  ].join('\n');
}

/** A point id, or the name of a VM (then its newest point, or all of them newest first with --last-clean). */
async function resolveTarget(repo: RepositoryReader, target: string): Promise<{ point?: string; vm?: string }> {
  try {
    return { point: (await repo.getPoint(target)).id };
  } catch (err) {
    if (!(err instanceof RestorelabError && err.exitCode === ExitCode.notFound)) throw err;
  }
  const points = await repo.listPoints({ vm: target });
  if (points.length === 0) {
    throw new RestorelabError('TARGET_NOT_FOUND', `${target} is neither a restore point nor a VM with restore points in ${repo.path}`, {
      hint: '`restorelab points` lists point ids and VM names',
    });
  }
  return { vm: target };
}

async function run(ctx: CommandContext, target: string, o: ScanFlags): Promise<void> {
  tracePhase('scan: command starts');
  const { findLastClean, scanOutput, scanPoint, withRules } = await import('../../scan/scan.js');
  const { connectCatalog } = await import('../../catalog/catalog.js');
  tracePhase('scan: modules loaded');
  const cfg = await ctx.config();
  const { repo } = await openRepoFromFlags(ctx, o);
  const t = await resolveTarget(repo, target);
  const keyFile = (await pointKeyFile(ctx, o)).keyFile;
  tracePhase('scan: repository open');
  const db = await connectCatalog(cfg.catalog);
  tracePhase('scan: catalog open');
  try {
    // Compiled before anything is mounted: a bad rule file leaves nothing behind.
    await withRules(cfg.stateDir, o.yara, async (rules) => {
      tracePhase('scan: rules compiled');
      const progress = (label: string): ((d: { files: number; bytes: number }) => void) => {
        let last = 0;
        return (d) => {
          if (Date.now() - last < 2000) return;
          last = Date.now();
          ctx.out.info(`${label}: ${d.files} file(s), ${formatBytes(d.bytes)} hashed`);
        };
      };
      const base = {
        repo,
        stateDir: cfg.stateDir,
        db,
        rules,
        ...(keyFile ? { keyFile } : {}),
        ...(o.mount ? { via: 'mount' as const } : {}),
      };
      if (o.lastClean) {
        if (!t.vm)
          throw new RestorelabError('LAST_CLEAN_NEEDS_VM', `--last-clean scans a VM's points; ${target} is a restore point`, {
            hint: 'give the VM name instead',
          });
        const r = await findLastClean({
          ...base,
          vm: t.vm,
          ...(o.since ? { since: o.since } : {}),
          ...(o.until ? { until: o.until } : {}),
          onPoint: (p, i, n) => ctx.out.info(`scanning ${p.id} (${p.time}), ${i + 1} of at most ${n}`),
          onProgress: progress('scan'),
        });
        ctx.out.result(r, () => renderLastClean(r));
        if (r.lastClean === null) process.exitCode = ExitCode.verifyFailed;
        return;
      }
      let point = t.point;
      if (!point) {
        const newest = (await repo.listPoints({ vm: t.vm as string })).sort((a, b) => a.time.localeCompare(b.time)).at(-1)!;
        point = newest.id;
        ctx.out.info(`scanning the newest point of ${t.vm}: ${point}`);
      }
      const s = await scanPoint({ ...base, point, onProgress: progress(`scan ${point}`) });
      tracePhase('scan: point scanned');
      ctx.out.result(scanOutput(s), () => renderScan(s));
      if (s.verdict === 'infected') process.exitCode = ExitCode.verifyFailed;
    });
  } finally {
    await db.close();
    tracePhase('scan: catalog closed');
  }
}

export function registerScan(program: Command): void {
  program
    .command('scan <point|vm>')
    .description(
      "scan a restore point's guest filesystems with YARA rules (ext2/3/4 read in-process, others mounted read-only); exit 3 when infected",
    )
    .requiredOption('--yara <rules>', 'YARA rule file (compiled once with yarac)')
    .option('--repo <repo>', 'repository directory or s3:// URL (default: the configured one)')
    .option('--key-file <file>', 'key file of an encrypted repository (default: RESTORELAB_KEY_FILE, then repositoryKeyFile)')
    .option('--last-clean', 'with a VM name: scan its points newest first and name the newest clean one')
    .option('--since <time>', 'with --last-clean: only points at or after this ISO 8601 time')
    .option('--until <time>', 'with --last-clean: only points at or before this ISO 8601 time')
    .option('--mount', 'read every partition through a read-only kernel mount, not the in-process ext reader')
    .option('--json', 'print one JSON object')
    .action(async (target: string, o: ScanFlags, c: Command) => run(contextFor(c), target, o));
}

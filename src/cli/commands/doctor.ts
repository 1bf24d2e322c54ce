/** `restorelab doctor`: what this host can do, and what to install. */
import { Option, type Command } from 'commander';
import { contextFor } from '../context.js';
import type { DoctorReport } from '../../host/doctor.js';
import type { StaleItem } from '../../reconcile/reconcile.js';
import { ExitCode } from '../../errors.js';

/** The host's checks, and the stale state of the state directory (a dry-run reconcile) when there is one. */
export type DoctorOutput = DoctorReport & { stale?: StaleItem[] };

function render(r: DoctorOutput): string {
  const lines = r.checks.map(
    (c) =>
      `${c.ok ? ' ok ' : c.required ? 'FAIL' : 'miss'}  ${c.name.padEnd(20)} ${c.detail}${c.ok || !c.fix ? '' : `\n      fix: ${c.fix}`}`,
  );
  lines.push(
    '',
    `accelerator: ${r.accel} (kvm: ${r.kvm}${r.cached ? `; cached verdict of ${r.accelCheckedAt ?? 'an earlier run'}, --recheck boots again` : ''})`,
  );
  if (r.stale?.length) {
    lines.push('', `stale state (restorelab cleanup removes what is safe):`);
    for (const s of r.stale) lines.push(`  ${s.id}: ${s.reason}${s.bytes ? ` (${s.bytes} bytes of writes)` : ''}`);
  }
  lines.push(r.ok ? 'restorelab can run here.' : 'restorelab cannot run its main job here: fix the FAIL lines above.');
  return lines.join('\n');
}

export function registerDoctor(program: Command): void {
  program
    .command('doctor')
    .description('probe this host: QEMU, KVM or TCG, FUSE, loop devices, libvirtd, NFS clients, network namespaces')
    .option('--recheck', 'boot the accelerator test again instead of using the cached verdict')
    .addOption(new Option('--force', 'the old name of --recheck').hideHelp())
    .option('--json', 'print one JSON object')
    .action(async (o: { recheck?: boolean; force?: boolean }, c: Command) => {
      const { runDoctor } = await import('../../host/doctor.js');
      const ctx = contextFor(c);
      let cacheDir: string | undefined;
      let guestsDir: string | undefined;
      let keyFile: string | undefined;
      try {
        ({ stateDir: cacheDir, guestsDir, repositoryKeyFile: keyFile } = await ctx.config());
      } catch {
        // doctor must work even with a broken config; it just does not cache
      }
      const checked = await runDoctor({ cacheDir, guestsDir, force: Boolean(o.recheck ?? o.force) });
      // Loaded here, not at the top: the other commands do not need it.
      const stale = cacheDir
        ? (
            await (
              await import('../../reconcile/reconcile.js')
            ).reconcile({ stateDir: cacheDir, dryRun: true, ...(keyFile ? { keyFile } : {}) })
          ).stale
        : undefined;
      const report: DoctorOutput = { ...checked, ...(stale ? { stale } : {}) };
      ctx.out.result(report, () => render(report));
      if (!report.ok) process.exitCode = ExitCode.missingComponent;
    });
}

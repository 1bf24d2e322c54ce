/** `restorelab surebackup run|validate`: SureBackup verification jobs (docs/surebackup.md). */
import type { Command } from 'commander';
import { randomUUID } from 'node:crypto';
import { contextFor } from '../context.js';
import { loadJob } from '../../surebackup/job.js';
import { runJob } from '../../surebackup/runner.js';
import { createLabBackend } from '../../surebackup/backend.js';
import { RestorelabError, ExitCode } from '../../errors.js';

export function registerSurebackup(program: Command): void {
  const cmd = program.command('surebackup').description('verify restore points by booting them in an isolated lab');
  cmd
    .command('validate <job>')
    .description('check a job file (schema, roles, schedule) without booting anything')
    .action((file: string, _o, c: Command) => {
      const ctx = contextFor(c);
      const job = loadJob(file);
      ctx.out.result({ ok: true, file, job }, () => `${file}: valid job "${job.name}"`);
    });
  cmd
    .command('run <job>')
    .description('run a verification job now')
    .option('--repo <dir>', 'backup repository')
    .action(async (file: string, o: { repo?: string }, c: Command) => {
      const ctx = contextFor(c);
      const job = loadJob(file);
      const cfg = ctx.config();
      const backend = createLabBackend({ repo: o.repo ?? cfg.repository, stateDir: cfg.stateDir });
      // Real tests (src/verify) are not written yet: see docs/surebackup.md "Status".
      const r = await runJob(job, backend, () => {
        throw new RestorelabError('NOT_AVAILABLE', 'SureBackup test kinds are not implemented yet', { exitCode: ExitCode.notImplemented });
      });
      const out = {
        run: randomUUID(), result: r.result,
        vms: r.vms.map((v) => ({ name: v.name, point: v.point, result: v.result, tests: v.tests, recoverySeconds: v.recoverySeconds, screenshot: null })),
        report: null,
      };
      ctx.out.result(out, () => `${job.name}: ${r.result}`);
      if (r.result !== 'success') process.exitCode = ExitCode.verifyFailed;
    });
}

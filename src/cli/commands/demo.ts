/** `restorelab demo`: the main job end to end on the embedded defaults. */
import type { Command } from 'commander';
import { contextFor } from '../context.js';
import { ExitCode } from '../../errors.js';

export function registerDemo(program: Command): void {
  program
    .command('demo')
    .description('run the main job on the embedded defaults: build a guest, back it up, verify, publish, recover, SureBackup')
    .option('--json', 'print one JSON object')
    .action(async (_o, c: Command) => {
      const { runPipeline } = await import('../../demo/pipeline.js');
      const { demoSteps } = await import('../../demo/steps.js');
      const ctx = contextFor(c);
      const config = await ctx.config();
      ctx.out.info(`restorelab demo: repository ${config.repository}, state ${config.stateDir}, driver ${config.driver}`);
      const steps = await runPipeline(demoSteps, { config, out: ctx.out, values: {} });
      const failed = steps.some((s) => s.status === 'failed');
      const missing = steps.filter((s) => s.status === 'not-yet-available').map((s) => s.step);
      ctx.out.result({ ok: !failed, steps, notYetAvailable: missing }, () =>
        failed
          ? 'demo FAILED (see the step above)'
          : missing.length
            ? `demo finished; not there yet: ${missing.join(', ')}`
            : 'demo finished: every step passed',
      );
      if (failed) process.exitCode = ExitCode.failure;
    });
}

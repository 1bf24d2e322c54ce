/**
 * The main job on the embedded defaults, as `restorelab demo` runs it:
 * build a guest, back it up, verify the repository, publish the restore point,
 * boot it in a lab and verify it. Each step says whether it exists yet, so the
 * demo runs what is there and names plainly what is not.
 */
import type { Config } from '../config/config.js';
import type { Output } from '../format/output.js';

export interface DemoState {
  config: Config;
  out: Output;
  /** Values steps hand to later steps (image path, restore point id, ...). */
  values: Record<string, string>;
}

export interface DemoStep {
  name: string;
  description: string;
  /** Undefined while the capability has not landed. */
  run?: (state: DemoState) => Promise<string>;
}

export interface StepResult {
  step: string;
  status: 'done' | 'failed' | 'not-yet-available';
  detail: string;
  seconds: number;
}

export async function runPipeline(steps: DemoStep[], state: DemoState): Promise<StepResult[]> {
  const results: StepResult[] = [];
  let failed = false;
  for (const step of steps) {
    if (!step.run) {
      results.push({ step: step.name, status: 'not-yet-available', detail: `${step.description}: not built yet`, seconds: 0 });
      state.out.info(`- ${step.name}: not there yet (${step.description})`);
      continue;
    }
    if (failed) {
      results.push({ step: step.name, status: 'failed', detail: 'skipped because an earlier step failed', seconds: 0 });
      continue;
    }
    state.out.info(`- ${step.name}: ${step.description} ...`);
    const t0 = performance.now();
    try {
      const detail = await step.run(state);
      const seconds = (performance.now() - t0) / 1000;
      results.push({ step: step.name, status: 'done', detail, seconds });
      state.out.info(`  done in ${seconds.toFixed(1)} s: ${detail}`);
    } catch (err) {
      failed = true;
      const seconds = (performance.now() - t0) / 1000;
      results.push({ step: step.name, status: 'failed', detail: (err as Error).message, seconds });
      state.out.info(`  FAILED: ${(err as Error).message}`);
    }
  }
  return results;
}

/**
 * Memory-aware placement: a worker takes a task only when the VM memory of
 * what it runs (its tasks, and the recovery sessions that live on its host)
 * plus the task's fits its budget (`worker --memory MiB`, else the config's
 * `limits.memoryBudgetMiB`). A task that does not fit is given back to the
 * queue for another worker, or for this one later (queue.ts, giveBack).
 */
import type { RecoverTask, VerifyTask } from './task.js';

/** What a VM is counted as when nothing says its memory: the local runner's default too (src/surebackup/runner.ts). */
export const DEFAULT_VM_MEMORY_MIB = 1024;

/**
 * Whether a task needing `needMiB` fits. An idle worker takes any task, even
 * one larger than its whole budget: nobody else would ever run it, and the
 * host's own limiter still queues its VMs (src/surebackup/limiter.ts).
 */
export function fits(budgetMiB: number, inUseMiB: number, needMiB: number): boolean {
  return inUseMiB === 0 || inUseMiB + needMiB <= budgetMiB;
}

/** The VM memory a task needs: a recovery's VM; a verification task's VMs under test and its application group. */
export function taskMemory(task: VerifyTask | RecoverTask): number {
  if (task.kind === 'recover') return task.memoryMiB;
  const v = task.job.verify;
  const underTest = Array.isArray(v.vms) ? v.vms : [];
  const group = task.job.applicationGroup.reduce((sum, g) => sum + (g.memoryMiB ?? DEFAULT_VM_MEMORY_MIB), 0);
  return group + underTest.reduce((sum, n) => sum + (v.overrides?.[n]?.memoryMiB ?? v.memoryMiB ?? DEFAULT_VM_MEMORY_MIB), 0);
}

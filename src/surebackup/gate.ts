/**
 * JobGate: what every starter of SureBackup runs in one process shares, so a
 * manual run (CLI server API) and a scheduled or after-backup run of the same
 * job never overlap, and all of them draw VMs from one Limiter (the global VM
 * cap and memory budget). The scheduler and the API's job routes each take
 * the gate the server hands them.
 */
import { Limiter } from './limiter.js';

export class JobGate {
  readonly limiter: Limiter;
  private readonly running = new Map<string, AbortController>();

  constructor(maxConcurrentVms: number, memoryBudgetMiB: number) {
    this.limiter = new Limiter(maxConcurrentVms, memoryBudgetMiB);
  }

  /** Marks `job` as running; returns its release, or undefined when a run of it is already going. */
  claim(job: string, abort: AbortController): (() => void) | undefined {
    if (this.running.has(job)) return undefined;
    this.running.set(job, abort);
    return () => {
      if (this.running.get(job) === abort) this.running.delete(job);
    };
  }

  isRunning(job: string): boolean {
    return this.running.has(job);
  }
}

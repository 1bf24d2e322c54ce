/** `restorelab worker` (a lab host taking verification tasks) and `restorelab workers` (who is there): docs/workers.md. */
import type { Command } from 'commander';
import { contextFor } from '../context.js';
import { badInput } from '../../errors.js';
import { parseCidr } from '../../lab/ipv4.js';
import { queueTuning } from '../../workers/url.js';

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

function positive(flag: string, max: number) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1 || n > max)
      throw badInput('BAD_FLAGS', `${flag} must be a whole number from 1 to ${max}, not "${v}"`);
    return n;
  };
}

export function registerWorker(program: Command): void {
  program
    .command('worker')
    .description('run this host as a lab worker: take verification tasks from the shared queue (needs RESTORELAB_QUEUE=postgres://…)')
    .requiredOption('--name <name>', 'this worker’s name, unique among the workers')
    .option('--slots <n>', 'tasks (VMs or application groups) run at once', positive('--slots', 64), 1)
    .option(
      '--network <name>',
      'a lab network this host can mirror (repeatable; default: isolated)',
      (v: string, acc: string[]) => [...acc, v],
      [] as string[],
    )
    .option(
      '--memory <MiB>',
      'VM memory budget: take a task only when it fits with what runs here (default: limits.memoryBudgetMiB)',
      positive('--memory', 16 * 1024 * 1024),
    )
    .option('--masquerade <cidr>', 'mirror labs onto free masquerade subnets of this pool (two workers on one host)', (v: string) => {
      parseCidr(v, '--masquerade');
      return v;
    })
    .action(async (o: { name: string; slots: number; network: string[]; masquerade?: string; memory?: number }, c: Command) => {
      if (!NAME_RE.test(o.name)) {
        throw badInput('BAD_WORKER_NAME', `worker name "${o.name}" is not allowed`, 'use letters, digits, ".", "-" and "_" (at most 63)');
      }
      const { runWorker } = await import('../../workers/worker.js');
      const { workersUrl } = await import('../../workers/url.js');
      const ctx = contextFor(c);
      const cfg = await ctx.config();
      const ac = new AbortController();
      const stop = (): void => ac.abort();
      process.once('SIGINT', stop);
      process.once('SIGTERM', stop);
      await runWorker({
        name: o.name,
        slots: o.slots,
        url: workersUrl(cfg.catalog),
        config: cfg,
        signal: ac.signal,
        log: (l) => ctx.out.info(l),
        ...(o.network.length ? { networks: o.network } : {}),
        ...(o.masquerade !== undefined ? { masqueradePool: o.masquerade } : {}),
        ...(o.memory !== undefined ? { memoryMiB: o.memory } : {}),
        ...queueTuning(),
      });
    });

  program
    .command('workers')
    .description('list the lab workers, their load and their tasks')
    .option('--json', 'print one JSON object')
    .action(async (_o: unknown, c: Command) => {
      const { LabQueue } = await import('../../workers/queue.js');
      const { WorkerRegistry } = await import('../../workers/registry.js');
      const { workersUrl } = await import('../../workers/url.js');
      const ctx = contextFor(c);
      const cfg = await ctx.config();
      const queue = await LabQueue.open({ url: workersUrl(cfg.catalog), maintenanceSeconds: 3600 });
      try {
        const registry = new WorkerRegistry(queue.sql);
        await registry.ensureSchema();
        const workers = await registry.list();
        ctx.out.result({ workers }, () =>
          workers.length === 0
            ? 'no lab workers registered (start one with: restorelab worker --name NAME)'
            : workers
                .map(
                  (w) =>
                    `${w.name.padEnd(16)} ${w.alive ? 'up  ' : 'gone'} ${w.running}/${w.slots} slots  ${w.memoryUsedMiB}/${w.memoryMiB} MiB  ${w.host}  last seen ${w.lastSeen}${w.tasks.length ? `  tasks ${w.tasks.join(', ')}` : ''}`,
                )
                .join('\n'),
        );
      } finally {
        await queue.close();
      }
    });
}

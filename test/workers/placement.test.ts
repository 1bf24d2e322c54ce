// Memory-aware placement: the rule (a task fits when the memory in use plus
// its own stays within the budget; an idle worker takes anything), what a
// task needs, and the give-back on the real queue: the task returns to
// `created`, spends no retry, and is taken again; and two workers creating
// their queues at once.
import t from 'tap';
import { DEFAULT_VM_MEMORY_MIB, fits, taskMemory } from '../../src/workers/placement.js';
import { LabQueue } from '../../src/workers/queue.js';
import type { VerifyTask, RecoverTask } from '../../src/workers/task.js';
import { freshDatabase } from '../helpers/pg.js';

t.test('the rule', async (t) => {
  t.ok(fits(4096, 0, 1024), 'an idle worker with room');
  t.ok(fits(4096, 3072, 1024), 'exactly full is fine');
  t.notOk(fits(4096, 3072, 1025), 'one MiB over is not');
  t.notOk(fits(2048, 1024, 2048), 'a busy worker leaves a big task');
  t.ok(fits(2048, 0, 8192), 'an idle worker takes a task larger than its budget: nobody else would');
});

t.test('what a task needs', async (t) => {
  const recover: RecoverTask = { kind: 'recover', repo: '/r', vm: 'web', baseDir: '/', publish: 'fuse', memoryMiB: 512 };
  t.equal(taskMemory(recover), 512);
  const job = {
    name: 'j',
    lab: 'lab.json',
    applicationGroup: [{ name: 'dc', memoryMiB: 2048 }, { name: 'dns' }],
    verify: { vms: ['web', 'db'], memoryMiB: 768, overrides: { db: { memoryMiB: 4096 } } },
  } as unknown as VerifyTask['job'];
  const verify: VerifyTask = { kind: 'verify', job, repo: '/r', baseDir: '/', run: 'r1', baselines: {} };
  t.equal(taskMemory(verify), 2048 + DEFAULT_VM_MEMORY_MIB + 768 + 4096, 'group VMs, then each VM under test with its override');
});

t.test('give back on the real queue: no retry spent, taken again', async (t) => {
  const url = await freshDatabase(t);
  const queue = await LabQueue.open({ url, pollSeconds: 1, maintenanceSeconds: 3600 });
  t.teardown(() => queue.close());
  const id = await queue.submit({ kind: 'probe' }, undefined, { retryLimit: 0 });
  let seen = 0;
  const done = new Promise<void>((resolve) => {
    void queue.work(1, async (got) => {
      seen++;
      if (seen === 1) {
        await queue.giveBack(got, 1);
        const s = await queue.status(got);
        t.match(s, { state: 'created', retryCount: 0 }, 'back in the queue, no retry spent');
        return { givenBack: true };
      }
      resolve();
      return { ran: true };
    });
  });
  await done;
  const end = Date.now() + 20_000;
  let s = await queue.status<{ ran?: boolean }>(id);
  while (s.state !== 'completed' && Date.now() < end) {
    await new Promise((r) => setTimeout(r, 200));
    s = await queue.status<{ ran?: boolean }>(id);
  }
  t.match(s, { state: 'completed', retryCount: 0, output: { ran: true } }, 'taken again and run, though it had no retry left');
  t.equal(seen, 2);
});

t.test('workers starting at once create their own queues: the deadlock pg-boss can hit there is tried again', async (t) => {
  const url = await freshDatabase(t);
  const a = await LabQueue.open({ url, pollSeconds: 1, maintenanceSeconds: 3600 });
  t.teardown(() => a.close());
  const b = await LabQueue.open({ url, pollSeconds: 1, maintenanceSeconds: 3600 });
  t.teardown(() => b.close());
  // Two queues created at the same moment deadlocked 8 times in 15 here before the retry (PostgreSQL 40P01).
  for (let i = 0; i < 15; i++) {
    const r = await Promise.allSettled([a.ensureQueue(`restorelab-worker-a${i}`), b.ensureQueue(`restorelab-worker-b${i}`)]);
    const failed = r.flatMap((x) => (x.status === 'rejected' ? [String((x.reason as Error).message)] : []));
    if (failed.length > 0) {
      t.fail(`round ${i}: ${failed.join('; ')}`);
      return;
    }
  }
  t.pass('30 queues created in 15 simultaneous pairs, none refused');
});

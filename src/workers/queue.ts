/**
 * The lab queue: verification tasks in PostgreSQL, through pg-boss.
 *
 * Words:
 * - *task*: one unit a worker runs on its own host: a SureBackup job cut
 *   down to one VM under test, or to a whole application group with the VMs
 *   that need it (they share one lab, so they never split across hosts).
 * - *lease*: how long a task may stay active (`expireInSeconds`). A worker
 *   that dies keeps no lease: pg-boss's maintenance fails the expired task
 *   and, while retries are left, another worker takes it.
 *
 * pg-boss keeps each task's result (`output`) in its table, so the server
 * that submitted a task reads the outcome from the shared catalog however
 * far away the worker ran.
 */
import PgBoss from 'pg-boss';
import { RestorelabError } from '../errors.js';
import { redactUrl } from '../catalog/sql.js';

/** The shared queue: verification and recovery tasks, taken by whichever worker has room. */
export const VERIFY_QUEUE = 'restorelab-verify';

/**
 * A worker's own queue: tasks only that worker can run (stopping a session
 * that runs on its host). One queue per worker name is the simplest routing
 * pg-boss offers: a worker polls its own queue and no other, so a stop never
 * lands on another host; pg-boss keeps the answer as for any task, and a
 * task nobody takes (the worker is gone) stays visible as `created`.
 */
export function workerQueue(worker: string): string {
  return `restorelab-worker-${worker}`;
}

/** How long a stop may take on the worker (the VM's shutdown, the lab's teardown). */
export const STOP_LEASE_SECONDS = 5 * 60;

/** A default lease long enough for a slow TCG boot and every test of an application group. */
export const DEFAULT_LEASE_SECONDS = 30 * 60;
/** A task whose worker died is tried again this many times, on whichever worker takes it. */
export const DEFAULT_RETRY_LIMIT = 2;

export interface QueueOptions {
  url: string;
  leaseSeconds?: number;
  retryLimit?: number;
  /** How often pg-boss looks for expired leases (seconds; default 60). Tests shorten it. */
  maintenanceSeconds?: number;
  /** How often an idle worker slot asks for work (seconds; default 2). */
  pollSeconds?: number;
}

/** The shape pg-boss's own connection offers: the registry shares it instead of opening a second pool. */
export type SqlRunner = (text: string, values?: unknown[]) => Promise<{ rows: Record<string, unknown>[] }>;

export type TaskState = 'created' | 'retry' | 'active' | 'completed' | 'cancelled' | 'failed';

export interface TaskStatus<Out> {
  state: TaskState;
  retryCount: number;
  output: Out | null;
  /** pg-boss's record of the failure (a handler's thrown error, or the expired lease). */
  failure: string | null;
}

export class LabQueue {
  private constructor(
    private readonly boss: PgBoss,
    readonly options: Required<Omit<QueueOptions, 'url'>>,
  ) {}

  static async open(o: QueueOptions): Promise<LabQueue> {
    const opts = {
      leaseSeconds: o.leaseSeconds ?? DEFAULT_LEASE_SECONDS,
      retryLimit: o.retryLimit ?? DEFAULT_RETRY_LIMIT,
      maintenanceSeconds: o.maintenanceSeconds ?? 60,
      pollSeconds: o.pollSeconds ?? 2,
    };
    const boss = new PgBoss({
      connectionString: o.url,
      max: 4,
      application_name: 'restorelab',
      schedule: false,
      supervise: true,
      maintenanceIntervalSeconds: opts.maintenanceSeconds,
    });
    // Errors of its background loops (maintenance, polling) land here; without a listener they would crash the process.
    boss.on('error', (err: Error) => process.emitWarning(`lab queue: ${err.message}`));
    try {
      await boss.start();
      await createQueue(boss, VERIFY_QUEUE, {
        name: VERIFY_QUEUE,
        retryLimit: opts.retryLimit,
        expireInSeconds: opts.leaseSeconds,
        retentionMinutes: 24 * 60,
      });
    } catch (err) {
      await boss.stop({ graceful: false, wait: true }).catch(() => undefined);
      throw new RestorelabError('QUEUE_UNREACHABLE', `cannot open the lab queue at ${redactUrl(o.url)}: ${(err as Error).message}`, {
        hint: 'check that PostgreSQL runs and RESTORELAB_QUEUE (or RESTORELAB_CATALOG) names it (scripts/services up prints the URL)',
        cause: err,
      });
    }
    return new LabQueue(boss, opts);
  }

  sql: SqlRunner = (text, values) => this.boss.getDb().executeSql(text, values ?? []) as Promise<{ rows: Record<string, unknown>[] }>;

  /** Creates a worker's own queue (idempotent): its tasks are not retried (stopping is, and is asked again). */
  async ensureQueue(name: string): Promise<void> {
    await createQueue(this.boss, name, { name, retryLimit: 0, expireInSeconds: STOP_LEASE_SECONDS, retentionMinutes: 24 * 60 });
  }

  async submit(data: object, queue = VERIFY_QUEUE, o: { retryLimit?: number; leaseSeconds?: number } = {}): Promise<string> {
    const id = await this.boss.send(queue, data, {
      retryLimit: o.retryLimit ?? this.options.retryLimit,
      expireInSeconds: o.leaseSeconds ?? this.options.leaseSeconds,
    });
    if (id === null) throw new RestorelabError('QUEUE_UNREACHABLE', 'the lab queue refused a task', { hint: 'see the PostgreSQL log' });
    return id;
  }

  async status<Out>(id: string, queue = VERIFY_QUEUE): Promise<TaskStatus<Out>> {
    const job = await this.boss.getJobById<object>(queue, id, { includeArchive: true });
    if (!job)
      throw new RestorelabError('TASK_NOT_FOUND', `the lab queue has no task ${id}`, { hint: 'it may have been deleted by retention' });
    const out = (job.output ?? null) as Record<string, unknown> | null;
    const failed = job.state === 'failed' || job.state === 'retry';
    return {
      state: job.state,
      retryCount: job.retryCount,
      output: failed ? null : (out as Out | null),
      failure: failed && out ? String(out['message'] ?? JSON.stringify(out)) : null,
    };
  }

  /** Resolves with the task's output once a worker completed it; rejects when it failed for good or was cancelled. */
  async outcome<Out>(id: string, signal?: AbortSignal, queue = VERIFY_QUEUE): Promise<Out> {
    for (;;) {
      if (signal?.aborted) {
        await this.boss.cancel(queue, id).catch(() => undefined);
        throw signal.reason;
      }
      const s = await this.status<Out>(id, queue);
      if (s.state === 'completed' && s.output) return s.output;
      if (s.state === 'failed' || s.state === 'cancelled') {
        throw new RestorelabError(
          'TASK_FAILED',
          `lab task ${id} ${s.state} after ${s.retryCount} retries: ${s.failure ?? 'no reason recorded'}`,
          {
            hint: 'restorelab workers --json shows which workers are alive; their logs say more',
          },
        );
      }
      await sleep(1000, signal);
    }
  }

  /**
   * Fails an active task on behalf of a worker that died with it, so that it
   * goes back to the queue while retries are left (pg-boss's retry rules).
   */
  /**
   * Puts a task this worker took back to the queue untouched, for another
   * worker (or this one) in `delaySeconds`: as if never fetched, so it spends
   * no retry (pg-boss counts a retry only for a task with a start time), and
   * the handler's answer then completes nothing (pg-boss completes active tasks only).
   */
  async giveBack(id: string, delaySeconds = 3): Promise<void> {
    await this.sql(
      `UPDATE pgboss.job SET state = 'created', started_on = NULL, start_after = now() + make_interval(secs => $3)
       WHERE name = $1 AND id = $2 AND state = 'active'`,
      [VERIFY_QUEUE, id, delaySeconds],
    );
  }

  async cancel(id: string, queue = VERIFY_QUEUE): Promise<void> {
    await this.boss.cancel(queue, id);
  }

  async orphaned(id: string, reason: string): Promise<void> {
    await this.boss.fail(VERIFY_QUEUE, id, { message: reason });
  }

  /** Runs `handler` for tasks, `slots` at a time; what it returns is the task's output, what it throws fails the task. */
  async work(slots: number, handler: (id: string, data: unknown) => Promise<object>, queue = VERIFY_QUEUE): Promise<void> {
    for (let i = 0; i < slots; i++) {
      await this.boss.work(queue, { batchSize: 1, pollingIntervalSeconds: this.options.pollSeconds }, async (jobs) => {
        const job = jobs[0];
        if (!job) return undefined;
        return handler(job.id, job.data);
      });
    }
  }

  async close(): Promise<void> {
    await this.boss.stop({ graceful: true, wait: true, timeout: 10_000 });
  }
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((res) => {
    const t = setTimeout(done, ms);
    function done(): void {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      res();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}

/** PostgreSQL errors a concurrent createQueue can hit that go away when tried again: deadlock, unique violation. */
const CREATE_RACES = new Set(['40P01', '23505']);

/**
 * pg-boss's createQueue, tried again when it loses a race. Creating a queue
 * attaches a partition to pg-boss's job table; two workers starting at once
 * (each creating its own queue) can deadlock there, and PostgreSQL aborts one.
 * It is idempotent, so the loser simply tries again.
 */
async function createQueue(boss: PgBoss, name: string, options: Parameters<PgBoss['createQueue']>[1]): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      await boss.createQueue(name, options);
      return;
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      if (attempt >= 5 || typeof code !== 'string' || !CREATE_RACES.has(code)) throw err;
      await new Promise((r) => setTimeout(r, 100 + Math.random() * 400));
    }
  }
}

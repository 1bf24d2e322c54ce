/**
 * WorkerPool: the one worker-thread pool under every pool of restorelab
 * (CodecPool, ChunkPool, DecodePool, the restore writers). It spawns N
 * workers running one script, sends each request to the least busy one,
 * matches replies to requests by id, and turns a worker's error or unplanned
 * exit into a rejection of every pending request and of every later one (the
 * pool has failed: its owner closes it). What a request and its reply mean is
 * the owning pool's business.
 *
 * Words:
 * - *request*: a message with a numeric `id`, assigned here; the worker
 *   replies with a message carrying the same `id`.
 * - *busy*: requests sent to a worker and not yet answered.
 */
import { Worker } from 'node:worker_threads';

/** A message type without its `id` (assigned by the pool), kept apart per union member. */
export type WithoutId<T> = T extends unknown ? Omit<T, 'id'> : never;

export interface WorkerPoolOptions {
  /** The worker script (compiled JS beside its pool, as `new URL('./x-worker.js', import.meta.url)`). */
  script: URL;
  /** Handed to every worker as workerData. */
  workerData: unknown;
  /** Number of workers (at least one). */
  size: number;
  /** What the workers do, for error messages ("decode", "chunk", ...). */
  name: string;
  /**
   * Idle workers do not keep the process alive; busy ones do. For pools that
   * live as long as a server (DecodePool), whose owner may never close them.
   */
  unrefWhenIdle?: boolean;
  /** Called once when the pool fails (a worker died) or is closed, after pending requests are rejected. */
  onFailure?: (err: Error) => void;
}

interface Pending<Rep> {
  resolve(reply: Rep): void;
  reject(err: Error): void;
}

export class WorkerPool<Req extends { id: number }, Rep extends { id: number }> {
  private readonly workers: Array<{ worker: Worker; busy: number }> = [];
  private readonly pending = new Map<number, Pending<Rep>>();
  private nextId = 1;
  private failed: Error | undefined;
  private closing = false;

  constructor(private readonly opts: WorkerPoolOptions) {
    for (let i = 0; i < Math.max(1, opts.size); i++) {
      const worker = new Worker(opts.script, { workerData: opts.workerData });
      const slot = { worker, busy: 0 };
      worker.on('message', (reply: Rep) => {
        slot.busy--;
        const p = this.pending.get(reply.id);
        this.pending.delete(reply.id);
        if (this.pending.size === 0) this.setRef(false);
        p?.resolve(reply);
      });
      worker.on('error', (err) => this.fail(err));
      // terminate() in close() ends a worker with code 1: not a death to report.
      worker.on('exit', (code) => {
        if (code !== 0 && !this.closing) this.fail(new Error(`${opts.name} worker exited with code ${code}`));
      });
      if (opts.unrefWhenIdle) worker.unref();
      this.workers.push(slot);
    }
  }

  /** Number of workers. */
  get size(): number {
    return this.workers.length;
  }

  /** Why the pool no longer takes requests (a worker died, or it was closed); undefined while it works. */
  get failure(): Error | undefined {
    return this.failed;
  }

  /** Sends `message` to the least busy worker; resolves with its reply. `transfer` moves buffers instead of copying them. */
  request(message: WithoutId<Req>, transfer: ArrayBuffer[] = []): Promise<Rep> {
    if (this.failed) return Promise.reject(this.failed);
    // Closing: the workers are going (their list is already empty).
    if (this.closing) return Promise.reject(new Error(`${this.opts.name} pool closed`));
    const slot = this.workers.reduce((a, b) => (b.busy < a.busy ? b : a));
    const id = this.nextId++;
    slot.busy++;
    if (this.pending.size === 0) this.setRef(true);
    return new Promise<Rep>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      slot.worker.postMessage({ ...message, id }, transfer);
    });
  }

  /** Ends every worker; pending and later requests reject. */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    const workers = this.workers.splice(0);
    await Promise.all(workers.map((w) => w.worker.terminate()));
    this.fail(new Error(`${this.opts.name} pool closed`));
  }

  private setRef(on: boolean): void {
    if (!this.opts.unrefWhenIdle) return;
    for (const w of this.workers) {
      if (on) w.worker.ref();
      else w.worker.unref();
    }
  }

  private fail(err: Error): void {
    if (this.failed) return;
    this.failed = err;
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
    this.setRef(false);
    this.opts.onFailure?.(err);
  }
}

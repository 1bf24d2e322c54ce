/**
 * Long operations (backup, recover, job runs, restore...). A route that starts
 * one answers 202 with the operation resource; the client follows its state at
 * GET /api/v1/operations/:id or streams its events over Server-Sent Events at
 * /api/v1/operations/:id/events. Operations live in memory: they describe work
 * this server process does, and what outlives the process (restore points,
 * sessions, job runs) has its own resource.
 */
import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { httpStatusOf } from '../errors.js';

export type OperationState = 'running' | 'succeeded' | 'failed' | 'cancelled';

export interface OperationEvent {
  type: 'progress' | 'log' | 'done';
  at: string;
  /** progress: a fraction 0..1 when known, and what is being done. */
  fraction?: number;
  message?: string;
  data?: unknown;
}

export interface Operation {
  id: string;
  kind: string;
  state: OperationState;
  created: string;
  ended: string | null;
  /** Who started it (token name), for the audit trail. */
  by: string;
  progress: { fraction: number | null; message: string | null };
  result: unknown;
  /** Why it failed; `status` is the HTTP status the error has as a direct answer (the CLI's exit code follows it). */
  error: OperationError | null;
  /** Where the result lives once done, e.g. /api/v1/sessions/abc. */
  resource: string | null;
}

export interface OperationError {
  code: string;
  message: string;
  hint?: string;
  status?: number;
}

export interface OperationContext {
  signal: AbortSignal;
  progress(fraction: number | null, message?: string, data?: unknown): void;
  log(message: string): void;
}

export interface StartedWork {
  result: unknown;
  resource?: string;
}

const KEEP_ENDED = 200;

export class OperationRegistry {
  private readonly ops = new Map<string, { op: Operation; events: OperationEvent[]; abort: AbortController; bus: EventEmitter }>();

  constructor(private readonly describeError: (err: unknown) => OperationError) {}

  start(kind: string, by: string, work: (ctx: OperationContext) => Promise<StartedWork | unknown>): Operation {
    const op: Operation = {
      id: randomUUID(),
      kind,
      state: 'running',
      created: new Date().toISOString(),
      ended: null,
      by,
      progress: { fraction: null, message: null },
      result: null,
      error: null,
      resource: null,
    };
    const entry = { op, events: [] as OperationEvent[], abort: new AbortController(), bus: new EventEmitter() };
    entry.bus.setMaxListeners(0);
    this.ops.set(op.id, entry);
    const emit = (e: OperationEvent): void => {
      entry.events.push(e);
      if (entry.events.length > 1000) entry.events.splice(0, entry.events.length - 1000);
      entry.bus.emit('event', e);
    };
    const ctx: OperationContext = {
      signal: entry.abort.signal,
      progress: (fraction, message, data) => {
        op.progress = { fraction, message: message ?? op.progress.message };
        emit({ type: 'progress', at: new Date().toISOString(), fraction: fraction ?? undefined, message, data });
      },
      log: (message) => emit({ type: 'log', at: new Date().toISOString(), message }),
    };
    void (async () => {
      try {
        const out = await work(ctx);
        const w = out && typeof out === 'object' && 'result' in out ? (out as StartedWork) : { result: out };
        op.result = w.result ?? null;
        op.resource = w.resource ?? null;
        // Work that completed despite a late cancel did its job: its result stands.
        op.state = 'succeeded';
        op.progress = { fraction: 1, message: op.progress.message };
      } catch (err) {
        if (entry.abort.signal.aborted) {
          op.state = 'cancelled';
          // Work that says where it stopped keeps its message; anything else thrown on the way out is the cancel.
          const said = this.describeError(err);
          op.error =
            said.code === 'OPERATION_CANCELLED'
              ? said
              : {
                  code: 'OPERATION_CANCELLED',
                  status: httpStatusOf('OPERATION_CANCELLED'),
                  message: `cancelled: ${(entry.abort.signal.reason as Error | undefined)?.message ?? 'on request'}`,
                };
        } else {
          op.state = 'failed';
          op.error = this.describeError(err);
        }
      }
      op.ended = new Date().toISOString();
      emit({ type: 'done', at: op.ended, data: op });
      this.trim();
    })();
    return op;
  }

  get(id: string): Operation | undefined {
    return this.ops.get(id)?.op;
  }

  list(): Operation[] {
    return [...this.ops.values()].map((e) => e.op).reverse();
  }

  /** Asks a running operation to stop; false when it has already ended. */
  cancel(id: string): boolean {
    const e = this.ops.get(id);
    if (!e || e.op.state !== 'running') return false;
    e.abort.abort(new Error('cancelled through the API'));
    return true;
  }

  /** Past events, then live ones until `done`; returns an unsubscribe function. */
  subscribe(id: string, onEvent: (e: OperationEvent) => void): () => void {
    const e = this.ops.get(id);
    if (!e) return () => undefined;
    for (const ev of e.events) onEvent(ev);
    if (e.op.state !== 'running') return () => undefined;
    e.bus.on('event', onEvent);
    return () => {
      e.bus.off('event', onEvent);
    };
  }

  /** Resolves when the operation has ended (tests and the CLI's remote mode wait on this). */
  async wait(id: string): Promise<Operation | undefined> {
    const e = this.ops.get(id);
    if (!e) return undefined;
    if (e.op.state !== 'running') return e.op;
    await new Promise<void>((resolve) => {
      const on = (ev: OperationEvent): void => {
        if (ev.type === 'done') {
          e.bus.off('event', on);
          resolve();
        }
      };
      e.bus.on('event', on);
    });
    return e.op;
  }

  /** Cancels every running operation (server shutdown) and waits for them to end. */
  async shutdown(): Promise<void> {
    const running = [...this.ops.values()].filter((e) => e.op.state === 'running');
    for (const e of running) e.abort.abort(new Error('server shutting down'));
    await Promise.all(running.map((e) => this.wait(e.op.id)));
  }

  private trim(): void {
    const ended = [...this.ops.values()].filter((e) => e.op.state !== 'running');
    for (const e of ended.slice(0, Math.max(0, ended.length - KEEP_ENDED))) this.ops.delete(e.op.id);
  }
}

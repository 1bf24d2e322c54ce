/** Server-Sent Events for an operation: its past events, then live ones, until `done`. */
import type { Request, Response } from 'express';
import type { OperationRegistry } from './operations.js';

export function streamOperation(req: Request, res: Response, ops: OperationRegistry, id: string): void {
  res
    .status(200)
    .set({ 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive', 'x-accel-buffering': 'no' });
  res.flushHeaders();
  let seq = 0;
  let unsubscribe: () => void = () => undefined;
  // A comment line every 15 s keeps proxies from closing an idle stream.
  const keepAlive = setInterval(() => res.write(': keep-alive\n\n'), 15_000);
  const end = (): void => {
    clearInterval(keepAlive);
    unsubscribe();
    if (!res.writableEnded) res.end();
  };
  unsubscribe = ops.subscribe(id, (e) => {
    res.write(`id: ${seq++}\nevent: ${e.type}\ndata: ${JSON.stringify(e)}\n\n`);
    if (e.type === 'done') setImmediate(end);
  });
  req.on('close', end);
}

/** Sends 202 with the operation and where to follow it. */
export function accepted(res: Response, op: { id: string }): void {
  res.status(202).location(`/api/v1/operations/${op.id}`).json(op);
}

/**
 * Progress from the library's per-chunk callbacks, for operations.
 *
 * Thinned: a multi-terabyte disk calls back once per chunk, and every event
 * is kept (up to 1000) and sent to every SSE client, so only each whole
 * percent (and every change of phase) gets through.
 *
 * Cancellable: backup, restore and verify take no AbortSignal, but each
 * calls back after every chunk, and an error thrown from the callback fails
 * the work the way any read error does (backup rolls back its new chunks,
 * restore deletes its temp file). So the callback is where a cancelled
 * operation stops, at the next chunk.
 */
import type { OperationContext } from '../operations.js';
import { RestorelabError } from '../../errors.js';

export function percentProgress(o: OperationContext): (fraction: number, message: string) => void {
  let lastPercent = -1;
  let lastPrefix = '';
  return (fraction, message) => {
    if (o.signal.aborted) {
      // The abort reason is a plain Error, which the operation would report as an internal error.
      const why = o.signal.reason instanceof Error ? o.signal.reason.message : String(o.signal.reason);
      throw new RestorelabError('OPERATION_CANCELLED', `stopped at the next chunk: ${why}`);
    }
    const percent = Math.floor(Math.min(1, Math.max(0, fraction)) * 100);
    // Messages carry counts that change on every call; the part before the first digit names the phase.
    const prefix = message.replace(/\d.*$/, '');
    if (percent === lastPercent && prefix === lastPrefix) return;
    lastPercent = percent;
    lastPrefix = prefix;
    o.progress(fraction, message);
  };
}

/**
 * Progress from the library's per-chunk callbacks, thinned for operations:
 * a multi-terabyte disk calls back once per chunk, and every event is kept
 * (up to 1000) and sent to every SSE client, so only each whole percent (and
 * every change of message) gets through.
 */
import type { OperationContext } from '../operations.js';

export function percentProgress(o: OperationContext): (fraction: number, message: string) => void {
  let lastPercent = -1;
  let lastPrefix = '';
  return (fraction, message) => {
    const percent = Math.floor(Math.min(1, Math.max(0, fraction)) * 100);
    // Messages carry counts that change on every call; the part before the first digit names the phase.
    const prefix = message.replace(/\d.*$/, '');
    if (percent === lastPercent && prefix === lastPrefix) return;
    lastPercent = percent;
    lastPrefix = prefix;
    o.progress(fraction, message);
  };
}

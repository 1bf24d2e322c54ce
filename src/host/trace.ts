/**
 * Phase timestamps for performance work: with RESTORELAB_TRACE=1 set,
 * `tracePhase('x')` prints `trace <ms since process start> x` on stderr.
 * Off, it costs one property read. Wall-clock phases (waiting on QEMU,
 * libvirt, the disk) do not show in a CPU profile; these lines do
 * (docs/backup.md, "Live backup against virtnbdbackup").
 */
import { performance } from 'node:perf_hooks';

const on = Boolean(process.env.RESTORELAB_TRACE);

export function tracePhase(phase: string): void {
  if (on) process.stderr.write(`trace ${performance.now().toFixed(0)} ${phase}\n`);
}

/**
 * How commands talk to people and scripts. With --json a command prints exactly
 * one JSON document on stdout; everything human (progress, warnings) goes to
 * stderr so that stdout stays parseable. Below the CLI (the demo prints
 * through it too), with the byte formatting every command shares.
 */
import { createRequire } from 'node:module';
import type * as CliProgress from 'cli-progress';

// cli-progress draws the bar on a TTY; loaded when one is drawn, not on every start.
const require = createRequire(import.meta.url);

export interface Progress {
  update(done: number, detail?: string): void;
  finish(detail?: string): void;
}

export class Output {
  constructor(
    readonly json: boolean,
    private readonly stderr: NodeJS.WriteStream = process.stderr,
  ) {}

  /** Prints a command's result: the object as JSON, or the human rendering. */
  result(value: unknown, human?: (v: typeof value) => string): void {
    if (this.json) process.stdout.write(JSON.stringify(value) + '\n');
    else process.stdout.write((human ? human(value) : JSON.stringify(value, null, 2)) + '\n');
  }

  info(line: string): void {
    if (!this.json) this.stderr.write(line + '\n');
  }

  warn(line: string): void {
    this.stderr.write(`warning: ${line}\n`);
  }

  /**
   * A progress indicator for long work: a bar on a TTY, otherwise a plain line
   * at most every 2 seconds (and at the end), so logs stay readable.
   */
  progress(label: string, total: number, unit = 'bytes'): Progress {
    const fmt = (n: number): string => (unit === 'bytes' ? formatBytes(n) : String(n));
    if (this.stderr.isTTY && !this.json) {
      const cliProgress = require('cli-progress') as typeof CliProgress;
      const bar = new cliProgress.SingleBar(
        { format: `${label} [{bar}] {percentage}% {done}/{all} {detail}`, hideCursor: true, clearOnComplete: false },
        cliProgress.Presets.shades_classic,
      );
      bar.start(total, 0, { done: fmt(0), all: fmt(total), detail: '' });
      return {
        update: (done, detail = '') => bar.update(done, { done: fmt(done), all: fmt(total), detail }),
        finish: (detail = '') => {
          bar.update(total, { done: fmt(total), all: fmt(total), detail });
          bar.stop();
        },
      };
    }
    let last = 0;
    return {
      update: (done, detail) => {
        const now = Date.now();
        if (now - last < 2000) return;
        last = now;
        const pct = total > 0 ? Math.floor((done / total) * 100) : 0;
        this.stderr.write(`${label}: ${pct}% (${fmt(done)} of ${fmt(total)})${detail ? ' ' + detail : ''}\n`);
      },
      finish: (detail) => this.stderr.write(`${label}: done (${fmt(total)})${detail ? ' ' + detail : ''}\n`),
    };
  }
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

/**
 * The console watch: what a recovered VM says on its consoles, read for the
 * whole time it is under test, judged line by line.
 *
 * Sources: the serial log (the drivers' console.log), the 80x25 VGA text
 * buffer (src/hypervisor/vga.ts) polled every few seconds, and, once, the OCR
 * text of the screenshot (src/verify/ocr.ts). A VM fails its console check on
 * any of:
 * - a kernel panic, an Oops / kernel BUG, a segfault,
 * - systemd's emergency mode or the "Give root password for maintenance" prompt,
 * - a Windows stop screen (its text, read by OCR),
 * - a crash loop: init saying "respawning too fast", or the same failure line
 *   (normalised: timestamps, pids and numbers removed) seen CRASH_LOOP_MIN
 *   times. Counts are taken per source and per snapshot (one serial log tail,
 *   one VGA screen), never added across polls, so a line that simply stays
 *   on the screen is not counted again at every poll.
 */

export type ConsoleSource = 'serial' | 'vga' | 'ocr';
export type FindingKind = 'kernel panic' | 'oops' | 'segfault' | 'emergency mode' | 'maintenance prompt' | 'stop screen' | 'crash loop';

export interface ConsoleFinding {
  kind: FindingKind;
  source: ConsoleSource;
  /** The console line, as shown (trimmed). */
  line: string;
  /** For a crash loop: how often the line was seen in one snapshot. */
  count?: number;
}

/** The same normalised failure line this often in one snapshot is a crash loop; twice is not. */
export const CRASH_LOOP_MIN = 3;

const PATTERNS: [FindingKind, RegExp][] = [
  ['kernel panic', /\bKernel panic\b/i],
  [
    'oops',
    /\bOops(?::|\s+-|\s*\[#\d)|\bBUG: (?:unable to handle|kernel NULL pointer|soft lockup|scheduling while atomic)|\bgeneral protection fault\b/i,
  ],
  ['segfault', /\bsegfault at\b|\bSegmentation fault\b/i],
  ['emergency mode', /\bemergency mode\b/i],
  ['maintenance prompt', /Give root password for maintenance/i],
  [
    'stop screen',
    /ran into a problem and needs to restart|A problem has been detected and Windows has been shut down|\*\*\* STOP: 0x[0-9a-f]{8}|\bStop code:\s*[A-Z_]{6,}/i,
  ],
  ['crash loop', /respawning too fast/i],
];

/** Words that make a line a failure report, for crash-loop counting. */
const FAILURE =
  /\b(?:fail(?:s|ed|ure)?|error|fatal|cannot|can't|unable to|crash(?:ed)?|abort(?:ed)?|killed|core dumped|exited with|terminated)\b/i;

/**
 * A line with what varies between repeats taken out: kernel timestamps,
 * syslog date/host prefixes, pids, numbers and hex addresses, case and spacing.
 */
export function normaliseLine(line: string): string {
  return line
    .replace(/^\s*\[\s*\d+\.\d+\]\s*/, '')
    .replace(/^[A-Z][a-z]{2}\s+\d+\s+\d\d:\d\d:\d\d\s+\S+\s+/, '')
    .replace(/\[\d+\]/g, '[#]')
    .replace(/0x[0-9a-f]+/gi, '#')
    .replace(/\d+/g, '#')
    .replace(/\s+/g, ' ')
    .trim()
    .toLowerCase();
}

/** Findings in one snapshot of one source (a serial log tail, one VGA screen, one OCR text). */
export function scanConsole(text: string | string[], source: ConsoleSource): ConsoleFinding[] {
  const lines = (typeof text === 'string' ? text.split(/\r?\n/) : text).map((l) => l.trim()).filter((l) => l !== '');
  const out: ConsoleFinding[] = [];
  const seenKinds = new Set<string>();
  for (const line of lines) {
    for (const [kind, re] of PATTERNS) {
      if (!re.test(line)) continue;
      const key = `${kind}\0${normaliseLine(line)}`;
      if (!seenKinds.has(key)) {
        seenKinds.add(key);
        out.push({ kind, source, line });
      }
      break;
    }
  }
  for (const { line, count } of failureRepeats(lines).values()) {
    if (count >= CRASH_LOOP_MIN) out.push({ kind: 'crash loop', source, line, count });
  }
  return out;
}

/** Failure lines of one snapshot by normalised text, with how often each was seen. */
function failureRepeats(lines: string[]): Map<string, { line: string; count: number }> {
  const repeats = new Map<string, { line: string; count: number }>();
  for (const line of lines) {
    if (!FAILURE.test(line)) continue;
    const n = normaliseLine(line);
    const r = repeats.get(n);
    if (r) r.count++;
    else repeats.set(n, { line, count: 1 });
  }
  return repeats;
}

/** A failure line seen CRASH_LOOP_MIN - 1 times in one snapshot: a loop may be in the making. */
export function loopInTheMaking(text: string | string[]): boolean {
  const lines = (typeof text === 'string' ? text.split(/\r?\n/) : text).map((l) => l.trim()).filter((l) => l !== '');
  return [...failureRepeats(lines).values()].some((r) => r.count === CRASH_LOOP_MIN - 1);
}

const ORDER: FindingKind[] = ['kernel panic', 'oops', 'stop screen', 'emergency mode', 'maintenance prompt', 'segfault', 'crash loop'];
const SOURCE_NAME: Record<ConsoleSource, string> = { serial: 'serial console', vga: 'VGA console', ocr: 'screen (OCR)' };

/** Most serious first, one entry per kind quoting its first console line; the rest are counted. */
export function describeFindings(fs: ConsoleFinding[]): string {
  const byKind = new Map<FindingKind, ConsoleFinding[]>();
  for (const f of [...fs].sort((a, b) => ORDER.indexOf(a.kind) - ORDER.indexOf(b.kind))) {
    byKind.set(f.kind, [...(byKind.get(f.kind) ?? []), f]);
  }
  return [...byKind.values()]
    .map((group) => {
      const f = group[0]!;
      const more = group.length > 1 ? ` (+${group.length - 1} more)` : '';
      return `${f.kind} on the ${SOURCE_NAME[f.source]}: "${f.line.slice(0, 200)}"${f.count === undefined ? '' : ` (${f.count} times)`}${more}`;
    })
    .join('; ');
}

export interface ConsoleReaders {
  /** The VGA text buffer, already decoded into lines. */
  vga?: () => Promise<string[]>;
  /** The tail of the serial log. */
  serial?: () => Promise<string>;
}

/** How often the watch reads the consoles; a panic screen stays, a crash loop repeats, so seconds are enough. */
export const WATCH_INTERVAL_MS = 3000;
/** How much longer a VM whose failure line was seen twice is watched for a third time (ConsoleWatch.stop). */
export const SUSPECT_WAIT_MS = 15_000;
/** A source that failed this many reads in a row is given up (the VM is gone). */
const MAX_FAILED_READS = 5;

/**
 * Reads the consoles every `intervalMs` from start() until stop() or the
 * signal. Findings are kept once each (by kind, source and normalised line),
 * a crash loop with the highest count seen; memory is bounded by MAX_FINDINGS.
 */
export class ConsoleWatch {
  private readonly found = new Map<string, ConsoleFinding>();
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private polling: Promise<void> | undefined;
  private readonly failedReads = { vga: 0, serial: 0 };
  /** Per source: its last snapshot holds a failure line seen twice (loopInTheMaking). */
  private readonly suspect = { vga: false, serial: false };
  /** Findings already reported by an earlier test (consumed by take()). */
  private readonly reported = new Set<string>();
  static readonly MAX_FINDINGS = 50;

  constructor(
    private readonly readers: ConsoleReaders,
    private readonly opts: { intervalMs?: number; signal?: AbortSignal } = {},
  ) {
    opts.signal?.addEventListener('abort', () => this.halt(), { once: true });
  }

  start(): this {
    if (this.stopped || this.timer) return this;
    const tick = (): void => {
      this.timer = undefined;
      void this.poll().finally(() => {
        if (!this.stopped) {
          this.timer = setTimeout(tick, this.opts.intervalMs ?? WATCH_INTERVAL_MS);
          this.timer.unref();
        }
      });
    };
    tick();
    return this;
  }

  /** One read of every source; concurrent callers share it. */
  poll(): Promise<void> {
    this.polling ??= this.readAll().finally(() => {
      this.polling = undefined;
    });
    return this.polling;
  }

  private async readAll(): Promise<void> {
    const read = async (which: 'vga' | 'serial', f: (() => Promise<string | string[]>) | undefined): Promise<void> => {
      if (!f || this.failedReads[which] >= MAX_FAILED_READS) return;
      try {
        const text = await f();
        this.failedReads[which] = 0;
        this.add(scanConsole(text, which));
        this.suspect[which] = loopInTheMaking(text);
      } catch {
        this.failedReads[which]++;
      }
    };
    await read('vga', this.readers.vga);
    await read('serial', this.readers.serial);
  }

  /** Adds findings from elsewhere (the OCR text of a screenshot). */
  add(fs: ConsoleFinding[]): void {
    for (const f of fs) {
      const key = `${f.kind}\0${f.source}\0${normaliseLine(f.line)}`;
      const old = this.found.get(key);
      if (old) {
        if ((f.count ?? 0) > (old.count ?? 0)) old.count = f.count;
        continue;
      }
      if (this.found.size < ConsoleWatch.MAX_FINDINGS) this.found.set(key, { ...f });
    }
  }

  findings(): ConsoleFinding[] {
    return [...this.found.values()];
  }

  /** Findings not yet taken, marked as taken (so the end-of-VM check reports only what came later). */
  take(): ConsoleFinding[] {
    const out: ConsoleFinding[] = [];
    for (const [k, f] of this.found)
      if (!this.reported.has(k)) {
        this.reported.add(k);
        out.push(f);
      }
    return out;
  }

  private halt(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** A last read, then no more. */
  /**
   * Stops watching after one last read. A VM whose tests end while a failure
   * line has been seen twice is watched up to `suspectWaitMs` longer, until
   * the line repeats once more (a crash loop) or stops: a loop slower than the
   * VM's tests would otherwise pass.
   */
  async stop(o: { suspectWaitMs?: number } = {}): Promise<void> {
    if (this.stopped) return;
    const until = Date.now() + (o.suspectWaitMs ?? 0);
    await this.poll();
    while ((this.suspect.vga || this.suspect.serial) && Date.now() < until && !this.opts.signal?.aborted) {
      await new Promise((r) => setTimeout(r, Math.min(this.opts.intervalMs ?? WATCH_INTERVAL_MS, Math.max(0, until - Date.now()))));
      await this.poll();
    }
    this.halt();
    await this.poll();
  }
}

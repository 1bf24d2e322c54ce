/**
 * syncfs(2) for Node, which has no binding for it: one call makes every
 * write to a file system durable (file data, new names, renames), whoever
 * wrote it. A repository at sync level `filesystem` (src/repo/sync-level.ts)
 * writes its chunks without an fsync each and calls this once per backup.
 *
 * Why `sync -f DIR` (coreutils 8.24+, which calls syncfs on DIR's file
 * system) and not something in-process:
 * - fsync on a directory fd is not a substitute: it makes that directory's
 *   entries durable, not the data of the files named in it (ext4 allocates
 *   delayed data at writeback, outside the journal commit an fsync forces),
 *   and XFS and btrfs give even less.
 * - fsync of every chunk file at the end, from the libuv pool, is still one
 *   journal commit and one device flush per file: the cost this replaces.
 * - sync(2) (Node could reach it through `sync` without -f) flushes every
 *   file system of the host, including busy VM disks on other devices.
 * - A native addon would need a compiler at install time.
 * The child costs one fork of node (20-30 ms on a loaded host, measured in
 * docs/backup.md, "Sync levels"), once per backup: far less than the fsyncs
 * it replaces. Since Linux 5.8 syncfs reports writeback errors
 * of the file system (EIO, ENOSPC), and `sync` exits non-zero with them.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { exec } from './exec.js';

/** How long a sync may take before it counts as failed: a flush of gigabytes of dirty data on a slow disk is minutes. */
const SYNC_TIMEOUT_MS = 15 * 60_000;

/**
 * Makes every write to the file system holding `dir` durable. Rejects with
 * an Error naming the command and what it said when it fails or is missing.
 */
export async function syncFilesystem(dir: string): Promise<void> {
  const r = await exec('sync', ['-f', dir], { timeoutMs: SYNC_TIMEOUT_MS });
  if (r.code === 0) return;
  const why = r.timedOut
    ? `timed out after ${SYNC_TIMEOUT_MS / 1000} s`
    : r.code === 127
      ? `cannot run it (${r.stderr.trim()}): install coreutils 8.24 or newer`
      : `exit ${r.code ?? r.signal}: ${r.stderr.trim()}`;
  throw new Error(`sync -f ${dir} failed: ${why}`);
}

/** A syncer with nothing to do for this long ends its shell; the next sync starts another. */
const SYNCER_IDLE_MS = 10_000;
/** What the shell prints after each `sync -f`, with its exit code. */
const DONE_MARK = 'restorelab-sync-exit ';

/**
 * syncFilesystem without the fork of node on the path: a shell started
 * ahead of time (FilesystemSyncer.start, when a backup begins) waits on its
 * stdin and runs `sync -f DIR` for each line it reads, so the sync a backup
 * waits for costs the fork of a small shell, not of node (20-30 ms, more on
 * a busy host). Each sync() covers every write made before it was called:
 * the shell reads the request only after it was written. Requests are
 * answered in order. Idle for SYNCER_IDLE_MS, the shell is ended; a process
 * with nothing else to do exits without waiting for it (it is unref'd, and
 * it ends when its stdin closes with us).
 */
export class FilesystemSyncer {
  private child: ChildProcessWithoutNullStreams | undefined;
  private readonly waiting: { resolve: () => void; reject: (err: Error) => void; timer: NodeJS.Timeout }[] = [];
  private said = '';
  private buffered = '';
  private idle: NodeJS.Timeout | undefined;

  constructor(readonly dir: string) {}

  /** Starts the shell now (a backup calls it first, so the fork happens while it waits on other things). */
  start(): void {
    if (this.child) return;
    const child = spawn('sh', ['-c', `while read -r _; do sync -f -- "$1" 2>&1; echo "${DONE_MARK}$?"; done`, 'sh', this.dir], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    this.child = child;
    child.stdout.setEncoding('utf8');
    // A closed shell's last words are not the answers of its successor's requests.
    child.stdout.on('data', (d: string) => {
      if (this.child === child) this.onOutput(d);
    });
    child.stderr.on('data', (d: Buffer) => {
      if (this.child === child) this.said += d.toString();
    });
    child.on('error', (err) => this.ended(child, `cannot run it: ${err.message}`));
    child.on('close', (code, signal) => this.ended(child, `its shell ended (${code ?? signal})`));
    child.stdin.on('error', () => undefined);
    this.unref(child);
    this.armIdle();
  }

  /** Makes every write made so far to DIR's file system durable; rejects like syncFilesystem. */
  sync(): Promise<void> {
    this.start();
    const child = this.child as ChildProcessWithoutNullStreams;
    if (this.idle) clearTimeout(this.idle);
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        this.ended(child, `timed out after ${SYNC_TIMEOUT_MS / 1000} s`);
      }, SYNC_TIMEOUT_MS);
      this.waiting.push({ resolve, reject, timer });
      // While a sync is awaited the process must not exit under it.
      this.ref(child);
      child.stdin.write('sync\n');
    });
  }

  /** Ends the shell; a sync in flight is rejected. A sync() after this starts a new shell. */
  close(): void {
    const child = this.child;
    if (!child) return;
    // Detached at once: a sync() between now and the shell's exit must not be written to a closing stdin.
    this.ended(child, 'the syncer was closed');
    child.stdin.end();
  }

  private onOutput(d: string): void {
    this.buffered += d;
    for (let nl = this.buffered.indexOf('\n'); nl >= 0; nl = this.buffered.indexOf('\n')) {
      const line = this.buffered.slice(0, nl);
      this.buffered = this.buffered.slice(nl + 1);
      if (!line.startsWith(DONE_MARK)) {
        this.said += `${line}\n`;
        continue;
      }
      const code = line.slice(DONE_MARK.length);
      const said = this.said.trim();
      this.said = '';
      const w = this.waiting.shift();
      if (!w) continue;
      clearTimeout(w.timer);
      if (code === '0') w.resolve();
      else w.reject(new Error(`sync -f ${this.dir} failed: exit ${code}: ${said}`));
    }
    if (this.waiting.length === 0 && this.child) {
      this.unref(this.child);
      this.armIdle();
    }
  }

  private ended(child: ChildProcessWithoutNullStreams, why: string): void {
    if (this.child !== child) return;
    this.child = undefined;
    this.buffered = '';
    if (this.idle) clearTimeout(this.idle);
    const said = this.said.trim();
    this.said = '';
    for (const w of this.waiting.splice(0)) {
      clearTimeout(w.timer);
      w.reject(new Error(`sync -f ${this.dir} failed: ${why}${said ? `: ${said}` : ''}`));
    }
  }

  private armIdle(): void {
    if (this.idle) clearTimeout(this.idle);
    this.idle = setTimeout(() => this.close(), SYNCER_IDLE_MS);
    this.idle.unref();
  }

  private ref(child: ChildProcessWithoutNullStreams): void {
    child.ref();
    (child.stdout as unknown as { ref(): void }).ref();
  }

  private unref(child: ChildProcessWithoutNullStreams): void {
    child.unref();
    for (const s of [child.stdin, child.stdout, child.stderr] as unknown as { unref?: () => void }[]) s.unref?.();
  }
}

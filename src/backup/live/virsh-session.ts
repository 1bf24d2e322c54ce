/**
 * One interactive `virsh` process for the many QMP commands of a live
 * backup of a libvirt domain: one process and one libvirt connection
 * instead of one per command (each costs a process start and a connection
 * handshake, about a tenth of a second on a busy host, and a backup sends
 * about twenty-five).
 *
 * Framing: after each command we send `echo 'rl-end-' '<id>'`; virsh runs
 * commands in order, so everything the command printed comes before the
 * marker `rl-end- <id>` (which the echoed command line, printed after a
 * "virsh # " prompt when stdin is not a terminal, does not contain).
 * Arguments are single-quoted (virsh's own shell syntax); a single quote
 * inside one is refused by the caller, which then uses one process per call.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { randomBytes } from 'node:crypto';

export interface VirshReply {
  ok: boolean;
  stdout: string;
  stderr: string;
}

export class VirshSession {
  private readonly child: ChildProcessWithoutNullStreams;
  private stdout = '';
  private stderr = '';
  private queue: Promise<unknown> = Promise.resolve();
  private wake: (() => void) | undefined;
  private exited = false;
  private n = 0;
  private readonly tag = randomBytes(6).toString('hex');

  constructor(uri: string) {
    this.child = spawn('virsh', ['-q', '-c', uri], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.child.stdout.on('data', (d: Buffer) => {
      this.stdout += d.toString();
      this.wake?.();
    });
    this.child.stderr.on('data', (d: Buffer) => {
      this.stderr += d.toString();
      this.wake?.();
    });
    this.child.on('error', () => {
      this.exited = true;
      this.wake?.();
    });
    this.child.on('close', () => {
      this.exited = true;
      this.wake?.();
    });
  }

  /** True once virsh exited or was closed (a timed-out command closes it): callers then run virsh once per command. */
  get ended(): boolean {
    return this.exited || this.child.stdin.writableEnded;
  }

  static quotable(arg: string): boolean {
    return !arg.includes("'") && !arg.includes('\n');
  }

  /** Runs one virsh command; resolves with what it printed and whether it reported an error. */
  run(args: string[], timeoutMs: number): Promise<VirshReply> {
    const go = (): Promise<VirshReply> => this.once(args, timeoutMs);
    const p = this.queue.then(go, go);
    this.queue = p.catch(() => undefined);
    return p;
  }

  private async once(args: string[], timeoutMs: number): Promise<VirshReply> {
    if (this.exited) throw new Error('the virsh session has ended');
    const id = `${this.tag}-${this.n++}`;
    const marker = `rl-end- ${id}`;
    // stdout is kept across commands: the prompt after the previous marker belongs to this command's lines.
    this.stderr = '';
    this.child.stdin.write(`${args.map((a) => `'${a}'`).join(' ')}\necho 'rl-end-' '${id}'\n`);
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const at = this.stdout.indexOf(marker);
      if (at >= 0) {
        // Drop the prompt lines (prompt + echoed command) virsh prints for a non-terminal stdin.
        const out = this.stdout
          .slice(0, at)
          .split('\n')
          .filter((l) => !l.startsWith('virsh # '))
          .join('\n');
        this.stdout = this.stdout.slice(at + marker.length);
        // stderr is another pipe: give a failed command's message a moment to arrive.
        if (out.trim() === '' && this.stderr === '') await new Promise((r) => setTimeout(r, 20));
        return { ok: !/^error: /m.test(this.stderr), stdout: out, stderr: this.stderr };
      }
      if (this.exited) throw new Error(`virsh exited: ${this.stderr.trim()}`);
      const left = deadline - Date.now();
      if (left <= 0) {
        this.close();
        throw new Error(`virsh ${args[0] ?? ''}: no answer within ${timeoutMs} ms`);
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.wake = () => {
          clearTimeout(timer);
          this.wake = undefined;
          resolve();
        };
      });
    }
  }

  close(): void {
    if (this.exited) return;
    this.child.stdin.end('quit\n');
    setTimeout(() => {
      if (!this.exited) this.child.kill('SIGKILL');
    }, 2000).unref();
  }
}

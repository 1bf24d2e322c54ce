/**
 * YARA through Debian's command-line tools, measured against the library
 * bindings on npm (none maintained for YARA 4): `yarac` compiles a rule file
 * (once per rule set: compiled sets are kept in the state directory), and
 * one `yara -C` per scan reads the files to scan from a FIFO
 * (`--scan-list`), with several threads, while the scan is still finding
 * them: one process start for the whole scan, and yara's threads busy as
 * soon as the first file is ready.
 *
 * Words:
 * - *rule set*: the rule file a user hands us; its *hash* is the SHA-256 of
 *   its source bytes, the key (with a file's content hash) of the verdict cache.
 * - *done rule*: a rule we compile in with the user's, in a namespace of its
 *   own (`restorelab:scanned`, condition `true`): yara prints it for every
 *   file it scanned, after the file's other matches, so its line says that
 *   yara is finished with that file (its copy can go) even when nothing of
 *   the user's matched.
 *
 * Paths are Buffers all the way: a guest file name need not be UTF-8, and a
 * file we cannot name is a file we do not scan. Output lines are
 * `NAMESPACE:RULE PATH` (`-e`; identifiers never hold a space or a colon), so
 * a path is whatever follows the first space; a name holding a newline
 * cannot go in a list and is scanned through a symlink in our own work
 * directory instead. yara's stdout is a pipe, so it runs under `stdbuf -oL`
 * (coreutils): without it a line would wait in a 4 KiB buffer.
 */
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  constants,
  createWriteStream,
  mkdirSync,
  mkdtempSync,
  openSync,
  closeSync,
  readFileSync,
  readdirSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { RestorelabError, badInput, missingComponent, notFound } from '../errors.js';
import { which } from '../host/exec.js';

export interface CompiledRules {
  /** The source file as given. */
  source: string;
  /** `yarac` output, in `workDir`. */
  compiled: string;
  /** SHA-256 (hex) of the rule source bytes. */
  hash: string;
  /** Private scratch directory (list files, symlinks); `dispose` removes it. */
  workDir: string;
  dispose(): void;
}

/** What one batch found: matched rule names per path (latin1 key of the path bytes), and files yara could not read. */
export interface BatchResult {
  matches: Map<string, string[]>;
  errors: Map<string, string>;
}

const COMPILE_TIMEOUT_MS = 120_000;
const NEWLINE = 0x0a;

function tool(name: 'yara' | 'yarac' | 'stdbuf' | 'mkfifo'): string {
  const p = which(name);
  if (!p)
    throw missingComponent(
      name,
      name === 'stdbuf' || name === 'mkfifo' ? 'apt-get install coreutils' : 'apt-get install yara (scripts/setup installs it)',
    );
  return p;
}

/** The latin1 string of a path's bytes: a lossless key for any byte sequence. */
export function pathKey(p: Buffer): string {
  return p.toString('latin1');
}

function run(
  cmd: string,
  args: string[],
  timeoutMs: number,
): Promise<{ code: number | null; stdout: Buffer; stderr: string; timedOut: boolean }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let stderr = '';
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString('utf8')));
    child.on('error', (err) => {
      clearTimeout(timer);
      resolve({ code: 127, stdout: Buffer.concat(out), stderr: stderr + err.message, timedOut });
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout: Buffer.concat(out), stderr, timedOut });
    });
  });
}

/** The done rule's namespace and name (see the module comment). */
const DONE_NAMESPACE = 'restorelab';
const DONE_RULE = 'scanned';
const DONE_SOURCE = `rule ${DONE_RULE} { condition: true }\n`;
/** Changes whenever what we compile changes (the done rule, the namespaces): older cached sets are not used. */
const CACHE_FORMAT = 'restorelab compiled rules v1';

/**
 * What the compiled bytes depend on besides the source: the yarac and yara
 * binaries and libyara (an upgrade changes the compiled format; Debian's
 * yara only asks for libyara >= its version), by path, inode, size and mtime.
 */
function toolIdentity(): string {
  const files = [tool('yarac'), tool('yara')];
  for (const dir of ['/lib', '/usr/lib', '/usr/local/lib', '/lib64', '/usr/lib64']) {
    let names: string[];
    try {
      names = readdirSync(dir);
    } catch {
      continue;
    }
    for (const n of names) {
      if (n.startsWith('libyara.so')) files.push(join(dir, n));
      else if (n.endsWith('-linux-gnu'))
        try {
          for (const m of readdirSync(join(dir, n))) if (m.startsWith('libyara.so')) files.push(join(dir, n, m));
        } catch {
          // not a directory
        }
    }
  }
  return files
    .map((f) => {
      try {
        const st = statSync(f);
        return `${f}:${st.ino}:${st.size}:${st.mtimeMs}`;
      } catch {
        return `${f}:-`;
      }
    })
    .join('\n');
}

/**
 * The compiled set for `bytes` from the cache directory, when there and
 * intact: `<key>.yarc` and `<key>.sha256` (the SHA-256 of the compiled
 * bytes, checked before use). A rule file with an `include` is never cached:
 * what it includes is not part of its hash.
 */
function cacheKey(bytes: Buffer): string | undefined {
  if (bytes.includes('include')) return undefined;
  return createHash('sha256').update(CACHE_FORMAT).update('\0').update(bytes).update('\0').update(toolIdentity()).digest('hex');
}

function fromCache(cacheDir: string, key: string): Buffer | undefined {
  try {
    const compiled = readFileSync(join(cacheDir, `${key}.yarc`));
    const want = readFileSync(join(cacheDir, `${key}.sha256`), 'utf8').trim();
    return createHash('sha256').update(compiled).digest('hex') === want ? compiled : undefined;
  } catch {
    return undefined;
  }
}

/** Writes one file 0600 through a temporary name and a rename, so a reader never sees half of it. */
function writeAtomic(file: string, bytes: Buffer | string): void {
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, bytes, { mode: 0o600 });
  renameSync(tmp, file);
}

function toCache(cacheDir: string, key: string, compiled: Buffer): void {
  try {
    mkdirSync(cacheDir, { recursive: true, mode: 0o700 });
    writeAtomic(join(cacheDir, `${key}.yarc`), compiled);
    writeAtomic(join(cacheDir, `${key}.sha256`), `${createHash('sha256').update(compiled).digest('hex')}\n`);
  } catch {
    // A cache that cannot be written costs the next scan a compile, nothing else.
  }
}

/**
 * Compiles `source` with yarac (and the done rule) into a private directory
 * below `scratch`, or takes the compiled set from `opts.cacheDir` when it
 * holds one for the same source bytes and the same yara. A file that does
 * not compile is bad input, with yarac's own message (file, line, what is
 * wrong).
 */
export async function compileRules(source: string, scratch: string, opts: { cacheDir?: string } = {}): Promise<CompiledRules> {
  let bytes: Buffer;
  try {
    bytes = readFileSync(source);
  } catch (err) {
    throw notFound(
      'YARA_RULES_NOT_FOUND',
      `cannot read the YARA rule file ${source}: ${(err as Error).message}`,
      'give the path of a .yar rule file with --yara',
    );
  }
  const yarac = tool('yarac');
  tool('yara');
  const workDir = mkdtempSync(join(scratch, 'yara-'));
  const dispose = (): void => rmSync(workDir, { recursive: true, force: true });
  const compiled = join(workDir, 'rules.yarc');
  const hash = createHash('sha256').update(bytes).digest('hex');
  const key = opts.cacheDir !== undefined ? cacheKey(bytes) : undefined;
  const cached = key !== undefined ? fromCache(opts.cacheDir!, key) : undefined;
  if (cached) {
    // A private copy: what yara loads is what was checked.
    writeFileSync(compiled, cached, { mode: 0o600 });
    return { source, compiled, hash, workDir, dispose };
  }
  const done = join(workDir, 'done.yar');
  writeFileSync(done, DONE_SOURCE, { mode: 0o600 });
  // Namespaces named: yarac splits `NS:FILE` at the first colon, so a path holding one is read as a path.
  const r = await run(yarac, ['-w', `default:${source}`, `${DONE_NAMESPACE}:${done}`, compiled], COMPILE_TIMEOUT_MS);
  if (r.code !== 0) {
    dispose();
    const why = r.timedOut
      ? `yarac did not finish within ${COMPILE_TIMEOUT_MS / 1000} s`
      : r.stderr.trim() || `yarac exited with ${r.code}`;
    throw badInput(
      'YARA_RULES_INVALID',
      `the YARA rule file ${source} does not compile: ${why}`,
      'fix the rule file (`yarac <file> /dev/null` shows the same error); nothing was mounted or scanned',
    );
  }
  if (key !== undefined) toCache(opts.cacheDir!, key, readFileSync(compiled));
  return { source, compiled, hash, workDir, dispose };
}

/** Threads one yara process scans with: every core, at most 8. */
export function scanThreads(): number {
  return Math.max(1, Math.min(8, availableParallelism()));
}

/** yara's answer for one file: the user's rules that matched, or why it could not be scanned. */
export type FileAnswer = { rules: string[] } | { error: string };

/** Silence from yara while it has files to scan, before the scan is given up. */
const IDLE_TIMEOUT_MS = 3_600_000;
const CR = 0x0d;

let streamSeq = 0;

/**
 * One yara process for a whole scan (see the module comment): `add` queues
 * a file and resolves with yara's answer once yara is done with it, `end`
 * says there are no more and waits for the process. A file is answered when
 * its done rule is printed (all its matches came before) or when yara names
 * it in an `error scanning` line; a process that fails, or prints a match
 * for a file it had already finished, fails every file still waiting and
 * `end` with YARA_FAILED.
 */
export class YaraScan {
  private readonly child: ReturnType<typeof spawn>;
  private readonly list: ReturnType<typeof createWriteStream>;
  private readonly fifo: string;
  /** Files queued and not answered, by the latin1 key of the name yara was given. */
  private readonly waiting = new Map<string, { rules: string[]; resolve: (a: FileAnswer) => void; reject: (e: Error) => void }>();
  /** Names given through a symlink (a newline in the real name): symlink key → real key. */
  private readonly alias = new Map<string, string>();
  private failure: RestorelabError | undefined;
  private readonly exited: Promise<void>;
  private stderrText = '';
  private idle: NodeJS.Timeout | undefined;
  private seq = 0;
  private readonly n = streamSeq++;

  constructor(
    private readonly rules: CompiledRules,
    opts: { threads?: number; idleTimeoutMs?: number } = {},
  ) {
    this.fifo = join(rules.workDir, `list-${this.n}`);
    const made = spawnSync(tool('mkfifo'), ['-m', '600', this.fifo], { encoding: 'utf8' });
    if (made.status !== 0)
      throw new RestorelabError('YARA_FAILED', `cannot make the list FIFO ${this.fifo}: ${made.stderr.trim() || `exit ${made.status}`}`, {
        hint: 'the state directory must be on a local filesystem that can hold FIFOs',
      });
    const idleMs = opts.idleTimeoutMs ?? IDLE_TIMEOUT_MS;
    this.child = spawn(
      tool('stdbuf'),
      ['-oL', tool('yara'), '-w', '-e', '-C', '-p', String(opts.threads ?? scanThreads()), '--scan-list', rules.compiled, this.fifo],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    // Opening a FIFO for writing waits for its reader (in libuv's pool, not on this thread).
    this.list = createWriteStream(this.fifo, { flags: 'w' });
    this.list.on('error', (err) => this.fail(`writing the file list: ${err.message}`));
    const armIdle = (): void => {
      clearTimeout(this.idle);
      this.idle = this.waiting.size > 0 ? setTimeout(() => this.kill(`no answer for ${idleMs / 1000} s`), idleMs) : undefined;
      this.idle?.unref();
    };
    this.armIdle = armIdle;
    lines(this.child.stdout!, (line) => {
      this.onStdout(line);
      armIdle();
    });
    lines(this.child.stderr!, (line) => {
      this.onStderr(line);
      armIdle();
    });
    this.exited = new Promise((resolve) => {
      this.child.on('error', (err) => {
        this.fail(err.message);
        this.unblockList();
        resolve();
      });
      this.child.on('close', (code, signal) => {
        clearTimeout(this.idle);
        if (code !== 0) this.fail(this.stderrText.trim() || (signal ? `killed by ${signal}` : `exit ${code}`));
        else if (this.waiting.size > 0) this.fail(`${this.waiting.size} file(s) were never answered`);
        this.unblockList();
        resolve();
      });
    });
  }

  private armIdle: () => void;

  /**
   * Queues `path` (an absolute path) and resolves with yara's answer. The
   * returned promise settles only when yara is done with the file, so its
   * copy may be removed then; waiting for the write into the list (`queued`)
   * is the caller's backpressure.
   */
  add(path: Buffer): { queued: Promise<void>; answer: Promise<FileAnswer> } {
    if (this.failure) return { queued: Promise.reject(this.failure), answer: Promise.reject(this.failure) };
    const key = pathKey(path);
    let given = path;
    if (path.includes(NEWLINE) || path.includes(CR)) {
      given = Buffer.from(join(this.rules.workDir, `nl-${this.n}-${this.seq++}`));
      symlinkSync(path, given);
      this.alias.set(pathKey(given), key);
    }
    const answer = new Promise<FileAnswer>((resolve, reject) => {
      this.waiting.set(pathKey(given), { rules: [], resolve, reject });
    });
    answer.catch(() => undefined);
    this.armIdle();
    const queued = new Promise<void>((resolve, reject) => {
      const line = Buffer.concat([given, Buffer.from('\n')]);
      if (this.list.write(line)) resolve();
      else this.list.once('drain', () => (this.failure ? reject(this.failure) : resolve()));
    });
    queued.catch(() => undefined);
    return { queued, answer };
  }

  /** No more files: waits for yara to answer every one and exit; throws YARA_FAILED when it did not. */
  async end(): Promise<void> {
    await new Promise<void>((resolve) => this.list.end(resolve));
    await this.exited;
    for (const link of this.alias.keys()) rmSync(Buffer.from(link, 'latin1').toString(), { force: true });
    rmSync(this.fifo, { force: true });
    if (this.failure) throw this.failure;
  }

  /** Stops yara (a scan that failed elsewhere) and waits for it; files still waiting are failed. */
  async abort(): Promise<void> {
    this.kill('the scan stopped');
    this.list.destroy();
    await this.exited;
    rmSync(this.fifo, { force: true });
  }

  private kill(why: string): void {
    this.fail(why);
    this.child.kill('SIGKILL');
  }

  private fail(why: string): void {
    this.failure ??= new RestorelabError('YARA_FAILED', `yara failed: ${why}`, {
      hint: 'run `yara -C <compiled rules> <file>` on one of the files to see why',
    });
    for (const w of this.waiting.values()) w.reject(this.failure);
    this.waiting.clear();
  }

  /**
   * A writer still waiting for the FIFO's reader (yara died first) is let go
   * by opening the other end ourselves, held until the writer's open has
   * returned: libuv's pool may not have begun that open yet (a busy host),
   * and a reader that came and went before it would leave it blocked for
   * ever. Once the writer is open with no reader, its writes fail (EPIPE).
   */
  private unblockList(): void {
    if (!this.list.pending) return;
    let fd: number;
    try {
      fd = openSync(this.fifo, constants.O_RDONLY | constants.O_NONBLOCK);
    } catch {
      return; // already gone
    }
    let closed = false;
    const release = (): void => {
      if (closed) return;
      closed = true;
      closeSync(fd);
    };
    this.list.once('open', release);
    this.list.once('close', release);
    this.list.once('error', release);
  }

  private onStdout(line: Buffer): void {
    const colon = line.indexOf(0x3a);
    const sp = line.indexOf(0x20);
    if (colon <= 0 || sp <= colon) return;
    const ns = line.subarray(0, colon).toString('utf8');
    const rule = line.subarray(colon + 1, sp).toString('utf8');
    const said = pathKey(line.subarray(sp + 1));
    const w = this.waiting.get(said);
    if (!w) {
      // A line for a file already answered (or never given): the answers can no longer be trusted.
      this.kill(`yara printed ${ns}:${rule} for a file it was not scanning`);
      return;
    }
    if (ns === DONE_NAMESPACE && rule === DONE_RULE) {
      this.waiting.delete(said);
      this.unalias(said);
      w.resolve({ rules: w.rules });
    } else if (!w.rules.includes(rule)) {
      w.rules.push(rule);
    }
  }

  private onStderr(line: Buffer): void {
    const prefix = Buffer.from('error scanning ');
    if (line.subarray(0, prefix.length).equals(prefix)) {
      const rest = line.subarray(prefix.length);
      // The name may hold ": " itself: the one yara was given is the one that is waiting.
      for (let at = rest.indexOf(': '); at >= 0; at = rest.indexOf(': ', at + 1)) {
        const said = pathKey(rest.subarray(0, at));
        const w = this.waiting.get(said);
        if (!w) continue;
        this.waiting.delete(said);
        this.unalias(said);
        w.resolve({ error: rest.subarray(at + 2).toString('utf8') });
        return;
      }
    }
    this.stderrText += `${line.toString('utf8')}\n`;
  }

  private unalias(said: string): void {
    if (!this.alias.has(said)) return;
    rmSync(Buffer.from(said, 'latin1').toString(), { force: true });
    this.alias.delete(said);
  }
}

/** Calls `on` with each complete line (without its newline) of `stream`. */
function lines(stream: NodeJS.ReadableStream, on: (line: Buffer) => void): void {
  let rest = Buffer.alloc(0);
  stream.on('data', (d: Buffer) => {
    let buf = rest.length > 0 ? Buffer.concat([rest, d]) : d;
    for (let nl = buf.indexOf(NEWLINE); nl >= 0; nl = buf.indexOf(NEWLINE)) {
      on(buf.subarray(0, nl));
      buf = buf.subarray(nl + 1);
    }
    rest = Buffer.from(buf);
  });
  stream.on('end', () => {
    if (rest.length > 0) on(rest);
  });
}

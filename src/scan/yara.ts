/**
 * YARA through Debian's command-line tools, measured against the library
 * bindings on npm (none maintained for YARA 4): `yarac` compiles a rule file
 * once per command, and `yara -C` scans batches of files named in a list
 * file (`--scan-list`) with several threads, so one process start is spread
 * over thousands of files.
 *
 * Words:
 * - *rule set*: the rule file a user hands us; its *hash* is the SHA-256 of
 *   its source bytes, the key (with a file's content hash) of the verdict cache.
 * - *batch*: the files one `yara` process scans.
 *
 * Paths are Buffers all the way: a guest file name need not be UTF-8, and a
 * file we cannot name is a file we do not scan. Output lines are `RULE PATH`
 * (rule identifiers never hold a space), so a path is whatever follows the
 * first space; a name holding a newline cannot go in a list file and is
 * scanned through a symlink in our own work directory instead.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
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

function tool(name: 'yara' | 'yarac'): string {
  const p = which(name);
  if (!p) throw missingComponent(name, 'apt-get install yara (scripts/setup installs it)');
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

/**
 * Compiles `source` with yarac into a private directory below `scratch`.
 * A file that does not compile is bad input, with yarac's own message
 * (file, line, what is wrong).
 */
export async function compileRules(source: string, scratch: string): Promise<CompiledRules> {
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
  const r = await run(yarac, ['-w', source, compiled], COMPILE_TIMEOUT_MS);
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
  return { source, compiled, hash: createHash('sha256').update(bytes).digest('hex'), workDir, dispose };
}

/** Threads one yara process scans with: every core, at most 8. */
export function scanThreads(): number {
  return Math.max(1, Math.min(8, availableParallelism()));
}

let batchSeq = 0;

/**
 * Scans `files` (absolute paths on a read-only mount) with the compiled
 * rules in one yara process. Every path is answered: with its matched rules
 * (none: no match), or in `errors` when yara could not read it.
 */
export async function scanBatch(
  rules: CompiledRules,
  files: readonly Buffer[],
  opts: { threads?: number; timeoutMs?: number } = {},
): Promise<BatchResult> {
  const result: BatchResult = { matches: new Map(), errors: new Map() };
  if (files.length === 0) return result;
  const n = batchSeq++;
  // yara reports the name it was given: a symlink's name maps back to the guest file.
  const alias = new Map<string, string>();
  const lines: Buffer[] = [];
  files.forEach((f, i) => {
    if (f.includes(NEWLINE)) {
      const link = join(rules.workDir, `nl-${n}-${i}`);
      symlinkSync(f, link);
      alias.set(pathKey(Buffer.from(link)), pathKey(f));
      lines.push(Buffer.from(link));
    } else {
      lines.push(f);
    }
    result.matches.set(pathKey(f), []);
  });
  const list = join(rules.workDir, `list-${n}`);
  writeFileSync(list, Buffer.concat(lines.flatMap((l) => [l, Buffer.from('\n')])), { mode: 0o600 });
  try {
    const r = await run(
      tool('yara'),
      ['-w', '-C', '-p', String(opts.threads ?? scanThreads()), '--scan-list', rules.compiled, list],
      opts.timeoutMs ?? 3_600_000,
    );
    if (r.code !== 0 || r.timedOut) {
      throw new RestorelabError(
        'YARA_FAILED',
        `yara failed on a batch of ${files.length} files: ${r.timedOut ? 'timed out' : r.stderr.trim() || `exit ${r.code}`}`,
        {
          hint: 'run `yara -C <compiled rules> <file>` on one of the files to see why',
        },
      );
    }
    let at = 0;
    while (at < r.stdout.length) {
      let end = r.stdout.indexOf(NEWLINE, at);
      if (end < 0) end = r.stdout.length;
      const line = r.stdout.subarray(at, end);
      at = end + 1;
      const sp = line.indexOf(0x20);
      if (sp <= 0) continue;
      const rule = line.subarray(0, sp).toString('utf8');
      const said = pathKey(line.subarray(sp + 1));
      const key = alias.get(said) ?? said;
      const got = result.matches.get(key);
      if (got && !got.includes(rule)) got.push(rule);
    }
    for (const l of r.stderr.split('\n')) {
      const m = /^error scanning (.*): (.*)$/.exec(l);
      if (!m) continue;
      const said = pathKey(Buffer.from(m[1] as string, 'utf8'));
      const key = alias.get(said) ?? said;
      // yara names the file in its stderr as UTF-8 text; match it back to the bytes we gave.
      const hit = result.matches.has(key)
        ? key
        : [...result.matches.keys()].find((k) => Buffer.from(k, 'latin1').toString('utf8') === m[1]);
      if (hit !== undefined) {
        result.errors.set(hit, m[2] as string);
        result.matches.delete(hit);
      }
    }
    return result;
  } finally {
    rmSync(list, { force: true });
    for (const link of alias.keys()) rmSync(Buffer.from(link, 'latin1').toString(), { force: true });
  }
}

/**
 * Where a mounted file's bytes lie on its partition: the FIEMAP extents,
 * read in bulk with `filefrag -e` (e2fsprogs; FIEMAP works on ext4, xfs and
 * btrfs alike), one process per group of files.
 *
 * Words: an *extent* is `logical` (offset in the file), `physical` (offset
 * on the partition) and `length`, all in bytes. An *extent list* is usable
 * only when every extent is plain data at a known place: a file with inline
 * data, unwritten (preallocated) or delayed extents, encoded or encrypted
 * data, an unknown location, or no extents at all gets `null`, and is read.
 */
import { spawn } from 'node:child_process';
import { missingComponent } from '../errors.js';
import { which } from '../host/exec.js';

export interface Extent {
  logical: number;
  physical: number;
  length: number;
}

/** Extent flags that say nothing about where the bytes are: the data is plain, at `physical`. */
const PLAIN_FLAGS = new Set(['last', 'eof', 'shared', 'merged']);
const ROW = /^\s*\d+:\s*(\d+)\.\.\s*\d+:\s*(\d+)\.\.\s*\d+:\s*(\d+):(?:\s*\d+:)?\s*(\S*)\s*$/;
const TIMEOUT_MS = 300_000;

function filefrag(): string {
  const p = which('filefrag');
  if (!p) throw missingComponent('filefrag', 'apt-get install e2fsprogs (scripts/setup installs it)');
  return p;
}

/** The canonical text of an extent list (what the catalog keeps and compares). */
export function extentsKey(list: readonly Extent[]): string {
  return list.map((e) => `${e.logical}:${e.physical}:${e.length}`).join(',');
}

function run(args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(filefrag(), args, { stdio: ['ignore', 'pipe', 'ignore'], timeout: TIMEOUT_MS });
    const out: Buffer[] = [];
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.on('error', reject);
    // filefrag exits non-zero when one file failed; that file just has no extents below.
    child.on('close', () => resolve(Buffer.concat(out).toString('latin1')));
  });
}

/**
 * The extent lists of `paths` (host paths on a read-only mount), in order;
 * null where filefrag could not say or the list is not usable (see above).
 * A name that cannot go through argv unchanged (not UTF-8, or holding a
 * newline) is null too: such files are read.
 */
export async function readExtents(paths: readonly Buffer[]): Promise<(Extent[] | null)[]> {
  const out: (Extent[] | null)[] = paths.map(() => null);
  const asked: { i: number; name: string }[] = [];
  for (const [i, p] of paths.entries()) {
    const name = p.toString('utf8');
    if (p.includes(0x0a) || !Buffer.from(name, 'utf8').equals(p)) continue;
    asked.push({ i, name });
  }
  if (asked.length === 0) return out;
  // -b1: offsets and lengths in bytes. `--` so a name is never an option.
  const lines = (await run(['-e', '-b1', '--', ...asked.map((a) => a.name)])).split('\n');
  let at = 0;
  for (const { i, name } of asked) {
    // The output names the file as latin1 here, the bytes of its UTF-8 name.
    const latin = Buffer.from(name, 'utf8').toString('latin1');
    const head = `File size of ${latin} is `;
    while (at < lines.length && !lines[at]!.startsWith(head)) {
      // Lines of a file that failed, or of another file: only skip forward past ones that cannot be this file's.
      if (lines[at]!.startsWith('File size of ')) break;
      at++;
    }
    if (at >= lines.length || !lines[at]!.startsWith(head)) continue;
    at++;
    const list: Extent[] = [];
    let usable = true;
    const tail = `${latin}: `;
    for (; at < lines.length && !lines[at]!.startsWith('File size of '); at++) {
      const line = lines[at]!;
      if (line.startsWith(tail) && /extents? found$/.test(line)) {
        const n = Number(/(\d+) extents? found$/.exec(line)?.[1]);
        if (n !== list.length) usable = false;
        at++;
        break;
      }
      const m = ROW.exec(line);
      if (!m) continue;
      const flags = m[4] ? m[4].split(',') : [];
      if (flags.some((f) => !PLAIN_FLAGS.has(f))) usable = false;
      list.push({ logical: Number(m[1]), physical: Number(m[2]), length: Number(m[3]) });
    }
    if (usable && list.length > 0 && list.every((e) => Number.isSafeInteger(e.physical + e.length) && e.length > 0)) out[i] = list;
  }
  return out;
}

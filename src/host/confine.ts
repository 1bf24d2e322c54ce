/**
 * Whether a host path lies inside one of a set of directories, decided on
 * the path the kernel would really use (realpath), so neither `..` nor a
 * symlink inside a root that points out of it can escape. Callers use the
 * returned real path from then on, not the path they were given, so what is
 * checked is what is opened.
 */
import { realpathSync } from 'node:fs';
import { basename, dirname, isAbsolute, join, relative, sep } from 'node:path';
import { isErrno } from '../errors.js';

/** Whether `child` is `dir` or below it (both already real, absolute paths). */
export function isInside(child: string, dir: string): boolean {
  const rel = relative(dir, child);
  return rel === '' || (rel !== '..' && !rel.startsWith(`..${sep}`) && !isAbsolute(rel));
}

/**
 * The real path of `path`. For a path that does not exist yet (a restore
 * target), the real path of its nearest existing ancestor plus the missing
 * names; a missing part that is `.` or `..` gives undefined, since the
 * kernel's reading of it cannot be known before it exists.
 */
export function realPathOrParent(path: string): string | undefined {
  if (!isAbsolute(path)) return undefined;
  const missing: string[] = [];
  let cur = path;
  for (;;) {
    try {
      return join(realpathSync(cur), ...missing.reverse());
    } catch (err) {
      if (!isErrno(err, 'ENOENT')) return undefined;
    }
    const parent = dirname(cur);
    const name = basename(cur);
    if (parent === cur || name === '.' || name === '..') return undefined;
    missing.push(name);
    cur = parent;
  }
}

/**
 * The real path of `path` when it is inside one of `roots`, else undefined.
 * A root that does not exist allows nothing.
 */
export function confine(path: string, roots: readonly string[]): string | undefined {
  const real = realPathOrParent(path);
  if (real === undefined) return undefined;
  for (const root of roots) {
    let realRoot: string;
    try {
      realRoot = realpathSync(root);
    } catch {
      continue;
    }
    if (isInside(real, realRoot)) return real;
  }
  return undefined;
}

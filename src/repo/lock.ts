/**
 * Repository locks: one small JSON file per holder under `locks/`.
 *
 * Taking a lock writes our file first (atomically), then reads all others: if
 * one conflicts we delete ours and report the holder. Two takers racing can
 * thus both back off, but never both succeed. A file whose process is gone
 * (same host, pid dead or reused: boot id and /proc start time differ) is
 * stale: it is reported in `staleRemoved` and deleted. Holders on other hosts
 * cannot be probed and count as live.
 */
import { readdir, readFile, unlink } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import type { LockHolder, LockKind, RepoLock } from './api.js';
import { isErrno, RestorelabError } from '../errors.js';
import { writeFileAtomic } from '../host/atomic-file.js';
import { LOCK_SUFFIX } from './format.js';
import { processAlive } from '../host/process.js';

export function conflicts(a: LockKind, b: LockKind): boolean {
  if (a === 'exclusive' || b === 'exclusive') return true;
  return a === 'gc' && b === 'gc';
}

export function bootId(): string | undefined {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return undefined;
  }
}

/** Field 22 of /proc/<pid>/stat: start time in clock ticks after boot. */
export function startTicks(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const v = Number(fields[19]);
    return Number.isFinite(v) ? v : undefined;
  } catch {
    return undefined;
  }
}

/** Whether the process that wrote `h` is known to be gone. */
export function isStale(h: LockHolder): boolean {
  if (h.hostname !== hostname()) return false;
  const boot = bootId();
  if (h.bootId && boot && h.bootId !== boot) return true;
  if (!processAlive(h.pid)) return true;
  if (h.startTicks !== undefined) {
    const now = startTicks(h.pid);
    if (now !== undefined && now !== h.startTicks) return true;
  }
  return false;
}

export async function readLocks(dir: string): Promise<LockHolder[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return [];
    throw err;
  }
  const out: LockHolder[] = [];
  for (const file of names.filter((n) => n.endsWith(LOCK_SUFFIX)).sort()) {
    try {
      const parsed = JSON.parse(await readFile(join(dir, file), 'utf8')) as Omit<LockHolder, 'file'>;
      out.push({ ...parsed, file });
    } catch (err) {
      if (isErrno(err, 'ENOENT')) continue;
      // Lock files are renamed into place whole, so an unreadable one was damaged by hand: treat it as live.
      out.push({ kind: 'exclusive', purpose: `unreadable lock file ${file}`, pid: 0, hostname: '?', since: 0, file });
    }
  }
  return out;
}

/** Live holders (stale ones excluded, not removed). */
export async function liveLocks(dir: string): Promise<LockHolder[]> {
  return (await readLocks(dir)).filter((h) => !isStale(h));
}

export function describe(h: LockHolder): string {
  return `${h.kind} lock for "${h.purpose}" held by pid ${h.pid} on ${h.hostname} since ${new Date(h.since).toISOString()}`;
}

export async function acquireLock(dir: string, repoPath: string, kind: LockKind, purpose: string): Promise<RepoLock> {
  const since = Date.now();
  const file = `${kind}-${hostname()}-${process.pid}-${randomBytes(4).toString('hex')}${LOCK_SUFFIX}`;
  const mine: Omit<LockHolder, 'file'> = {
    kind,
    purpose,
    pid: process.pid,
    hostname: hostname(),
    since,
    bootId: bootId(),
    startTicks: startTicks(process.pid),
  };
  await writeFileAtomic(dir, file, JSON.stringify(mine) + '\n');
  const staleRemoved: LockHolder[] = [];
  try {
    for (const other of await readLocks(dir)) {
      if (other.file === file) continue;
      if (isStale(other)) {
        await unlink(join(dir, other.file)).catch(() => undefined);
        staleRemoved.push(other);
        continue;
      }
      if (conflicts(kind, other.kind)) {
        throw new RestorelabError('REPO_BUSY', `repository ${repoPath} is busy: ${describe(other)}`, {
          hint: `wait for it to finish; if that process no longer exists, delete ${join(dir, other.file)}`,
        });
      }
    }
  } catch (err) {
    await unlink(join(dir, file)).catch(() => undefined);
    throw err;
  }
  let released = false;
  return {
    kind,
    since,
    staleRemoved,
    async release() {
      if (released) return;
      released = true;
      await unlink(join(dir, file)).catch((err: unknown) => {
        if (!isErrno(err, 'ENOENT')) throw err;
      });
    },
  };
}

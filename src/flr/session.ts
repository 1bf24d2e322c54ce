/**
 * A file-level restore *session*: everything one `restorelab mount` created
 * (publication holder, loop devices, mounts, directories), journalled in
 * `<stateDir>/flr/<id>.json` as it is created, so that `umount` (or the undo
 * of a half-finished mount) can remove exactly that, even after a crash.
 *
 * A *resource* is appended to the journal right after it exists and before
 * the next one is made; release walks the journal backwards.
 */
import { chmodSync, mkdirSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { basename, dirname, join } from 'node:path';
import { writeFileAtomicSync } from '../host/atomic-file.js';
import { notFound } from '../errors.js';

export type Resource =
  | { kind: 'dir'; path: string }
  /** A directory we were given and closed to other users: its mode before. */
  | { kind: 'mode'; path: string; mode: number }
  | { kind: 'loop'; device: string; backing: string; offset: number }
  | { kind: 'mount'; path: string; device: string }
  | { kind: 'holder'; pid: number; fuseDir: string; publication?: string };

export interface MountedPartition {
  disk: string;
  partition: number;
  /** The LVM logical volume ("vg/lv") in that partition, when it is one. */
  volume?: string;
  fstype: string;
  path: string;
  /** Byte offset of the partition on its disk (where its filesystem's block 0 is); absent in journals of older versions. */
  offset?: number;
  /** Set when a partition was found but could not be mounted (swap, LVM, a missing kernel driver). */
  skipped?: string;
}

export interface SessionRecord {
  id: string;
  created: string;
  /** The process that created the session. */
  pid: number;
  dir: string;
  repo?: string;
  point?: string;
  backend: string;
  /** True for the temporary mounts of `files get`. */
  temporary?: boolean;
  resources: Resource[];
  mounts: MountedPartition[];
  /** Set once every mount is done; a session without it was interrupted. */
  complete?: boolean;
}

export function sessionsDir(stateDir: string): string {
  return join(stateDir, 'flr');
}

/**
 * Creates the sessions directory closed to other users (0700): it holds the
 * holders' FUSE mounts of whole disks, their logs and the journals.
 */
export function makeSessionsDir(stateDir: string): string {
  const dir = sessionsDir(stateDir);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  // One made by an older version, or by hand, may be wider.
  chmodSync(dir, 0o700);
  return dir;
}

export function newSessionId(): string {
  return `flr-${new Date().toISOString().replace(/[-:]/g, '').slice(0, 15)}-${randomBytes(3).toString('hex')}`;
}

/** The journal of one session, rewritten atomically (temp file + rename) on each change. */
export class SessionJournal {
  readonly file: string;

  constructor(
    readonly stateDir: string,
    readonly record: SessionRecord,
  ) {
    this.file = join(sessionsDir(stateDir), `${record.id}.json`);
  }

  static create(stateDir: string, init: Omit<SessionRecord, 'id' | 'created' | 'pid' | 'resources' | 'mounts'>): SessionJournal {
    makeSessionsDir(stateDir);
    const j = new SessionJournal(stateDir, {
      id: newSessionId(),
      created: new Date().toISOString(),
      pid: process.pid,
      resources: [],
      mounts: [],
      ...init,
    });
    j.save();
    return j;
  }

  add(r: Resource): void {
    this.record.resources.push(r);
    this.save();
  }

  update(change: (r: SessionRecord) => void): void {
    change(this.record);
    this.save();
  }

  save(): void {
    writeFileAtomicSync(dirname(this.file), basename(this.file), JSON.stringify(this.record, null, 2) + '\n');
  }

  remove(): void {
    rmSync(this.file, { force: true });
  }
}

export function listSessions(stateDir: string): SessionJournal[] {
  let names: string[];
  try {
    names = readdirSync(sessionsDir(stateDir));
  } catch {
    return [];
  }
  const out: SessionJournal[] = [];
  for (const n of names.filter((x) => /^flr-.*\.json$/.test(x)).sort()) {
    try {
      out.push(new SessionJournal(stateDir, JSON.parse(readFileSync(join(sessionsDir(stateDir), n), 'utf8')) as SessionRecord));
    } catch {
      // a torn write cannot happen (rename); an unreadable file is not ours to interpret
    }
  }
  return out;
}

/** Finds a session by id or by its mount directory. */
export function findSession(stateDir: string, idOrDir: string, resolvedDir?: string): SessionJournal {
  const s = listSessions(stateDir).find(
    (j) => j.record.id === idOrDir || j.record.dir === idOrDir || (resolvedDir !== undefined && j.record.dir === resolvedDir),
  );
  if (!s)
    throw notFound(
      'FLR_SESSION_NOT_FOUND',
      `no file-level restore mount named ${idOrDir}`,
      'list mounts with `ls <stateDir>/flr`, or give the directory passed to `restorelab mount`',
    );
  return s;
}

/**
 * Crash-safe persistence of a publication's scratch namespace (docs/formats.md,
 * "Scratch metadata"): a snapshot `scratch.json` replaced atomically (temp,
 * fsync, rename, fsync dir) plus an append-only journal `scratch.journal`,
 * one CRC'd JSON record per line, fdatasync'd before an operation returns.
 * Loading replays the journal over the snapshot up to the first torn or
 * garbled line; the caller then compacts (new snapshot, empty journal).
 *
 * Records carry an entry's whole state (`put`) or its death (`del`), so
 * replaying one twice, or over a snapshot that already holds it, is harmless.
 */
import fs from 'node:fs';
import path from 'node:path';
import { crc32 } from 'node:zlib';
import { fsyncDir, writeFileAtomic } from '../host/atomic-file.js';

export const SCRATCH_FORMAT = 'restorelab-scratch'; // do not modify: on-disk format
export const SCRATCH_VERSION = 1;
export const SNAPSHOT_FILE = 'scratch.json';
export const JOURNAL_FILE = 'scratch.journal';

export type ScratchType = 'file' | 'dir' | 'symlink';

/** What is persisted of one scratch entry; times are milliseconds since the epoch. */
export interface ScratchRecord {
  id: number;
  parent: number;
  name: string;
  type: ScratchType;
  mode: number;
  uid: number;
  gid: number;
  atime: number;
  mtime: number;
  ctime: number;
  /** Symlink text, stored and returned verbatim, never resolved. */
  target?: string;
}

export type JournalRecord = { put: ScratchRecord } | { del: number };

export interface LoadedScratch {
  next: number;
  records: Map<number, ScratchRecord>;
  /** The snapshot exists but is unreadable or of another format: the caller refuses to start. */
  problem?: string;
}

const uint = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
const time = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);

/** A record as read back: the fields and their types, nothing else (the file is ours, but a bad one must not crash us). */
export function validRecord(v: unknown): v is ScratchRecord {
  if (typeof v !== 'object' || v === null) return false;
  const r = v as Record<string, unknown>;
  if (!uint(r.id) || !uint(r.parent) || typeof r.name !== 'string' || !uint(r.mode) || !uint(r.uid) || !uint(r.gid)) return false;
  if (!time(r.atime) || !time(r.mtime) || !time(r.ctime)) return false;
  if (r.type === 'symlink') return typeof r.target === 'string';
  return (r.type === 'file' || r.type === 'dir') && r.target === undefined;
}

function encodeLine(rec: JournalRecord): string {
  const json = JSON.stringify(rec);
  return `${crc32(json).toString(16).padStart(8, '0')} ${json}\n`;
}

function decodeLine(line: string): JournalRecord | undefined {
  const m = /^([0-9a-f]{8}) (.*)$/.exec(line);
  if (!m || parseInt(m[1]!, 16) !== crc32(m[2]!)) return undefined;
  let v: unknown;
  try {
    v = JSON.parse(m[2]!);
  } catch {
    return undefined;
  }
  if (typeof v !== 'object' || v === null) return undefined;
  const r = v as Record<string, unknown>;
  if ('put' in r && validRecord(r.put)) return { put: r.put };
  if ('del' in r && uint(r.del)) return { del: r.del };
  return undefined;
}

async function readOptional(file: string): Promise<string | undefined> {
  try {
    return await fs.promises.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

export class ScratchJournal {
  private journalBytes = 0;
  private snapshotBytes = 0;

  constructor(readonly dir: string) {}

  get journalPath(): string {
    return path.join(this.dir, JOURNAL_FILE);
  }

  /** Snapshot, then every intact journal record in order. `next` is kept above every id ever seen. */
  async load(firstId: number): Promise<LoadedScratch> {
    const records = new Map<number, ScratchRecord>();
    let next = firstId;
    const snap = await readOptional(path.join(this.dir, SNAPSHOT_FILE));
    if (snap !== undefined) {
      let v: { format?: unknown; version?: unknown; next?: unknown; entries?: unknown };
      try {
        v = JSON.parse(snap) as typeof v;
      } catch {
        return { next, records, problem: `${SNAPSHOT_FILE} is not JSON` };
      }
      if (v.format !== SCRATCH_FORMAT) return { next, records, problem: `${SNAPSHOT_FILE} is not a ${SCRATCH_FORMAT} file` };
      if (v.version !== SCRATCH_VERSION)
        return { next, records, problem: `${SNAPSHOT_FILE} has version ${String(v.version)}, this server reads ${SCRATCH_VERSION}` };
      if (!uint(v.next) || !Array.isArray(v.entries) || !v.entries.every(validRecord))
        return { next, records, problem: `${SNAPSHOT_FILE} is malformed` };
      next = Math.max(next, v.next);
      for (const r of v.entries) records.set(r.id, r);
    }
    const journal = (await readOptional(this.journalPath)) ?? '';
    const lines = journal.split('\n');
    // The piece after the last newline is a torn append (or empty): never acknowledged.
    lines.pop();
    for (const line of lines) {
      const rec = decodeLine(line);
      if (!rec) break;
      if ('put' in rec) {
        records.set(rec.put.id, rec.put);
        next = Math.max(next, rec.put.id + 1);
      } else {
        records.delete(rec.del);
        next = Math.max(next, rec.del + 1);
      }
    }
    return { next, records };
  }

  /** Appends records and makes them durable (one write, one fdatasync). */
  async append(recs: JournalRecord[]): Promise<void> {
    if (recs.length === 0) return;
    const data = Buffer.from(recs.map(encodeLine).join(''));
    const { O_WRONLY, O_APPEND, O_CREAT, O_NOFOLLOW } = fs.constants;
    const h = await fs.promises.open(this.journalPath, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW, 0o600);
    try {
      await h.write(data, 0, data.length);
      await h.datasync();
    } finally {
      await h.close();
    }
    this.journalBytes += data.length;
  }

  /** True once the journal has outgrown the snapshot it would be folded into. */
  get wantsCompaction(): boolean {
    return this.journalBytes > Math.max(256 * 1024, this.snapshotBytes);
  }

  /** Writes the whole state as a new snapshot, then empties the journal (a crash between leaves a journal that replays harmlessly). */
  async compact(next: number, records: Iterable<ScratchRecord>): Promise<void> {
    const body = JSON.stringify({ format: SCRATCH_FORMAT, version: SCRATCH_VERSION, next, entries: [...records] });
    await writeFileAtomic(this.dir, SNAPSHOT_FILE, body, 0o600);
    this.snapshotBytes = body.length;
    const { O_WRONLY, O_CREAT, O_TRUNC, O_NOFOLLOW } = fs.constants;
    const h = await fs.promises.open(this.journalPath, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW, 0o600);
    try {
      await h.sync();
    } finally {
      await h.close();
    }
    await fsyncDir(this.dir);
    this.journalBytes = 0;
  }
}

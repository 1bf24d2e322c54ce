/**
 * File-level restore sessions: mount a restore point's (or any raw file's)
 * partitions read-only, and take everything down again.
 *
 * `mountDisks` works on raw disk files; `mountRestorePoint` first starts a
 * read-only publication in a detached holder process (src/flr/holder.ts) and
 * mounts the `<disk>.raw` files it serves. Every resource goes into the
 * session journal as it is created, and any failure releases the journal
 * backwards, so a failed mount leaves no loop device or mount behind.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, openSync, closeSync, readFileSync, rmSync, rmdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { RestorelabError, notFound } from '../errors.js';
import { HostMountBackend, checkMountDir, type DiskFile, type FileLevelBackend } from './backend.js';
import {
  SessionJournal,
  findSession,
  listSessions,
  makeSessionsDir,
  sessionsDir,
  type MountedPartition,
  type Resource,
} from './session.js';
import type { HolderReply, HolderRequest } from './holder.js';
import { unmount } from './system.js';
import { isMountPoint } from '../host/mounts.js';
import { processAlive } from '../host/process.js';

export interface FlrSession {
  id: string;
  dir: string;
  mounts: MountedPartition[];
  /** Publication id when the session publishes a restore point. */
  publication?: string;
  warnings: string[];
}

export interface MountDisksOptions {
  stateDir: string;
  dir: string;
  disks: DiskFile[];
  partition?: number;
  backend?: FileLevelBackend;
  temporary?: boolean;
}

export interface MountPointOptions {
  stateDir: string;
  repo: string;
  point: string;
  dir: string;
  /** Only this disk (default: every disk of the point). */
  disk?: string;
  partition?: number;
  backend?: FileLevelBackend;
  temporary?: boolean;
  /** How long to wait for the publication to come up. */
  publishTimeoutMs?: number;
  /** Key file of an encrypted repository; the holder opens the repository with it. */
  keyFile?: string;
}

const HOLDER_STOP_TIMEOUT_MS = 30_000;
const DEFAULT_PUBLISH_TIMEOUT_MS = 120_000;

export function defaultBackend(): FileLevelBackend {
  return new HostMountBackend();
}

function holderScript(): string {
  return fileURLToPath(new URL('./holder.js', import.meta.url));
}

/** Mounts raw disk files; on any failure, undoes what it did and rethrows. */
export async function mountDisks(opts: MountDisksOptions): Promise<FlrSession> {
  const backend = opts.backend ?? defaultBackend();
  const dir = resolve(opts.dir);
  refuseDirOfOtherSession(opts.stateDir, dir);
  checkMountDir(dir);
  const journal = SessionJournal.create(opts.stateDir, { dir, backend: backend.name, ...(opts.temporary ? { temporary: true } : {}) });
  return finishMount(journal, backend, { disks: opts.disks, dir, partition: opts.partition });
}

async function finishMount(
  journal: SessionJournal,
  backend: FileLevelBackend,
  req: { disks: DiskFile[]; dir: string; partition?: number },
): Promise<FlrSession> {
  try {
    const mounts = await backend.mount(req, journal);
    journal.update((r) => {
      r.mounts = mounts;
      r.complete = true;
    });
    const holder = journal.record.resources.find((x) => x.kind === 'holder');
    return {
      id: journal.record.id,
      dir: req.dir,
      mounts,
      ...(holder?.kind === 'holder' && holder.publication ? { publication: holder.publication } : {}),
      warnings: [],
    };
  } catch (err) {
    await releaseJournal(journal, backend).catch((undoErr: unknown) => {
      process.stderr.write(`warning: undoing the failed mount also failed: ${String(undoErr)}\n`);
    });
    throw err;
  }
}

function refuseDirOfOtherSession(stateDir: string, dir: string): void {
  const other = listSessions(stateDir).find((s) => s.record.dir === dir);
  if (other) {
    throw new RestorelabError('MOUNT_POINT_IN_USE', `mount point ${dir} is in use by file-level restore session ${other.record.id}`, {
      hint: `run \`restorelab umount ${other.record.id}\` first, or pick another directory`,
    });
  }
}

/** Publishes a restore point read-only in a holder process and mounts its disks. */
export async function mountRestorePoint(opts: MountPointOptions): Promise<FlrSession> {
  const backend = opts.backend ?? defaultBackend();
  const dir = resolve(opts.dir);
  refuseDirOfOtherSession(opts.stateDir, dir);
  checkMountDir(dir);
  const journal = SessionJournal.create(opts.stateDir, {
    dir,
    repo: opts.repo,
    point: opts.point,
    backend: backend.name,
    ...(opts.temporary ? { temporary: true } : {}),
  });
  let disks: DiskFile[];
  try {
    const published = await startHolder(journal, opts);
    const all = Object.entries(published)
      .map(([name, path]) => ({ name, path }))
      .sort((a, b) => a.name.localeCompare(b.name));
    disks = opts.disk === undefined ? all : all.filter((d) => d.name === opts.disk);
    if (disks.length === 0) {
      throw notFound(
        'DISK_NOT_FOUND',
        `restore point ${opts.point} has no disk ${opts.disk}`,
        `its disks are: ${all.map((d) => d.name).join(', ')}`,
      );
    }
  } catch (err) {
    await releaseJournal(journal, backend).catch(() => undefined);
    throw err;
  }
  return finishMount(journal, backend, { disks, dir, partition: opts.partition });
}

async function startHolder(journal: SessionJournal, opts: MountPointOptions): Promise<Record<string, string>> {
  // Inside the 0700 sessions directory; the publication is owner-only too (src/fuse/access.ts).
  const fuseDir = join(makeSessionsDir(opts.stateDir), `${journal.record.id}.fuse`);
  mkdirSync(fuseDir, { recursive: true, mode: 0o700 });
  const log = openSync(join(sessionsDir(opts.stateDir), `${journal.record.id}.holder.log`), 'a');
  const child = spawn(process.execPath, [holderScript(), journal.record.id], {
    detached: true,
    stdio: ['ignore', log, log, 'ipc'],
  });
  closeSync(log);
  if (child.pid === undefined)
    throw new RestorelabError('HOLDER_START_FAILED', 'cannot start the publication holder process', {
      hint: 'check that node can spawn processes here',
    });
  journal.add({ kind: 'holder', pid: child.pid, fuseDir });
  // The key file's path, not the key, crosses the IPC channel: the holder reads it as the CLI would.
  const req: HolderRequest = {
    publish: {
      repo: opts.repo,
      point: opts.point,
      stateDir: opts.stateDir,
      fuseDir,
      readOnly: true,
      owner: { kind: 'flr', id: journal.record.id },
    },
    ...(opts.keyFile ? { keyFile: opts.keyFile } : {}),
  };
  const reply = await new Promise<HolderReply>((resolvePromise, reject) => {
    const timer = setTimeout(
      () =>
        reject(
          new RestorelabError(
            'PUBLISH_TIMEOUT',
            `the read-only publication of ${opts.point} did not come up within ${(opts.publishTimeoutMs ?? DEFAULT_PUBLISH_TIMEOUT_MS) / 1000} s`,
            {
              hint: `see ${sessionsDir(opts.stateDir)}/${journal.record.id}.holder.log`,
            },
          ),
        ),
      opts.publishTimeoutMs ?? DEFAULT_PUBLISH_TIMEOUT_MS,
    );
    child.once('message', (m) => {
      clearTimeout(timer);
      resolvePromise(m as HolderReply);
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(
        new RestorelabError('HOLDER_EXITED', `the publication holder exited (${signal ?? `code ${code}`}) before publishing`, {
          hint: `see ${sessionsDir(opts.stateDir)}/${journal.record.id}.holder.log`,
        }),
      );
    });
    child.send(req);
  });
  child.removeAllListeners('exit');
  if (child.connected) child.disconnect();
  child.unref();
  if (!reply.ok) {
    const e = reply.error;
    throw RestorelabError.revive(e);
  }
  journal.update((r) => {
    const h = r.resources.find((x) => x.kind === 'holder');
    if (h?.kind === 'holder') h.publication = reply.publication;
  });
  return reply.disks;
}

/** True while `pid` is still the holder of `sessionId` (pids are reused). */
function isOurHolder(pid: number, sessionId: string): boolean {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').includes(sessionId);
  } catch {
    return false;
  }
}

async function releaseHolder(r: Extract<Resource, { kind: 'holder' }>, sessionId: string, stateDir: string): Promise<void> {
  if (isOurHolder(r.pid, sessionId)) {
    process.kill(r.pid, 'SIGTERM');
    const deadline = Date.now() + HOLDER_STOP_TIMEOUT_MS;
    while (processAlive(r.pid) && isOurHolder(r.pid, sessionId) && Date.now() < deadline) await new Promise((res) => setTimeout(res, 100));
    if (processAlive(r.pid) && isOurHolder(r.pid, sessionId)) process.kill(r.pid, 'SIGKILL');
  }
  // A holder that crashed leaves its FUSE mount behind ("transport endpoint is not connected").
  if (isMountPoint(r.fuseDir)) await unmount(r.fuseDir, { lazy: true });
  try {
    rmdirSync(r.fuseDir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  // A holder that closed cleanly removed its publication (discard); one that
  // crashed left the record and overlay directory behind.
  if (r.publication) {
    const { removePublication } = await import('../publish/publish.js');
    try {
      await removePublication(stateDir, r.publication, { discard: true, as: { kind: 'flr', id: sessionId } });
    } catch (err) {
      if (!(err instanceof RestorelabError && err.code === 'PUBLICATION_NOT_FOUND')) throw err;
    }
  }
}

/** Undoes every resource of a session, newest first, then deletes its journal. */
export async function releaseJournal(journal: SessionJournal, backend: FileLevelBackend = defaultBackend()): Promise<void> {
  const errors: unknown[] = [];
  for (const r of [...journal.record.resources].reverse()) {
    try {
      if (r.kind === 'holder') await releaseHolder(r, journal.record.id, journal.stateDir);
      else await backend.release(r);
      journal.update((rec) => {
        rec.resources = rec.resources.filter((x) => x !== r);
      });
    } catch (err) {
      errors.push(err);
      // A busy mount must stop the undo there: detaching its loop device or
      // killing its publication under it would leave a broken mount.
      break;
    }
  }
  if (errors.length > 0) throw errors[0];
  journal.remove();
  const log = join(sessionsDir(journal.stateDir), `${journal.record.id}.holder.log`);
  if (existsSync(log)) rmSync(log, { force: true });
}

/** `restorelab umount`: by session id or by the directory given to mount. */
export async function umountSession(
  stateDir: string,
  idOrDir: string,
  backend?: FileLevelBackend,
): Promise<{ id: string; dir: string; released: number }> {
  const journal = findSession(stateDir, idOrDir, resolve(idOrDir));
  const released = journal.record.resources.length;
  await releaseJournal(journal, backend ?? defaultBackend());
  return { id: journal.record.id, dir: journal.record.dir, released };
}

/**
 * A completed session of `restorelab mount` for this repository and point
 * whose holder still runs and whose mounts are all still there, to browse
 * without mounting again.
 */
export function findMountedSession(stateDir: string, repo: string, point: string): FlrSession | undefined {
  for (const j of listSessions(stateDir)) {
    const r = j.record;
    if (!r.complete || r.temporary || r.repo !== repo || r.point !== point) continue;
    const holder = r.resources.find((x) => x.kind === 'holder');
    if (holder?.kind !== 'holder' || !isOurHolder(holder.pid, r.id)) continue;
    if (!r.mounts.filter((m) => !m.skipped).every((m) => isMountPoint(m.path))) continue;
    return { id: r.id, dir: r.dir, mounts: r.mounts, ...(holder.publication ? { publication: holder.publication } : {}), warnings: [] };
  }
  return undefined;
}

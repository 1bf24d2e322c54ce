/**
 * File-level restore over the API: a session mounts a restore point's guest
 * filesystems read-only (src/flr, as `restorelab mount`), its directories are
 * browsed and its files downloaded as tar streams, and DELETE takes it down
 * again. Sessions are the flr journals in the state directory, so the ones
 * `restorelab mount` made are listed (and can be unmounted) here too.
 *
 * Guest paths are confined by the flr library (resolveGuestPath): `..` above
 * the partition's root and symlinks leading out are refused, and that refusal
 * is answered as 400 PATH_TRAVERSAL.
 */
import { mkdirSync, mkdtempSync, rmdirSync } from 'node:fs';
import { basename, dirname, join, posix } from 'node:path';
import type { Response } from 'express';
import type { RegisterRoutes } from './register.js';
import type { ApiContext } from '../context.js';
import { apiError } from '../errors.js';
import { principal, queryOf } from '../route-table.js';
import { openDefaultRepository, openOptions } from '../repositories.js';
import { mountRestorePoint, umountSession } from '../../flr/mount.js';
import { listSessions, sessionsDir, type MountedPartition, type SessionRecord } from '../../flr/session.js';
import { choosePartition, listGuestPath, resolveGuestPath, streamGuestTar } from '../../flr/browse.js';
import { RestorelabError } from '../../errors.js';

/** Parent directories of API-made mounts, inside the flr sessions directory: `<stateDir>/flr/api-XXXXXX/mnt`. */
const API_MOUNT_PREFIX = 'api-';

interface PathQuery {
  path: string;
  disk?: string;
  partition?: number;
}

export interface FileRestoreView {
  id: string;
  point: string | null;
  repository: string | null;
  created: string;
  dir: string;
  /** False while mounting, or for a mount that was interrupted (DELETE cleans it up). */
  complete: boolean;
  publication: string | null;
  mounts: { disk: string; partition: number; volume?: string; fstype: string; skipped?: string }[];
}

function viewOf(r: SessionRecord): FileRestoreView {
  const holder = r.resources.find((x) => x.kind === 'holder');
  return {
    id: r.id,
    point: r.point ?? null,
    repository: r.repo ?? null,
    created: r.created,
    dir: r.dir,
    complete: r.complete === true,
    publication: holder?.kind === 'holder' ? (holder.publication ?? null) : null,
    mounts: r.mounts.map((m) => ({
      disk: m.disk,
      partition: m.partition,
      ...(m.volume ? { volume: m.volume } : {}),
      fstype: m.fstype,
      ...(m.skipped ? { skipped: m.skipped } : {}),
    })),
  };
}

/** Sessions a person made; the temporary mounts of `restorelab files` come and go by themselves. */
function sessions(ctx: ApiContext): SessionRecord[] {
  return listSessions(ctx.config.stateDir)
    .map((j) => j.record)
    .filter((r) => !r.temporary);
}

function sessionOf(ctx: ApiContext, id: string): SessionRecord {
  const r = sessions(ctx).find((s) => s.id === id);
  if (!r) throw apiError('NOT_FOUND', `no file-level restore session ${id}; GET /api/v1/file-restore lists them`);
  return r;
}

/** The library's confinement refusal, as the API's PATH_TRAVERSAL; other errors pass through. */
function confined(err: unknown): unknown {
  if (err instanceof RestorelabError && err.code === 'PATH_TRAVERSAL') {
    return apiError('PATH_TRAVERSAL', err.message, [{ path: 'query/path', message: 'leaves the guest filesystem' }]);
  }
  return err;
}

/** The mounted partition for a guest path, chosen as `restorelab files` chooses (src/flr/browse.ts choosePartition). */
async function partitionFor(r: SessionRecord, q: PathQuery): Promise<MountedPartition> {
  if (r.complete !== true)
    throw apiError('CONFLICT', `file-level restore session ${r.id} is not mounted (still mounting, or interrupted: DELETE it)`);
  const want = { ...(q.disk !== undefined ? { disk: q.disk } : {}), ...(q.partition !== undefined ? { partition: q.partition } : {}) };
  try {
    return await choosePartition(r.mounts, q.path, want, 'choose one with ?disk= and/or ?partition=');
  } catch (err) {
    throw confined(err);
  }
}

/** A name for Content-Disposition: the guest's base name, kept to safe characters. */
function downloadName(guestPath: string): string {
  const base = guestPath === '/' ? 'root' : posix.basename(guestPath);
  return `${base.replace(/[^\w.-]/g, '_') || 'download'}.tar`;
}

async function sendTar(ctx: ApiContext, res: Response, root: string, guestPath: string): Promise<void> {
  // Resolve first, so a bad path is a JSON error before any byte of the stream.
  const resolved = await resolveGuestPath(root, guestPath, { followFinal: true }).catch((err: unknown) => {
    throw confined(err);
  });
  res.status(200).set({
    'content-type': 'application/x-tar',
    'content-disposition': `attachment; filename="${downloadName(resolved.guestPath)}"`,
    'cache-control': 'no-store',
  });
  try {
    const r = await streamGuestTar(root, guestPath, res);
    ctx.log.info({ guestPath: r.guestPath, bytes: r.bytes, files: r.files, directories: r.directories }, 'file-level restore download');
  } catch (err) {
    if (!res.headersSent) {
      // Nothing was sent yet: the error goes out as JSON, not labelled as a tar.
      for (const h of ['content-type', 'content-disposition']) res.removeHeader(h);
      throw confined(err);
    }
    // Half a tar must not look like a whole one: cut the connection instead of ending the body.
    ctx.log.warn({ err, guestPath }, 'file-level restore download stopped while streaming');
    res.destroy(err as Error);
  }
}

export const fileRestoreRoutes: RegisterRoutes = (t, ctx) => {
  t.add({
    method: 'get',
    path: '/file-restore',
    role: 'operator',
    tag: 'file-restore',
    summary: 'file-level restore sessions (mounted restore points), including those `restorelab mount` made',
    handler: () => ({ sessions: sessions(ctx).map(viewOf) }),
  });
  t.add({
    method: 'post',
    path: '/file-restore',
    role: 'operator',
    tag: 'file-restore',
    summary: 'mounts the guest filesystems of a restore point read-only; browse them with /entries, download with /download',
    body: 'api-flr-create.schema.json',
    success: { status: 201, description: 'the mounted session, with its partitions' },
    handler: async (req, res) => {
      const b = req.body as { point: string; disk?: string; partition?: number };
      const repo = await openDefaultRepository(ctx);
      const point = await repo.getPoint(b.point);
      const stateDir = ctx.config.stateDir;
      mkdirSync(sessionsDir(stateDir), { recursive: true });
      const parent = mkdtempSync(join(sessionsDir(stateDir), API_MOUNT_PREFIX));
      let id: string;
      try {
        const s = await mountRestorePoint({
          stateDir,
          repo: repo.path,
          point: point.id,
          dir: join(parent, 'mnt'),
          ...openOptions(ctx, repo.path),
          ...(b.disk !== undefined ? { disk: b.disk } : {}),
          ...(b.partition !== undefined ? { partition: b.partition } : {}),
        });
        id = s.id;
      } catch (err) {
        // The library undid the mount; only the parent made here is left.
        try {
          rmdirSync(parent);
        } catch (rmErr) {
          ctx.log.warn({ err: rmErr, dir: parent }, 'could not remove the mount parent directory');
        }
        throw err;
      }
      ctx.log.info({ by: principal(res).name, session: id, point: point.id }, 'file-level restore mounted');
      res.location(`/api/v1/file-restore/${id}`);
      return viewOf(sessionOf(ctx, id));
    },
  });
  t.add({
    method: 'get',
    path: '/file-restore/:id',
    role: 'operator',
    tag: 'file-restore',
    summary: 'one file-level restore session',
    handler: (req) => viewOf(sessionOf(ctx, String(req.params.id))),
  });
  t.add({
    method: 'get',
    path: '/file-restore/:id/entries',
    role: 'operator',
    tag: 'file-restore',
    summary: 'lists a guest directory (or describes one file); symlinks are listed with their target, never followed',
    query: 'api-flr-path-query.schema.json',
    handler: async (req, res) => {
      const q = queryOf<PathQuery>(res);
      const r = sessionOf(ctx, String(req.params.id));
      const m = await partitionFor(r, q);
      const entries = await listGuestPath(m.path, q.path).catch((err: unknown) => {
        throw confined(err);
      });
      return {
        session: r.id,
        disk: m.disk,
        partition: m.partition,
        ...(m.volume ? { volume: m.volume } : {}),
        fstype: m.fstype,
        path: q.path,
        entries,
      };
    },
  });
  t.add({
    method: 'get',
    path: '/file-restore/:id/download',
    role: 'operator',
    tag: 'file-restore',
    summary: 'a guest file or directory as a tar stream (symlinks stored as links; devices, FIFOs and sockets left out)',
    query: 'api-flr-path-query.schema.json',
    success: { status: 200, description: 'a tar stream', contentType: 'application/x-tar' },
    handler: async (req, res) => {
      const q = queryOf<PathQuery>(res);
      const r = sessionOf(ctx, String(req.params.id));
      const m = await partitionFor(r, q);
      await sendTar(ctx, res, m.path, q.path);
    },
  });
  t.add({
    method: 'delete',
    path: '/file-restore/:id',
    role: 'operator',
    tag: 'file-restore',
    summary: 'unmounts a session: its mounts, loop devices and read-only publication',
    handler: async (req, res) => {
      const r = sessionOf(ctx, String(req.params.id));
      const out = await umountSession(ctx.config.stateDir, r.id);
      // The parent this API made for the mount point is empty now.
      const parent = dirname(out.dir);
      if (dirname(parent) === sessionsDir(ctx.config.stateDir) && basename(parent).startsWith(API_MOUNT_PREFIX)) {
        try {
          rmdirSync(parent);
        } catch (err) {
          ctx.log.warn({ err, dir: parent }, 'could not remove the mount parent directory');
        }
      }
      ctx.log.info({ by: principal(res).name, session: r.id }, 'file-level restore unmounted');
      return { id: out.id, released: out.released, unmounted: true };
    },
  });
};

/**
 * Publications (docs/publish.md) made and removed by the server process.
 *
 * A publication made here is served by this process: over the server's NFS
 * export when the server runs NFS (ctx.datastore), over FUSE at the
 * directory the request names (below api.mountRoots), or over NBD on the
 * publication's own unix socket (`nbd`). Never both at once: each datastore keeps its
 * own table of the scratch files' ids, and two tables over one overlay
 * directory would hand out the same id twice. On server stop the
 * publications are closed with their overlays kept; the next server's NFS
 * export restores them from their records (restorePublications).
 *
 * A publication made here is a user's (owner kind `user`, id the token's
 * name); recovery sessions, SureBackup runs and file-level restores own
 * theirs, and DELETE refuses those (PUBLICATION_NOT_OWNER, 409).
 */
import type { RegisterRoutes } from './register.js';
import { apiError } from '../errors.js';
import { principal, queryOf } from '../route-table.js';
import { accepted } from '../sse.js';
import { nameParam } from './params.js';
import { openDefaultRepository, openOptions } from '../repositories.js';
import { allowedMountDir } from '../host-paths.js';
import { badInput } from '../../errors.js';
import { checkPublicationOwner, listPublications, removePublication, startPublication } from '../../publish/publish.js';
import type { PublicationOwner } from '../../publish/contract.js';
import { SessionStore } from '../../session/store.js';
import { ACTIVE_STATES } from '../../session/session.js';

interface CreateBody {
  point: string;
  fuse?: string;
  nbd: boolean;
  readOnly: boolean;
  resume: boolean;
  overlayLimitMiB?: number;
}

interface Served {
  frontend: 'nfs' | 'fuse' | 'nbd';
  close(discard: boolean): Promise<void>;
}

export const publicationRoutes: RegisterRoutes = (t, ctx) => {
  const cfg = ctx.config;
  /** Publications this process serves, by id. */
  const served = new Map<string, Served>();
  ctx.onClose(async () => {
    for (const [id, s] of served) {
      await s
        .close(false)
        .catch((err: Error) => ctx.log.warn({ publication: id, err: err.message }, 'closing a publication at shutdown failed'));
    }
    served.clear();
  });

  const find = (id: string) => {
    const p = listPublications(cfg.stateDir).find((x) => x.id === id || x.name === id);
    if (!p) throw apiError('NOT_FOUND', `no publication ${id}`, [{ path: 'params/id', message: 'GET /api/v1/publications lists them' }]);
    return { ...p, frontend: served.get(p.id)?.frontend ?? null };
  };

  t.add({
    method: 'get',
    path: '/publications',
    role: 'viewer',
    tag: 'publications',
    summary: 'every recorded publication, running or stopped (resumable)',
    handler: () => ({ publications: listPublications(cfg.stateDir).map((p) => ({ ...p, frontend: served.get(p.id)?.frontend ?? null })) }),
  });

  t.add({
    method: 'get',
    path: '/publications/:id',
    role: 'viewer',
    tag: 'publications',
    summary: 'one publication',
    handler: (req) => find(nameParam(req, 'id')),
  });

  t.add({
    method: 'post',
    path: '/publications',
    role: 'operator',
    tag: 'publications',
    body: 'api-publication-create.schema.json',
    summary: 'publishes a restore point in the server: over its NFS export, over FUSE at `fuse`, or over NBD (`nbd`)',
    success: { status: 202, description: 'the operation; its result is the publication' },
    handler: async (req, res) => {
      const b = req.body as CreateBody;
      // A FUSE mount hides what is below it: only in a directory below
      // api.mountRoots, checked first and on the real path, which is the one mounted.
      const fuseDir = b.fuse !== undefined ? allowedMountDir(cfg.api, b.fuse, 'FUSE mount directory') : undefined;
      const nfs = ctx.datastore;
      if (b.nbd && fuseDir) {
        throw badInput('PUBLISH_NBD_ALONE', 'a publication is served over NBD or over FUSE, not both', 'drop "fuse" or "nbd"');
      }
      if (!fuseDir && !nfs && !b.nbd) {
        throw badInput(
          'PUBLISH_NO_FRONTEND',
          'this server does not run NFS, so a publication needs a FUSE mount',
          'pass "fuse": a directory below api.mountRoots (e.g. <stateDir>/mnt/<name>), or "nbd": true, or start the server with NFS',
        );
      }
      // An unknown point is the client's 404 now, not a failed operation later.
      await (await openDefaultRepository(ctx)).getPoint(b.point);
      // One user publication of a point at a time, as startPublication has it;
      // asked here too so the client gets its 409 now. A session's or a
      // run's publication of the point does not count: this one gets its own.
      const busy = listPublications(cfg.stateDir).find(
        (p) =>
          p.point === b.point &&
          p.owner.kind === 'user' &&
          (p.running || served.has(p.id) || (nfs?.publications().some((d) => d.id === p.id) ?? false)),
      );
      if (busy)
        throw apiError('CONFLICT', `restore point ${b.point} is already published as ${busy.id}`, [
          { path: 'body/point', message: `use it, or DELETE /api/v1/publications/${busy.id} first` },
        ]);
      const by = principal(res).name;
      const owner: PublicationOwner = { kind: 'user', id: by };
      const op = ctx.operations.start('publish', by, async (o) => {
        o.progress(null, `publishing ${b.point}`);
        const pub = await startPublication(
          {
            repo: cfg.repository,
            point: b.point,
            stateDir: cfg.stateDir,
            owner,
            ...(fuseDir ? { fuseDir } : {}),
            ...((fuseDir || b.nbd) && cfg.fuse.group !== undefined ? { fuseGroup: cfg.fuse.group } : {}),
            ...(b.nbd ? { nbd: {} } : {}),
            overlayLimitBytes: (b.overlayLimitMiB ?? cfg.limits.overlayLimitMiB) * 1024 * 1024,
            resume: b.resume,
            readOnly: b.readOnly,
            cacheMiB: cfg.limits.chunkCacheMiB,
          },
          { ...openOptions(ctx, cfg.repository), objectCacheMiB: cfg.limits.objectCacheMiB, onWarning: (m) => o.log(m) },
        );
        let frontend: Served['frontend'] = b.nbd ? 'nbd' : 'fuse';
        if (!fuseDir && !b.nbd && nfs) {
          // Moved from the publication's own datastore to the one the NFS export serves.
          const dp = pub.datastore.detach(pub.id);
          try {
            if (!dp) throw new Error(`publication ${pub.id} is not in its datastore`);
            await nfs.attach(dp);
          } catch (err) {
            await pub.close({ discard: !b.resume });
            throw err;
          }
          frontend = 'nfs';
        }
        served.set(pub.id, {
          frontend,
          close: async (discard) => {
            if (frontend === 'nfs') nfs?.detach(pub.id);
            await pub.close({ discard });
          },
        });
        ctx.log.info({ by, publication: pub.id, frontend }, 'published');
        const { datastore: _d, close: _c, ...info } = pub;
        return { result: { ...info, frontend }, resource: `/api/v1/publications/${pub.id}` };
      });
      accepted(res, op);
    },
  });

  t.add({
    method: 'delete',
    path: '/publications/:id',
    role: 'operator',
    tag: 'publications',
    query: 'api-publication-delete-query.schema.json',
    summary: 'stops serving a publication; ?discard=true also deletes its overlay',
    handler: async (req, res) => {
      const p = find(nameParam(req, 'id'));
      const { discard } = queryOf<{ discard: boolean }>(res);
      // A recovery session's disks are this publication: removing it would
      // pull them from under the running VM (and signal its supervisor).
      const owner = new SessionStore(cfg.stateDir)
        .list()
        .find((s) => ACTIVE_STATES.includes(s.state) && s.resources.publication?.id === p.id);
      if (owner)
        throw apiError('CONFLICT', `publication ${p.id} holds the disks of recovery session ${owner.id}`, [
          { path: 'params/id', message: `stop the session instead: POST /api/v1/sessions/${owner.id}/stop` },
        ]);
      // Before anything is detached: a run's or a file-level restore's publication is not a user's to stop.
      const as: PublicationOwner = { kind: 'user', id: principal(res).name };
      checkPublicationOwner(cfg.stateDir, p.id, as);
      const mine = served.get(p.id);
      if (mine) {
        served.delete(p.id);
        await mine.close(discard);
      } else {
        // Served by the NFS export since the server started, or by another process.
        ctx.datastore?.detach(p.id);
        await removePublication(cfg.stateDir, p.id, { discard, as });
      }
      ctx.log.info({ by: principal(res).name, publication: p.id, discard }, 'unpublished');
      return { publication: p.id, stopped: true, discarded: discard };
    },
  });
};

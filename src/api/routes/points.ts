/**
 * Restore points of the configured repository, each with its latest
 * SureBackup verdict, and the full restore of one disk (as `restorelab
 * points` and `restorelab restore`). Listing reads the catalog; one point is
 * read from its manifest, the source of truth.
 */
import type { RegisterRoutes } from './register.js';
import { apiError } from '../errors.js';
import { principal, queryOf } from '../route-table.js';
import { accepted } from '../sse.js';
import { ensureIndexed, openDefaultRepository, openOptions } from '../repositories.js';
import { withScanStatus } from '../../scan/store.js';
import { compileRuleSource, scanOutput, scanPoint } from '../../scan/scan.js';
import { percentProgress } from './progress.js';
import { allowedTarget } from '../host-paths.js';
import { forgetPoints, listPoints } from '../../catalog/catalog.js';
import { restoreDisk, type RestoreFormat } from '../../backup/restore.js';
import { listPublications } from '../../publish/publish.js';

export const pointRoutes: RegisterRoutes = (t, ctx) => {
  t.add({
    method: 'get',
    path: '/points',
    role: 'viewer',
    tag: 'points',
    summary: 'restore points of the configured repository (oldest first), each with its latest SureBackup verification or null',
    query: 'api-point-query.schema.json',
    handler: async (_req, res) => {
      const q = queryOf<{ vm?: string }>(res);
      const repo = await openDefaultRepository(ctx);
      await ensureIndexed(ctx, repo);
      const points = await withScanStatus(ctx.sql, repo.path, await listPoints(ctx.sql, repo.path, q.vm !== undefined ? { vm: q.vm } : {}));
      return {
        repository: repo.path,
        points: await Promise.all(points.map(async (p) => ({ ...p, verification: await ctx.runs.pointVerification(p.id) }))),
      };
    },
  });
  t.add({
    method: 'get',
    path: '/points/:id',
    role: 'viewer',
    tag: 'points',
    summary: 'one restore point: its manifest (VM definition, disks, stats) and latest verification',
    handler: async (req) => {
      const repo = await openDefaultRepository(ctx);
      const point = await repo.getPoint(String(req.params.id));
      return { ...point, verification: await ctx.runs.pointVerification(point.id) };
    },
  });
  t.add({
    method: 'post',
    path: '/points/:id/scan',
    role: 'operator',
    tag: 'points',
    summary:
      "scans the point's guest filesystems with the YARA rules in the body (read-only mounts, verdicts cached by content hash); the result is `restorelab scan --json`'s",
    body: 'api-point-scan.schema.json',
    success: { status: 202, description: 'the scan operation; its result has the verdict, the matches and the file counts' },
    handler: async (req, res) => {
      const b = req.body as { rules: string };
      const repo = await openDefaultRepository(ctx);
      const point = await repo.getPoint(String(req.params.id));
      // Compiled before the 202: a rule set that does not compile is a 400 with yarac's reason, and nothing is mounted.
      const rules = await compileRuleSource(ctx.config.stateDir, b.rules);
      const op = ctx.operations.start('scan', principal(res).name, async (o) => {
        try {
          const s = await scanPoint({
            repo,
            point: point.id,
            stateDir: ctx.config.stateDir,
            db: ctx.sql,
            rules,
            ...openOptions(ctx, repo.path),
            onProgress: (d) => o.progress(null, `${d.files} file(s) hashed (${d.partition})`),
          });
          ctx.log.info(
            { by: principal(res).name, point: point.id, verdict: s.verdict, matches: s.matches.length, files: s.files },
            'restore point scanned',
          );
          return { result: scanOutput(s), resource: `/api/v1/points/${point.id}` };
        } finally {
          rules.dispose();
        }
      });
      accepted(res, op);
    },
  });
  t.add({
    method: 'delete',
    path: '/points/:id',
    role: 'admin',
    tag: 'points',
    summary: 'forgets one restore point (its manifest; gc frees the data). Refused while a publication uses it',
    handler: async (req, res) => {
      const id = String(req.params.id);
      const repo = await openDefaultRepository(ctx);
      const point = await repo.getPoint(id);
      // A stopped publication can be resumed, so it needs the point as much as a running one.
      const users = listPublications(ctx.config.stateDir).filter((p) => p.point === id);
      if (users.length > 0) {
        throw apiError(
          'CONFLICT',
          `restore point ${id} is published (${users.map((p) => `${p.name}${p.running ? '' : ' (stopped)'}`).join(', ')}); remove the publication first`,
        );
      }
      // The same lock prune takes: no backup may choose this point as its parent meanwhile.
      const lock = await repo.lock('exclusive', `forget ${id}`);
      try {
        await repo.removePoint(id);
      } finally {
        await lock.release();
      }
      await forgetPoints(ctx.sql, repo.path, [id]);
      ctx.log.info({ by: principal(res).name, point: id, vm: point.vm.name }, 'restore point forgotten');
      return { id, vm: point.vm.name, time: point.time, removed: true };
    },
  });
  t.add({
    method: 'post',
    path: '/points/:id/restore',
    role: 'operator',
    tag: 'points',
    summary: 'writes one disk of the point to a raw or qcow2 file on the server (sparse; renamed into place when complete)',
    body: 'api-restore.schema.json',
    success: { status: 202, description: 'the restore operation; its result says where and how much was written' },
    handler: async (req, res) => {
      const b = req.body as { disk?: string; to: string; format: RestoreFormat };
      // The real path from here on: what was checked is what is written.
      const to = allowedTarget(ctx.config.api, b.to, 'restore target');
      const repo = await openDefaultRepository(ctx);
      const point = await repo.getPoint(String(req.params.id));
      const names = point.disks.map((d) => d.name);
      let disk = b.disk;
      if (disk === undefined) {
        if (names.length !== 1)
          throw apiError(
            'VALIDATION_FAILED',
            `body/disk: restore point ${point.id} has ${names.length} disks (${names.join(', ')}); name one`,
            [{ path: 'body/disk', message: 'required when the point has several disks' }],
          );
        disk = names[0] as string;
      } else if (!names.includes(disk)) {
        throw apiError('NOT_FOUND', `restore point ${point.id} has no disk ${disk} (it has ${names.join(', ')})`);
      }
      const diskName = disk;
      const op = ctx.operations.start('restore', principal(res).name, async (o) => {
        const progress = percentProgress(o);
        const result = await restoreDisk({
          repo,
          point: point.id,
          disk: diskName,
          to,
          format: b.format,
          onProgress: (done, total) => progress(total > 0 ? done / total : 1, `${done} of ${total} bytes`),
        });
        return { result, resource: `/api/v1/points/${point.id}` };
      });
      accepted(res, op);
    },
  });
};

/**
 * Repositories: the configured one, named `default`, and any other the
 * catalog has indexed (named by the repository id in its config.json, which
 * stays the same when the directory moves). Verify, prune and gc run as long
 * operations over the same library calls as `restorelab verify|prune|gc`.
 *
 * The server holds one key file at most, `repositoryKeyFile`, for the
 * configured repository; any other encrypted repository is listed with the
 * error that says its key is needed.
 */
import type { RegisterRoutes } from './register.js';
import { principal } from '../route-table.js';
import { accepted } from '../sse.js';
import { allowedRepositoryDir } from '../host-paths.js';
import { percentProgress } from './progress.js';
import { initRepository, openRepository } from '../../repo/repository.js';
import { verifyRepository } from '../../repo/verify.js';
import { planPrune, pruneRepository, type PrunePolicy } from '../../repo/prune.js';
import { collectGarbage } from '../../repo/gc.js';
import { forgetPoints, indexedRepositories, reindex } from '../../catalog/catalog.js';
import { RestorelabError } from '../../errors.js';
import { describeRepository, openNamedRepository, openOptions, unopenable } from '../repositories.js';
import { resolveRepository } from '../../repo/open.js';

export const repositoryRoutes: RegisterRoutes = (t, ctx) => {
  t.add({
    method: 'get',
    path: '/repositories',
    role: 'viewer',
    tag: 'repositories',
    summary: 'the configured repository (`default`) and every other one the catalog has indexed, with format and counts',
    handler: async () => {
      const out: unknown[] = [];
      const def = resolveRepository(ctx.config.repository);
      for (const path of [def, ...(await indexedRepositories(ctx.sql)).filter((p) => p !== def)]) {
        try {
          out.push(await describeRepository(ctx, await openRepository(path, openOptions(ctx, path))));
        } catch (err) {
          // Repositories the catalog once saw may be gone; only the configured one is always listed.
          if (path === def || !(err instanceof RestorelabError && err.code === 'REPO_NOT_FOUND')) out.push(unopenable(ctx, path, err));
        }
      }
      return { repositories: out };
    },
  });
  t.add({
    method: 'post',
    path: '/repositories',
    role: 'admin',
    tag: 'repositories',
    summary: 'creates an empty repository at a server path or an s3:// prefix (as `restorelab repo init`) and indexes it in the catalog',
    body: 'api-repo-create.schema.json',
    success: { status: 201, description: 'the new repository' },
    handler: async (req, res) => {
      const b = req.body as { path: string; chunkSize?: number };
      // Only where the host admin allows repositories (api.repositoryRoots) or at the configured one.
      const path = allowedRepositoryDir(ctx.config.api, ctx.config.repository, b.path, 'repository directory');
      const repo = await initRepository(path, b.chunkSize !== undefined ? { chunkSize: b.chunkSize } : {});
      await reindex(ctx.sql, repo);
      const view = await describeRepository(ctx, repo);
      ctx.log.info({ by: principal(res).name, repository: repo.path, id: view.id }, 'repository created');
      res.location(`/api/v1/repositories/${view.name}`);
      return view;
    },
  });
  t.add({
    method: 'get',
    path: '/repositories/:name',
    role: 'viewer',
    tag: 'repositories',
    summary: 'one repository: `default` or a repository id',
    handler: async (req) => describeRepository(ctx, await openNamedRepository(ctx, String(req.params.name))),
  });
  t.add({
    method: 'post',
    path: '/repositories/:name/verify',
    role: 'operator',
    tag: 'repositories',
    summary:
      're-reads and re-hashes every chunk the points (or one point) reference; corrupt chunks are quarantined and their points marked damaged',
    body: 'api-repo-verify.schema.json',
    success: { status: 202, description: 'the verify operation; it fails with REPOSITORY_CORRUPT when corruption is found' },
    handler: async (req, res) => {
      const b = req.body as { point?: string };
      const repo = await openNamedRepository(ctx, String(req.params.name));
      if (b.point !== undefined) await repo.getPoint(b.point); // an unknown point is a 404 now, not a failed operation later
      const op = ctx.operations.start('verify', principal(res).name, async (o) => {
        const progress = percentProgress(o);
        const report = await verifyRepository(repo, {
          ...(b.point !== undefined ? { point: b.point } : {}),
          onProgress: (done, total) => progress(total > 0 ? done / total : 1, `${done} of ${total} chunks checked`),
        });
        // The damaged marks live in the manifests; the catalog mirrors them.
        await reindex(ctx.sql, repo);
        if (!report.ok) {
          // The full report goes out as the last progress event; the operation's error says what broke.
          o.progress(1, 'corruption found', report);
          throw new RestorelabError(
            'REPOSITORY_CORRUPT',
            `${report.corrupt.length} corrupt item(s) in ${repo.path}; damaged restore points: ${report.affectedPoints.join(', ') || 'none'}`,
            {
              hint: 'restore from an undamaged point; the bad chunks are quarantined as .bad files (a new backup of the same data heals them)',
            },
          );
        }
        return { result: report, resource: `/api/v1/repositories/${req.params.name}` };
      });
      accepted(res, op);
    },
  });
  t.add({
    method: 'post',
    path: '/repositories/:name/prune',
    role: 'admin',
    tag: 'repositories',
    summary: 'removes the restore points no retention rule keeps (per VM); run gc afterwards to free their data',
    body: 'api-repo-prune.schema.json',
    success: { status: 202, description: 'the prune operation; its result is the prune report' },
    handler: async (req, res) => {
      const b = req.body as PrunePolicy & { vm?: string; dryRun?: boolean };
      planPrune([], b); // a policy without any keep rule is a 400 now, not a failed operation later
      const repo = await openNamedRepository(ctx, String(req.params.name));
      const op = ctx.operations.start('prune', principal(res).name, async (o) => {
        o.progress(null, b.dryRun ? 'planning (dry run)' : 'pruning');
        const report = await pruneRepository(repo, { ...b, dryRun: b.dryRun === true });
        if (!report.dryRun)
          await forgetPoints(
            ctx.sql,
            repo.path,
            report.removed.map((p) => p.id),
          );
        return { result: report, resource: `/api/v1/repositories/${req.params.name}` };
      });
      accepted(res, op);
    },
  });
  t.add({
    method: 'post',
    path: '/repositories/:name/gc',
    role: 'admin',
    tag: 'repositories',
    summary: 'frees chunks and indexes no restore point references (safe beside running backups)',
    body: 'api-repo-gc.schema.json',
    success: { status: 202, description: 'the gc operation; its result is the gc report' },
    handler: async (req, res) => {
      const b = req.body as { dryRun?: boolean };
      const repo = await openNamedRepository(ctx, String(req.params.name));
      const op = ctx.operations.start('gc', principal(res).name, async (o) => {
        o.progress(null, b.dryRun ? 'counting (dry run)' : 'collecting garbage');
        const report = await collectGarbage(repo, { dryRun: b.dryRun === true });
        return { result: report, resource: `/api/v1/repositories/${req.params.name}` };
      });
      accepted(res, op);
    },
  });
};

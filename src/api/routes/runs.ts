/**
 * SureBackup run history (src/surebackup/history.ts): runs newest first, one
 * run with its per-VM and per-test results, the stored HTML report and the
 * console screenshots. Files are served only from the paths the catalog
 * recorded for that run; nothing in a request names a file.
 */
import { existsSync } from 'node:fs';
import type { Response } from 'express';
import type { RegisterRoutes } from './register.js';
import { apiError } from '../errors.js';
import { queryOf } from '../route-table.js';
import { nameParam } from './params.js';
import type { RunRow } from '../../surebackup/history.js';

function summary(r: RunRow): {
  id: string;
  job: string;
  trigger: string;
  status: string;
  startedAt: string;
  endedAt: string | null;
  dueAt: string | null;
  detail: string | null;
  report: string | null;
} {
  return {
    id: r.id,
    job: r.job,
    trigger: r.trigger,
    status: r.status,
    startedAt: r.startedAt,
    endedAt: r.endedAt,
    dueAt: r.dueAt,
    detail: r.detail,
    report: r.reportHtml ? `/api/v1/runs/${r.id}/report` : null,
  };
}

function sendStored(res: Response, file: string | null, type: string, what: string): void {
  if (!file || !existsSync(file)) throw apiError('NOT_FOUND', `${what} is not stored (any more)`);
  res.status(200).type(type).sendFile(file, { dotfiles: 'allow' });
}

export const runRoutes: RegisterRoutes = (t, ctx) => {
  const history = ctx.runs;
  const get = async (id: string) => {
    const run = await history.run(id);
    if (!run) throw apiError('NOT_FOUND', `no job run ${id}`, [{ path: 'params/id', message: 'GET /api/v1/runs lists them' }]);
    return run;
  };

  t.add({
    method: 'get',
    path: '/runs',
    role: 'viewer',
    tag: 'runs',
    query: 'api-run-list-query.schema.json',
    summary: 'SureBackup job runs, newest first (skipped and missed triggers included)',
    handler: async (_req, res) => {
      const q = queryOf<{ job?: string; limit: number }>(res);
      return { runs: (await history.lastRuns({ ...(q.job ? { job: q.job } : {}), limit: q.limit })).map(summary) };
    },
  });

  t.add({
    method: 'get',
    path: '/runs/:id',
    role: 'viewer',
    tag: 'runs',
    summary: 'one run with its per-VM results and tests',
    handler: async (req) => {
      const run = await get(nameParam(req, 'id'));
      const { vms, ...row } = run;
      return {
        run: summary(row),
        vms: vms.map((v) => ({
          name: v.name,
          point: v.point,
          group: v.group,
          result: v.result,
          recoverySeconds: v.recoverySeconds,
          bootToHeartbeatSeconds: v.bootToHeartbeatSeconds,
          toFirstAnswerSeconds: v.toFirstAnswerSeconds,
          tests: v.tests.map((x) => ({ name: x.name, kind: x.kind, result: x.result, seconds: x.seconds, detail: x.detail })),
          screenshot: v.screenshot ? `/api/v1/runs/${run.id}/vms/${encodeURIComponent(v.name)}/screenshot` : null,
        })),
      };
    },
  });

  t.add({
    method: 'get',
    path: '/runs/:id/report',
    role: 'viewer',
    tag: 'runs',
    summary: "the run's self-contained HTML report",
    success: { status: 200, description: 'an HTML page', contentType: 'text/html' },
    handler: async (req, res) => {
      const run = await get(nameParam(req, 'id'));
      sendStored(res, run.reportHtml, 'text/html; charset=utf-8', `the report of run ${run.id} (status ${run.status})`);
    },
  });

  t.add({
    method: 'get',
    path: '/runs/:id/vms/:vm/screenshot',
    role: 'viewer',
    tag: 'runs',
    summary: 'the console screenshot a run took of one VM',
    success: { status: 200, description: 'a PNG image', contentType: 'image/png' },
    handler: async (req, res) => {
      const run = await get(nameParam(req, 'id'));
      const name = nameParam(req, 'vm');
      const vm = run.vms.find((v) => v.name === name);
      if (!vm) throw apiError('NOT_FOUND', `run ${run.id} verified no VM named ${name}`);
      sendStored(res, vm.screenshot, 'image/png', `the screenshot of ${name} in run ${run.id}`);
    },
  });
};

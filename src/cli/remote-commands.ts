/**
 * The remote implementation of each command that has one, keyed by its
 * command path. Each calls the API route that does what the embedded command
 * does (docs/api.md) and prints the same result: the same --json document
 * (plus what only the server knows, like a point's latest verification) and
 * the same human rendering. Options that name files on this host (--repo,
 * --key-file, a lab file) have no meaning on the server and are refused;
 * `recover --scan FILE` is the exception: the file's text is what is sent.
 */
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { ExitCode, badInput, notFound } from '../errors.js';
import type { PointSummary } from '../catalog/catalog.js';
import type { PublicationStatus } from '../publish/publish.js';
import { recoverResult, type RecoverySession } from '../session/session.js';
import type { ApiClient, RemoteAction, RemoteOperation } from './remote.js';
import type { CommandContext } from './context.js';
import { renderPoints } from './commands/points.js';
import { renderPublications } from './commands/publications.js';
import { renderSessions, sessionRow } from './commands/sessions.js';
import { parseTarget, renderRecovered } from './commands/recover.js';
import { parseLimit, renderHistory, renderRun } from './commands/surebackup.js';

/** GET /runs item (src/api/routes/runs.ts). */
interface RunSummary {
  id: string;
  job: string;
  trigger: string;
  status: string;
  startedAt: string;
  endedAt: string | null;
  dueAt: string | null;
  detail: string | null;
  report: string | null;
}
/** GET /runs/:id. */
interface RunDetail {
  run: RunSummary;
  vms: Array<{
    name: string;
    point: string;
    result: string;
    recoverySeconds: number;
    screenshot: string | null;
    tests: Array<{ name: string; kind: string; result: string; seconds: number; detail: string }>;
  }>;
}

/** Statuses of finished runs, the ones a pass rate counts (History.passRate). */
const FINISHED = new Set(['success', 'warning', 'failed', 'error']);
const PASSED = new Set(['success', 'warning']);
/** How many points a recovery trend holds (History.recoveryTrend's default). */
const TREND_POINTS = 30;

function refuseLocal(opts: Record<string, unknown>, names: Array<[key: string, flag: string]>): void {
  for (const [key, flag] of names) {
    if (opts[key] !== undefined) {
      throw badInput(
        'REMOTE_OPTION_UNSUPPORTED',
        `${flag} names something on this host and cannot be used with --server`,
        `drop ${flag}: the server uses its own configured repository and files`,
      );
    }
  }
}

/** Follows an operation a 202 answer started to its end, printing its progress on stderr. */
async function follow(api: ApiClient, ctx: CommandContext, op: RemoteOperation): Promise<unknown> {
  ctx.out.info(`operation ${op.id} (${op.kind}) on ${api.target.url}`);
  return api.follow(op, (e) => ctx.out.info(e.fraction === null ? e.message : `${Math.round(e.fraction * 100)}% ${e.message}`));
}

/** A job's name on the server: a path to a job file means the file of that name in the server's jobs directory. */
function jobName(arg: string): string {
  return arg.includes('/') || arg.endsWith('.json') ? basename(arg).replace(/\.json$/, '') : arg;
}

const points: RemoteAction = async (api, ctx, _args, o) => {
  refuseLocal(o, [
    ['repo', '--repo'],
    ['keyFile', '--key-file'],
  ]);
  const r = await api.get<{ repository: string; points: PointSummary[] }>('/points', { vm: o.vm as string | undefined });
  ctx.out.result({ repo: r.repository, points: r.points }, () => renderPoints(r.points));
};

const sessions: RemoteAction = async (api, ctx) => {
  const now = Date.now();
  const list = (await api.get<{ sessions: RecoverySession[] }>('/sessions')).sessions.map((s) => sessionRow(s, now));
  ctx.out.result({ sessions: list }, () => renderSessions(list));
};

/**
 * The recovery gate's body: the server reads no file a client names, so the
 * rule file of this host is sent as text, and the server holds it to the
 * API's rule policy (no include, safe modules only: src/scan/rules-policy.ts).
 */
function scanGate(o: Record<string, unknown>): { scan?: { rules: string; allowInfected: boolean } } {
  if (o.allowInfected && !o.scan)
    throw badInput('ALLOW_INFECTED_NEEDS_SCAN', '--allow-infected only means something with --scan RULES', 'add --scan <rules.yar>');
  if (typeof o.scan !== 'string') return {};
  let rules: string;
  try {
    rules = readFileSync(o.scan, 'utf8');
  } catch (e) {
    throw notFound('YARA_RULES_NOT_FOUND', `cannot read the YARA rule file ${o.scan}: ${(e as Error).message}`, 'check the path of --scan');
  }
  return { scan: { rules, allowInfected: o.allowInfected === true } };
}

const recover: RemoteAction = async (api, ctx, [target], o) => {
  refuseLocal(o, [['repo', '--repo']]);
  if (o.publish !== undefined && o.publish !== 'fuse' && o.publish !== 'nbd') {
    throw badInput(
      'REMOTE_OPTION_UNSUPPORTED',
      `--publish ${String(o.publish)} cannot be used with --server: the server holds the host's NFS ports for its own export`,
      'use --publish fuse (the default) or --publish nbd',
    );
  }
  const { vm, point } = parseTarget(target as string);
  const lab = o.lab as string | undefined;
  if (lab !== undefined && (lab.includes('/') || lab.endsWith('.json'))) {
    throw badInput(
      'REMOTE_LAB_IS_A_NAME',
      `--lab ${lab}: with --server, --lab names a lab template on the server, not a file here`,
      `use its name, e.g. --lab ${basename(lab).replace(/\.json$/, '')} (GET /api/v1/labs lists them)`,
    );
  }
  const body = {
    vm,
    ...(point ? { point } : {}),
    ...(lab ? { lab } : {}),
    ...(o.network ? { network: o.network } : {}),
    ...(o.driver ? { driver: o.driver } : {}),
    ...(o.accel ? { accel: o.accel } : {}),
    ...scanGate(o),
  };
  ctx.out.info(`recovering ${target} on ${api.target.url}${o.scan ? `, after a scan with ${String(o.scan)}` : ''}...`);
  const s = (await follow(api, ctx, await api.post<RemoteOperation>('/sessions', body))) as RecoverySession;
  ctx.out.result(recoverResult(s), (v) => renderRecovered(v as ReturnType<typeof recoverResult>));
};

const stop: RemoteAction = async (api, ctx, [id]) => {
  const s = await api.post<RecoverySession>(`/sessions/${encodeURIComponent(id as string)}/stop`);
  ctx.out.result({ session: s.id, vm: s.vm, state: s.state }, () => `session ${s.id} (${s.vm}) is ${s.state}`);
};

const publications: RemoteAction = async (api, ctx) => {
  const list = (await api.get<{ publications: PublicationStatus[] }>('/publications')).publications;
  ctx.out.result({ publications: list }, () => renderPublications(list));
};

const surebackupRun: RemoteAction = async (api, ctx, [arg], o) => {
  refuseLocal(o, [['repo', '--repo']]);
  const name = jobName(arg as string);
  if (name !== arg) ctx.out.info(`running job ${name} from the server's jobs directory (not ${arg} of this host)`);
  const done = (await follow(api, ctx, await api.post<RemoteOperation>(`/jobs/${encodeURIComponent(name)}/run`))) as {
    run: string;
    job: string;
    result: string;
    report: string;
  };
  // The operation's result is a summary; the run resource has the tests, as `run --json` prints them.
  const d = await api.get<RunDetail>(`/runs/${encodeURIComponent(done.run)}`);
  const out = {
    run: done.run,
    result: done.result,
    report: done.report,
    vms: d.vms.map((v) => ({
      name: v.name,
      point: v.point,
      result: v.result,
      tests: v.tests,
      recoverySeconds: v.recoverySeconds,
      screenshot: v.screenshot,
    })),
  };
  ctx.out.result(out, () => renderRun(done.job, out));
  if (done.result !== 'success') process.exitCode = ExitCode.verifyFailed;
};

const surebackupHistory: RemoteAction = async (api, ctx, _args, o) => {
  const limit = parseLimit(o.limit as string);
  const job = o.job as string | undefined;
  // The newest 1000 runs give the pass rate exactly as History.passRate counts it.
  const all = (await api.get<{ runs: RunSummary[] }>('/runs', { job, limit: 1000 })).runs;
  const details = new Map<string, RunDetail>();
  const detail = async (id: string): Promise<RunDetail> => {
    let d = details.get(id);
    if (!d) {
      d = await api.get<RunDetail>(`/runs/${encodeURIComponent(id)}`);
      details.set(id, d);
    }
    return d;
  };
  const runs = await Promise.all(
    all.slice(0, limit).map(async (r) => {
      const d = await detail(r.id);
      return {
        ...r,
        report: d.run.report,
        vms: d.vms.map((v) => ({
          name: v.name,
          point: v.point,
          result: v.result,
          recoverySeconds: v.recoverySeconds,
          screenshot: v.screenshot,
        })),
      };
    }),
  );
  const finished = all.filter((r) => FINISHED.has(r.status));
  const passed = finished.filter((r) => PASSED.has(r.status)).length;
  // A VM's trend is its last results across runs; the newest runs hold them
  // (exactly so when every run of the job verifies every VM).
  const trendRuns = await Promise.all(finished.slice(0, Math.max(limit, TREND_POINTS)).map((r) => detail(r.id)));
  const vms = [...new Set(runs.flatMap((r) => r.vms.map((v) => v.name)))].sort();
  const recoveryTrend = Object.fromEntries(
    vms.map((vm) => [
      vm,
      trendRuns
        .flatMap((d) =>
          d.vms
            .filter((v) => v.name === vm && v.result !== 'dependency-failed')
            .map((v) => ({ run: d.run.id, at: d.run.startedAt, recoverySeconds: v.recoverySeconds, result: v.result })),
        )
        .slice(0, TREND_POINTS)
        .reverse(),
    ]),
  );
  const out = {
    job: job ?? null,
    passRate: { runs: finished.length, passed, rate: finished.length === 0 ? null : passed / finished.length },
    runs,
    recoveryTrend,
  };
  ctx.out.result(out, () => renderHistory(out));
};

/** Command path → remote implementation. A command not listed here is refused with --server. */
export const remoteCommands: Record<string, RemoteAction> = {
  points,
  sessions,
  recover,
  stop,
  publications,
  'surebackup run': surebackupRun,
  'surebackup history': surebackupHistory,
};

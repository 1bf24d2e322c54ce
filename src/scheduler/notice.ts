/**
 * The backup notice socket: how `restorelab backup`, a separate process,
 * tells the `restorelab server` running on the same state directory that a
 * backup finished, so that the server's scheduler runs the afterBackup jobs
 * (with its gate: no overlap with its scheduled or API runs, one VM limit).
 *
 * `<stateDir>/scheduler.sock`, one JSON line each way:
 *   → {"backup":{"vm":"web","tags":["test-guest"],"point":"<id>"}}
 *   ← {"ok":true,"pid":1234,"jobsDir":"...","triggered":[{"job":"j","run":"<id>","status":"running"}]}
 *   ← {"ok":false,"error":"..."}
 * A backup job (src/backup/jobs) fires its linked SureBackup jobs by name:
 *   → {"run":{"jobs":["nightly"],"by":"backup job daily run <id>"}}
 *   ← the same reply; a job the server does not know is `"status":"not-found"`
 * Whether the socket answers is also how the CLI knows a server with a
 * scheduler is there: no socket, or a stale one nobody listens on, means
 * none, and the CLI runs the jobs itself.
 *
 * Who may send: the state directory is owner-only (src/host/private-files.ts),
 * so only its owner (root) reaches the socket; a notice can do no more than
 * what that user could do by running `surebackup run`. Still, a request is
 * bounded (NOTICE_MAX_BYTES, one request per connection, a deadline) and
 * checked field by field before the scheduler sees it.
 */
import { connect, createServer, type Server, type Socket } from 'node:net';
import { existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { RestorelabError } from '../errors.js';
import type { BackedUpVm, TriggerOutcome } from './scheduler.js';

export const NOTICE_SOCKET = 'scheduler.sock';
export const NOTICE_MAX_BYTES = 16 * 1024;
/** sun_path is 108 bytes with its NUL. */
const MAX_SOCKET_PATH = 107;
const VM_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

export function noticeSocket(stateDir: string): string {
  return join(stateDir, NOTICE_SOCKET);
}

/** One triggered job as the backup reports it: the run's id and its status then (`running`, or `skipped-overlap`). */
export interface TriggeredRun {
  job: string;
  run: string;
  status: 'running' | 'skipped-overlap';
}

export interface BackupNotice {
  vm: BackedUpVm;
  point: string;
}
/** Named SureBackup jobs to run now, and who asks (for the server's log). */
export interface RunNotice {
  jobs: string[];
  by: string;
}
/** A named job the server does not know is reported, not an error of the whole request. */
export type NamedRun = TriggeredRun | { job: string; run: null; status: 'not-found' };
export type NoticeReply = { ok: true; pid: number; jobsDir: string; triggered: TriggeredRun[] } | { ok: false; error: string };
export type RunNoticeReply = { ok: true; pid: number; jobsDir: string; triggered: NamedRun[] };
// As config/schemas/job.schema.json names a job.
const JOB_NAME = /^[A-Za-z0-9._-]{1,128}$/;

export function triggeredRun(o: TriggerOutcome): TriggeredRun {
  return { job: o.job, run: o.runId, status: o.status === 'started' ? 'running' : 'skipped-overlap' };
}

/** The notice in a request line, or why it is refused. */
export function parseNotice(line: string): BackupNotice | string {
  let m: unknown;
  try {
    m = JSON.parse(line);
  } catch {
    return 'the request is not JSON';
  }
  const b = (m as { backup?: unknown } | null)?.backup as { vm?: unknown; tags?: unknown; point?: unknown } | undefined;
  if (typeof b !== 'object' || b === null) return 'the request has no "backup" object';
  if (typeof b.vm !== 'string' || !VM_NAME.test(b.vm)) return 'backup.vm must be a VM name';
  if (typeof b.point !== 'string' || b.point.length === 0 || b.point.length > 256) return 'backup.point must be a restore point id';
  const tags = b.tags ?? [];
  if (!Array.isArray(tags) || tags.length > 64 || !tags.every((t) => typeof t === 'string' && t.length > 0 && t.length <= 128))
    return 'backup.tags must be a list of tags';
  return { vm: { name: b.vm, tags: tags as string[] }, point: b.point };
}

/** A run request in a line already parsed as JSON, or why it is refused. */
function parseRunNotice(r: unknown): RunNotice | string {
  const o = r as { jobs?: unknown; by?: unknown } | null;
  if (typeof o !== 'object' || o === null) return 'run must be an object';
  if (
    !Array.isArray(o.jobs) ||
    o.jobs.length === 0 ||
    o.jobs.length > 64 ||
    !o.jobs.every((j) => typeof j === 'string' && JOB_NAME.test(j))
  )
    return 'run.jobs must be a list of job names';
  if (typeof o.by !== 'string' || o.by.length > 256) return 'run.by must say who asks';
  return { jobs: o.jobs as string[], by: o.by };
}

/** Either request a line may hold, or why it is refused. */
export function parseRequest(line: string): { backup: BackupNotice } | { run: RunNotice } | string {
  let m: unknown;
  try {
    m = JSON.parse(line);
  } catch {
    return 'the request is not JSON';
  }
  if (typeof m === 'object' && m !== null && 'run' in m) {
    const r = parseRunNotice((m as { run: unknown }).run);
    return typeof r === 'string' ? r : { run: r };
  }
  const b = parseNotice(line);
  return typeof b === 'string' ? b : { backup: b };
}

/** Reads one line of at most NOTICE_MAX_BYTES; undefined when the peer sends more, or closes first. */
function readLine(sock: Socket, onLine: (line: string | undefined) => void): void {
  let buf = Buffer.alloc(0);
  let done = false;
  const finish = (line: string | undefined): void => {
    if (!done) {
      done = true;
      onLine(line);
    }
  };
  sock.on('data', (d: Buffer) => {
    if (done) return;
    buf = Buffer.concat([buf, d]);
    const nl = buf.indexOf(0x0a);
    if (nl >= 0 && nl <= NOTICE_MAX_BYTES) finish(buf.subarray(0, nl).toString('utf8'));
    else if (buf.length > NOTICE_MAX_BYTES) finish(undefined);
  });
  sock.on('end', () => finish(undefined));
  sock.on('close', () => finish(undefined));
}

export interface NoticeServer {
  path: string;
  close(): Promise<void>;
}

/**
 * Serves notices for `scheduler` until closed. A socket file left by a dead
 * server is replaced; one a live server answers on is not taken over (that
 * server keeps receiving the notices): then this returns undefined.
 */
export async function serveBackupNotices(o: {
  stateDir: string;
  jobsDir: string;
  notify(vms: BackedUpVm[]): Promise<TriggerOutcome[]>;
  log: { info(l: string): void; warn(l: string): void };
  /** Runs named jobs now (a backup job's linked SureBackup jobs); undefined: the job does not exist. */
  run?(job: string): Promise<TriggerOutcome> | undefined;
}): Promise<NoticeServer | undefined> {
  const path = noticeSocket(o.stateDir);
  if (Buffer.byteLength(path) > MAX_SOCKET_PATH) {
    o.log.warn(
      `backup notices: socket path ${path} is longer than ${MAX_SOCKET_PATH} bytes; \`restorelab backup\` will run afterBackup jobs itself`,
    );
    return undefined;
  }
  if (existsSync(path)) {
    if (await answers(path)) {
      o.log.warn(`backup notices: another server already listens on ${path}; it receives them`);
      return undefined;
    }
    rmSync(path, { force: true });
  }
  const server: Server = createServer((sock) => {
    sock.setTimeout(5000, () => sock.destroy());
    sock.on('error', () => undefined);
    readLine(sock, async (line) => {
      const req = line === undefined ? `a request is one line of at most ${NOTICE_MAX_BYTES} bytes` : parseRequest(line);
      let reply: NoticeReply | RunNoticeReply;
      if (typeof req === 'string') {
        reply = { ok: false, error: req };
      } else {
        try {
          if ('run' in req) {
            if (!o.run) throw new Error('this server does not run jobs by name');
            const run = o.run.bind(o);
            const triggered = await Promise.all(
              req.run.jobs.map(async (job): Promise<NamedRun> => {
                const x = await run(job);
                return x ? triggeredRun(x) : { job, run: null, status: 'not-found' };
              }),
            );
            o.log.info(`${req.run.by} fired: ${triggered.map((r) => `${r.job} ${r.status}`).join(', ')}`);
            reply = { ok: true, pid: process.pid, jobsDir: o.jobsDir, triggered };
          } else {
            const n = req.backup;
            const triggered = (await o.notify([n.vm])).map(triggeredRun);
            o.log.info(
              `backup of ${n.vm.name} (point ${n.point}) reported: ${triggered.map((r) => `${r.job} ${r.status}`).join(', ') || 'no afterBackup job covers it'}`,
            );
            reply = { ok: true, pid: process.pid, jobsDir: o.jobsDir, triggered };
          }
        } catch (err) {
          reply = { ok: false, error: (err as Error).message };
        }
      }
      if (!sock.destroyed) sock.end(JSON.stringify(reply) + '\n');
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return {
    path,
    close: () =>
      new Promise<void>((resolve) =>
        server.close(() => {
          rmSync(path, { force: true });
          resolve();
        }),
      ),
  };
}

/** Whether something accepts connections on the socket at `path` (it is sent nothing). */
function answers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(path);
    const timer = setTimeout(() => {
      s.destroy();
      resolve(true);
    }, 2000);
    s.on('connect', () => {
      clearTimeout(timer);
      s.destroy();
      resolve(true);
    });
    s.on('error', () => {
      clearTimeout(timer);
      resolve(false);
    });
  });
}

/**
 * Tells the server on `stateDir` that a backup finished. Undefined when no
 * server listens there (no socket, or a stale one); the server's refusal or
 * silence is an error, because a server is there and may or may not have
 * started the jobs: running them here as well could run them twice.
 */
export function sendBackupNotice(
  stateDir: string,
  notice: BackupNotice,
  timeoutMs = 10_000,
): Promise<(NoticeReply & { ok: true }) | undefined> {
  return sendRequest(
    stateDir,
    { backup: { vm: notice.vm.name, tags: notice.vm.tags ?? [], point: notice.point } },
    `its afterBackup jobs for ${notice.vm.name} may not have run`,
    timeoutMs,
  );
}

/** Asks the server on `stateDir` to run SureBackup jobs by name; undefined when no server listens (as sendBackupNotice). */
export function sendRunNotice(stateDir: string, notice: RunNotice, timeoutMs = 10_000): Promise<RunNoticeReply | undefined> {
  return sendRequest(stateDir, { run: notice }, `the SureBackup jobs ${notice.jobs.join(', ')} may not have started`, timeoutMs);
}

function sendRequest<R>(stateDir: string, request: unknown, unsure: string, timeoutMs: number): Promise<R | undefined> {
  const path = noticeSocket(stateDir);
  if (!existsSync(path)) return Promise.resolve(undefined);
  return new Promise<R | undefined>((resolve, reject) => {
    const sock = connect(path);
    let connected = false;
    const fail = (why: string): void => {
      sock.destroy();
      reject(
        new RestorelabError('SERVER_NOTICE_FAILED', `the restorelab server on ${stateDir} ${why}; ${unsure}`, {
          hint: `check the server's log; \`restorelab surebackup history\` shows what ran, \`restorelab surebackup run JOB\` runs a job now`,
        }),
      );
    };
    const timer = setTimeout(() => fail(`did not answer the backup notice within ${timeoutMs / 1000} s`), timeoutMs);
    sock.on('connect', () => {
      connected = true;
      sock.write(JSON.stringify(request) + '\n');
    });
    sock.on('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      // Nobody listens: a socket file left by a server that is gone.
      if (!connected && (e.code === 'ECONNREFUSED' || e.code === 'ENOENT')) resolve(undefined);
      else fail(`could not be reached (${e.code ?? e.message})`);
    });
    readLine(sock, async (line) => {
      clearTimeout(timer);
      if (line === undefined) {
        if (connected) fail('closed the connection without an answer');
        return;
      }
      let r: { ok: true } | { ok: false; error: string };
      try {
        r = JSON.parse(line) as typeof r;
      } catch {
        fail('answered something that is not JSON');
        return;
      }
      sock.destroy();
      if (r.ok) resolve(r as R);
      else fail(`refused the request: ${r.error}`);
    });
  });
}

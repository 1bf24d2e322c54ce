/**
 * The CLI's remote mode: `restorelab --server URL --token T <command>` (or
 * RESTORELAB_SERVER / RESTORELAB_TOKEN) runs the command through a running
 * `restorelab server` instead of in this process.
 *
 * Words: the *target* is the server URL plus the bearer token; the
 * *ApiClient* speaks /api/v1 with it; an *operation* is the server's handle
 * on long work (202 + /operations/:id), followed here over Server-Sent Events
 * with its progress printed to stderr.
 *
 * One place decides embedded or remote: applyRemoteMode, called by main.ts
 * once the target is known, swaps the action of every command for its remote
 * implementation (src/cli/remote-commands.ts) or for a refusal that names the
 * command. Options stay declared once, by the command's own module, so a
 * command parses the same flags in both modes.
 */
import type { Command } from 'commander';
import { ExitCode, RestorelabError, badInput, isErrorCode, type ExitCode as ExitCodeT } from '../errors.js';
import { exitCodeOf as exitCodeOfCode } from '../errors/registry.js';
import { contextFor, type CommandContext } from './context.js';

export interface RemoteTarget {
  url: string;
  /** Checked when a remote command runs, so a host command (env-only target) needs none. */
  token: string | undefined;
  /** Whether --server was on the command line (rather than only RESTORELAB_SERVER in the environment). */
  explicit: boolean;
}

/**
 * The target from the command line or the environment, or undefined for
 * embedded mode. Read before commander parses, because the choice of action
 * must be made before commander runs one.
 */
export function remoteTarget(argv: string[], env: NodeJS.ProcessEnv = process.env): RemoteTarget | undefined {
  const flag = (name: string): string | undefined => {
    let v: string | undefined;
    for (let i = 0; i < argv.length; i++) {
      const a = argv[i] as string;
      if (a === '--') break;
      if (a === name) v = argv[i + 1];
      else if (a.startsWith(`${name}=`)) v = a.slice(name.length + 1);
    }
    return v;
  };
  const cliServer = flag('--server');
  const server = cliServer ?? (env.RESTORELAB_SERVER || undefined);
  if (server === undefined) return undefined;
  let url: URL;
  try {
    url = new URL(server);
  } catch {
    throw badInput('BAD_SERVER_URL', `--server "${server}" is not a URL`, 'e.g. --server https://backup-host:8470');
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:')
    throw badInput('BAD_SERVER_URL', `--server "${server}" must be an http:// or https:// URL`, 'e.g. --server https://backup-host:8470');
  const token = flag('--token') ?? (env.RESTORELAB_TOKEN || undefined);
  return { url: url.origin + url.pathname.replace(/\/+$/, ''), token, explicit: cliServer !== undefined };
}

/** What the server's error body holds (src/api/errors.ts errorBody). */
interface ErrorBody {
  error?: { code?: string; message?: string; hint?: string; details?: unknown };
}

/**
 * Exit code of an HTTP error, in the CLI's classes (docs/cli.md). A refused
 * token is the caller's mistake like any other bad input.
 */
function exitCodeOf(status: number): ExitCodeT {
  if (status === 404) return ExitCode.notFound;
  if (status === 409 || status === 429) return ExitCode.busy;
  if (status === 422) return ExitCode.verifyFailed;
  if (status === 501) return ExitCode.notImplemented;
  if (status === 503) return ExitCode.missingComponent;
  if (status >= 400 && status < 500) return ExitCode.badInput;
  return ExitCode.failure;
}

/** The server's long-operation resource (src/api/operations.ts), as far as the CLI reads it. */
export interface RemoteOperation {
  id: string;
  kind: string;
  state: 'running' | 'succeeded' | 'failed' | 'cancelled';
  progress: { fraction: number | null; message: string | null };
  result: unknown;
  error: { code: string; message: string; hint?: string; status?: number } | null;
  resource: string | null;
}

interface OperationEvent {
  type: 'progress' | 'log' | 'done';
  fraction?: number;
  message?: string;
  data?: unknown;
}

export class ApiClient {
  constructor(readonly target: RemoteTarget) {}

  /** GET /api/v1<path> with an optional query; the JSON body. */
  async get<T>(path: string, query: Record<string, string | number | undefined> = {}): Promise<T> {
    const q = Object.entries(query)
      .filter(([, v]) => v !== undefined)
      .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`);
    return (await this.request('GET', path + (q.length ? `?${q.join('&')}` : ''))).json() as Promise<T>;
  }

  /** POST /api/v1<path> with a JSON body; the JSON answer (a 202 answer is the operation). */
  async post<T>(path: string, body?: unknown): Promise<T> {
    return (await this.request('POST', path, body)).json() as Promise<T>;
  }

  /**
   * Follows an operation to its end over SSE, passing progress and log
   * events to `onEvent`; resolves with its result, or throws its error. If
   * the stream breaks (a proxy, a restarting server) it reconnects and skips
   * the events already seen, because the server replays them all.
   */
  async follow(op: RemoteOperation, onEvent: (e: { fraction: number | null; message: string }) => void): Promise<unknown> {
    let seen = 0;
    for (let attempt = 0; ; attempt++) {
      const res = await this.request('GET', `/operations/${encodeURIComponent(op.id)}/events`, undefined, 'text/event-stream');
      let index = 0;
      let done: RemoteOperation | undefined;
      for await (const e of sseEvents(res)) {
        if (index++ < seen) continue;
        seen++;
        const ev = JSON.parse(e.data) as OperationEvent;
        if (ev.type === 'done') {
          done = ev.data as RemoteOperation;
          break;
        }
        if (ev.message) onEvent({ fraction: ev.fraction ?? null, message: ev.message });
      }
      if (done) return finished(done);
      // The stream ended without `done`: ask for the operation itself.
      const now = await this.get<RemoteOperation>(`/operations/${encodeURIComponent(op.id)}`);
      if (now.state !== 'running') return finished(now);
      if (attempt >= 5)
        throw new RestorelabError('OPERATION_STREAM_LOST', `lost the progress stream of operation ${op.id} (${op.kind}) five times`, {
          hint: `it may still be running: GET ${this.target.url}/api/v1/operations/${op.id}`,
        });
      await new Promise((r) => setTimeout(r, 1000));
    }
  }

  private async request(method: string, path: string, body?: unknown, accept = 'application/json'): Promise<Response> {
    const url = `${this.target.url}/api/v1${path}`;
    let res: Response;
    try {
      res = await fetch(url, {
        method,
        headers: {
          authorization: `Bearer ${this.target.token ?? ''}`,
          accept,
          ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
        },
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
      });
    } catch (err) {
      const cause = (err as { cause?: { code?: string; message?: string } }).cause;
      throw new RestorelabError(
        'SERVER_UNREACHABLE',
        `cannot reach the restorelab server at ${this.target.url}: ${cause?.code ?? cause?.message ?? (err as Error).message}`,
        {
          hint: 'check --server (or RESTORELAB_SERVER) and that `restorelab server` runs there; for a self-signed certificate set NODE_EXTRA_CA_CERTS',
          cause: err,
        },
      );
    }
    if (res.ok) return res;
    const text = await res.text();
    let e: ErrorBody['error'];
    try {
      e = (JSON.parse(text) as ErrorBody).error;
    } catch {
      e = undefined;
    }
    const code = e?.code ?? `HTTP_${res.status}`;
    const message = `server: ${e?.message ?? (text.trim().slice(0, 200) || res.statusText)}`;
    let hint = e?.hint;
    if (res.status === 401)
      hint ??= 'check --token (or RESTORELAB_TOKEN); on the server host, `restorelab token list` shows the valid ones';
    if (res.status === 403) hint ??= 'use a token with a higher role (viewer < operator < admin)';
    if (res.status === 429)
      hint ??= `wait ${res.headers.get('retry-after') ?? 'a while'} seconds: too many bad tokens came from this address`;
    throw RestorelabError.revive({ code, message, exitCode: exitCodeOf(res.status), hint });
  }
}

function finished(op: RemoteOperation): unknown {
  if (op.state === 'succeeded') return op.result;
  const e = op.error ?? { code: 'OPERATION_CANCELLED', message: `operation ${op.id} was ${op.state}` };
  // The exit code the command has embedded (an infected point exits 3), from the code, or for a code this build
  // does not know from the status the error would have had as a direct answer.
  const exitCode = isErrorCode(e.code)
    ? exitCodeOfCode(e.code)
    : 'status' in e && typeof e.status === 'number'
      ? exitCodeOf(e.status)
      : ExitCode.failure;
  throw RestorelabError.revive({ code: e.code, message: `server: ${e.message}`, hint: e.hint, exitCode });
}

/** The events of a text/event-stream body (only the fields the server sends: id, event, data). */
async function* sseEvents(res: Response): AsyncGenerator<{ event: string; data: string }> {
  if (!res.body) return;
  const decoder = new TextDecoder();
  let buf = '';
  let event = 'message';
  let data: string[] = [];
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    buf += decoder.decode(chunk, { stream: true });
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl).replace(/\r$/, '');
      buf = buf.slice(nl + 1);
      if (line === '') {
        if (data.length) yield { event, data: data.join('\n') };
        event = 'message';
        data = [];
      } else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
      else if (line.startsWith('event:')) event = line.slice(6).trim();
      // `id:` and `: comment` (keep-alive) lines need nothing.
    }
  }
}

/** A command's remote implementation: its positional arguments and options, as commander parsed them. */
export type RemoteAction = (api: ApiClient, ctx: CommandContext, args: string[], opts: Record<string, unknown>) => Promise<void>;

/**
 * Commands that manage this host itself (the daemon, its tokens, the config,
 * the host probe, the supervisor a session spawns): they always run
 * embedded when the target only comes from the environment, so a shell or a
 * unit with RESTORELAB_SERVER set can still start the server or create
 * tokens. Given --server explicitly, they are refused like any other
 * command without a remote implementation.
 */
const HOST_COMMANDS = ['server', 'session-supervise', 'publisher-serve', 'doctor', 'config', 'token'];

function commandPath(cmd: Command): string {
  const names: string[] = [];
  for (let c: Command | null = cmd; c?.parent; c = c.parent) names.unshift(c.name());
  return names.join(' ');
}

function leaves(cmd: Command): Command[] {
  return cmd.commands.length === 0 ? [cmd] : cmd.commands.flatMap(leaves);
}

/**
 * Gives every command of `program` its remote action, or a refusal naming
 * the command. The one place where embedded vs remote is decided.
 */
export function applyRemoteMode(program: Command, target: RemoteTarget, remote: Record<string, RemoteAction>): void {
  const api = new ApiClient(target);
  for (const cmd of leaves(program)) {
    const path = commandPath(cmd);
    const impl = remote[path];
    if (!impl && !target.explicit && HOST_COMMANDS.includes(path.split(' ')[0] as string)) continue;
    // A refused command must say so, not first ask for options it will never use.
    if (!impl) for (const o of cmd.options) o.mandatory = false;
    cmd.action(async (...a: unknown[]) => {
      const c = a[a.length - 1] as Command;
      const opts = a[a.length - 2] as Record<string, unknown>;
      const args = a.slice(0, -2).flatMap((v) => (Array.isArray(v) ? v.map(String) : v === undefined ? [] : [String(v)]));
      if (!impl) {
        const supported = Object.keys(remote).sort().join(', ');
        throw badInput(
          'REMOTE_UNSUPPORTED',
          `\`restorelab ${path}\` cannot run against a server (--server ${target.url})`,
          `run it on the server host without --server${target.explicit ? '' : ' (unset RESTORELAB_SERVER)'}; commands that work remotely: ${supported}`,
        );
      }
      if (!target.token) {
        throw badInput(
          'TOKEN_REQUIRED',
          `a token is needed to use the server at ${target.url}`,
          'pass --token T or set RESTORELAB_TOKEN; on the server host: restorelab token create NAME --role viewer',
        );
      }
      await impl(api, contextFor(c), args, opts);
    });
  }
}

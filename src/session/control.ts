/**
 * How CLI commands ask a session's supervisor to act: one JSON line per
 * request on `<stateDir>/sessions/<id>/control.sock`, one JSON line back.
 * The supervisor owns the publication and the domain, so `stop` and
 * `migrate` run there rather than in the short-lived CLI process.
 */
import { createServer, connect, type Server } from 'node:net';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { RestorelabError } from '../errors.js';
import { JsonLineFramer } from '../hypervisor/jsonlines.js';
import type { RecoverySession, SessionError } from './session.js';

export type ControlRequest = { op: 'stop' } | { op: 'migrate'; to: string; format: 'raw' | 'qcow2' };

export type ControlReply = { ok: true; session: RecoverySession } | { ok: false; error: SessionError };

export function controlSocket(workDir: string): string {
  return join(workDir, 'control.sock');
}

export function toSessionError(e: unknown): SessionError {
  if (e instanceof RestorelabError) return { code: e.code, message: e.message, ...(e.hint ? { hint: e.hint } : {}), exitCode: e.exitCode };
  return { code: 'INTERNAL', message: e instanceof Error ? e.message : String(e) };
}

export function fromSessionError(e: SessionError): RestorelabError {
  return RestorelabError.revive(e);
}

/** Resolves once the socket accepts connections. */
export async function serveControl(path: string, handle: (req: ControlRequest) => Promise<RecoverySession>): Promise<Server> {
  rmSync(path, { force: true });
  const server = createServer((sock) => {
    const framer = new JsonLineFramer((m) => {
      handle(m as unknown as ControlRequest).then(
        (session) => sock.end(JSON.stringify({ ok: true, session } satisfies ControlReply) + '\n'),
        (e: unknown) => sock.end(JSON.stringify({ ok: false, error: toSessionError(e) } satisfies ControlReply) + '\n'),
      );
      return true;
    });
    sock.on('data', (d: Buffer) => framer.push(d));
    sock.on('error', () => undefined);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => resolve());
  });
  return server;
}

/** Sends one request and waits for the reply; rejects with the supervisor's error. */
export function requestControl(path: string, req: ControlRequest, timeoutMs: number): Promise<RecoverySession> {
  return new Promise((resolve, reject) => {
    const sock = connect(path);
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new RestorelabError('SUPERVISOR_TIMEOUT', `the session supervisor did not answer "${req.op}" within ${timeoutMs / 1000} s`));
    }, timeoutMs);
    let replied = false;
    const framer = new JsonLineFramer((m) => {
      replied = true;
      clearTimeout(timer);
      const r = m as unknown as ControlReply;
      if (r.ok) resolve(r.session);
      else reject(fromSessionError(r.error));
      sock.destroy();
      return true;
    });
    sock.on('connect', () => sock.write(JSON.stringify(req) + '\n'));
    sock.on('data', (d: Buffer) => framer.push(d));
    sock.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    sock.on('close', () => {
      clearTimeout(timer);
      if (!replied)
        reject(new RestorelabError('SUPERVISOR_GONE', `the session supervisor closed the connection before answering "${req.op}"`));
    });
  });
}

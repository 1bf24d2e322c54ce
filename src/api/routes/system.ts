/** The server's own resources: who am I, long operations (with SSE), API tokens. */
import type { RegisterRoutes } from './register.js';
import { apiError } from '../errors.js';
import { principal } from '../route-table.js';
import { streamOperation } from '../sse.js';
import type { Role } from '../tokens.js';

export const systemRoutes: RegisterRoutes = (t, ctx) => {
  t.add({
    method: 'get',
    path: '/whoami',
    role: 'viewer',
    tag: 'system',
    summary: 'the token in use: its name and role',
    handler: (_req, res) => principal(res),
  });
  t.add({
    method: 'get',
    path: '/operations',
    role: 'viewer',
    tag: 'operations',
    summary: 'recent long operations, newest first',
    handler: () => ({ operations: ctx.operations.list() }),
  });
  t.add({
    method: 'get',
    path: '/operations/:id',
    role: 'viewer',
    tag: 'operations',
    summary: 'one long operation: state, progress, result',
    handler: (req) => ctx.operations.get(String(req.params.id)) ?? notFoundOp(String(req.params.id)),
  });
  t.add({
    method: 'get',
    path: '/operations/:id/events',
    role: 'viewer',
    tag: 'operations',
    summary: "the operation's progress as Server-Sent Events, ending with a `done` event",
    success: { status: 200, description: 'an event stream', contentType: 'text/event-stream' },
    handler: (req, res) => {
      const id = String(req.params.id);
      if (!ctx.operations.get(id)) notFoundOp(id);
      streamOperation(req, res, ctx.operations, id);
    },
  });
  t.add({
    method: 'post',
    path: '/operations/:id/cancel',
    role: 'operator',
    tag: 'operations',
    summary: 'asks a running operation to stop',
    success: { status: 202, description: 'cancellation requested' },
    handler: (req) => {
      const id = String(req.params.id);
      const op = ctx.operations.get(id) ?? notFoundOp(id);
      if (!ctx.operations.cancel(id)) throw apiError('OPERATION_NOT_CANCELLABLE', `operation ${id} has already ended (${op.state})`);
      return op;
    },
  });
  t.add({
    method: 'get',
    path: '/tokens',
    role: 'admin',
    tag: 'tokens',
    summary: 'API tokens (never their secrets)',
    handler: async () => ({ tokens: await ctx.tokens.list() }),
  });
  t.add({
    method: 'post',
    path: '/tokens',
    role: 'admin',
    tag: 'tokens',
    summary: 'creates a token; its secret is in this response only',
    body: 'api-token-create.schema.json',
    success: { status: 201, description: 'the token, with its secret' },
    handler: async (req, res) => {
      const b = req.body as { name: string; role: Role };
      const out = await ctx.tokens.create(b.name, b.role);
      ctx.log.info({ by: principal(res).name, token: out.info.name, role: out.info.role }, 'API token created');
      return { ...out.info, token: out.token };
    },
  });
  t.add({
    method: 'delete',
    path: '/tokens/:id',
    role: 'admin',
    tag: 'tokens',
    summary: 'revokes a token by id or name',
    handler: async (req, res) => {
      const info = await ctx.tokens.revoke(String(req.params.id));
      ctx.log.info({ by: principal(res).name, token: info.name }, 'API token revoked');
      return info;
    },
  });
};

function notFoundOp(id: string): never {
  throw apiError('NOT_FOUND', `no operation ${id}; operations are kept in memory by the server that ran them`);
}

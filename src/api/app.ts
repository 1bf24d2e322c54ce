/**
 * The express application: health, metrics, the dashboard's static files and
 * /api/v1. Authentication runs before every API route and /metrics; the only
 * unauthenticated routes are /healthz and the dashboard's static shell, which
 * holds no data (it asks for a token and then calls the API with it).
 */
import express, { type NextFunction, type Request, type Response } from 'express';
import { existsSync } from 'node:fs';
import { projectPath } from '../paths.js';
import { apiError, errorBody, toApiError } from './errors.js';
import { RouteTable } from './route-table.js';
import { routeModules } from './routes/index.js';
import type { ApiContext } from './context.js';

export const API_PREFIX = '/api/v1';
export const BODY_LIMIT = '256kb';

export function createApp(ctx: ApiContext): { app: express.Express; table: RouteTable } {
  const table = new RouteTable();
  for (const register of routeModules) register(table, ctx);

  const app = express();
  app.disable('x-powered-by');
  app.set('trust proxy', false);
  app.use(requestLog(ctx));

  app.get('/healthz', (_req, res) => { res.json({ ok: true, pid: process.pid, uptimeSeconds: Math.round(process.uptime()) }); });

  const auth = authenticate(ctx);
  app.get('/metrics', auth, async (_req, res) => {
    const m = await ctx.metrics.render();
    res.type(m.contentType).send(m.body);
  });

  const api = express.Router();
  api.get('/openapi.json', auth, (_req, res) => { res.json(table.openapi({ title: 'restorelab API', version: '1' })); });
  api.use(auth);
  api.use(express.json({ limit: BODY_LIMIT, strict: true }));
  table.mount(api);
  api.use((req) => { throw apiError('ROUTE_NOT_FOUND', `no route ${req.method} ${API_PREFIX}${req.path}; see ${API_PREFIX}/openapi.json`); });
  app.use(API_PREFIX, api);

  const dashboard = projectPath('dashboard');
  if (existsSync(dashboard)) app.use(express.static(dashboard, { index: 'index.html', maxAge: 0 }));

  app.use((req: Request) => { throw apiError('ROUTE_NOT_FOUND', `no route ${req.method} ${req.path}`); });
  app.use(errorHandler(ctx));
  return { app, table };
}

function clientOf(req: Request): string {
  return req.socket.remoteAddress ?? 'unknown';
}

function authenticate(ctx: ApiContext) {
  return (req: Request, res: Response, next: NextFunction): void => {
    const client = clientOf(req);
    if (ctx.authLimiter.blocked(client)) {
      res.set('retry-after', String(ctx.authLimiter.retryAfter(client)));
      throw apiError('RATE_LIMITED');
    }
    const header = req.get('authorization') ?? '';
    const m = /^Bearer\s+(\S+)$/i.exec(header);
    const who = m ? ctx.tokens.check(m[1] as string) : undefined;
    if (!who) {
      ctx.authLimiter.fail(client);
      // Never log the token itself: only whether one was sent.
      ctx.log.warn({ client, method: req.method, path: req.path, reason: m ? 'unknown or revoked token' : 'no bearer token' }, 'authentication failed');
      res.set('www-authenticate', 'Bearer realm="restorelab"');
      throw apiError('UNAUTHENTICATED', m ? 'the bearer token is not valid (revoked, mistyped or from another server)' : 'send Authorization: Bearer <token>; create one with: restorelab token create NAME --role viewer');
    }
    res.locals.principal = who;
    next();
  };
}

function requestLog(ctx: ApiContext) {
  return (req: Request, res: Response, next: NextFunction): void => {
    const start = process.hrtime.bigint();
    res.on('finish', () => {
      const ms = Number(process.hrtime.bigint() - start) / 1e6;
      const route = (req.route as { path?: string } | undefined)?.path;
      const who = (res.locals.principal as { name?: string } | undefined)?.name;
      ctx.metrics.httpRequests.inc({ method: req.method, route: route ? `${req.baseUrl}${route}` : 'unmatched', status: String(res.statusCode) });
      const level = res.statusCode >= 500 ? 'error' : res.statusCode === 401 || res.statusCode === 403 ? 'warn' : 'info';
      ctx.log[level]({ method: req.method, path: req.path, status: res.statusCode, ms: Math.round(ms * 10) / 10, token: who }, 'request');
    });
    next();
  };
}

function errorHandler(ctx: ApiContext) {
  return (err: unknown, req: Request, res: Response, _next: NextFunction): void => {
    let e = err;
    const t = (err as { type?: string } | null)?.type;
    if (t === 'entity.parse.failed') e = apiError('MALFORMED_JSON', `the request body is not valid JSON: ${(err as Error).message}`);
    else if (t === 'entity.too.large') e = apiError('BODY_TOO_LARGE', `the request body is larger than ${BODY_LIMIT}`);
    else if (t === 'encoding.unsupported' || t === 'charset.unsupported') e = apiError('UNSUPPORTED_MEDIA_TYPE', (err as Error).message);
    const { error, internal } = toApiError(e);
    if (error.status === 403) ctx.log.warn({ method: req.method, path: req.path, token: (res.locals.principal as { name?: string } | undefined)?.name }, error.message);
    if (internal) ctx.log.error({ err, method: req.method, path: req.path }, 'unhandled error');
    if (res.headersSent) { res.end(); return; }
    res.status(error.status).json(errorBody(error));
  };
}

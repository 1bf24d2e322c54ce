/**
 * The express application: health, metrics, the dashboard's static files and
 * /api/v1. Authentication runs before every API route and /metrics; the only
 * unauthenticated routes are /healthz and the dashboard's static shell, which
 * holds no data (it asks for a token and then calls the API with it).
 * Every response carries the security headers of securityHeaders().
 */
import express, { type NextFunction, type Request, type Response } from 'express';
import { existsSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { projectPath } from '../paths.js';
import { apiError, errorBody, toApiError } from './errors.js';
import { RouteTable } from './route-table.js';
import { routeModules } from './routes/index.js';
import type { ApiContext } from './context.js';
import { REPORT_CSS } from '../report/report.js';

export const API_PREFIX = '/api/v1';
export const BODY_LIMIT = '256kb';

export function createApp(ctx: ApiContext): { app: express.Express; table: RouteTable } {
  const table = new RouteTable();
  for (const register of routeModules) register(table, ctx);

  const app = express();
  app.disable('x-powered-by');
  app.set('trust proxy', false);
  app.use(requestLog(ctx));
  app.use(securityHeaders);

  // Unauthenticated, so it says only that the server answers (no pid, no uptime: nothing about the host).
  app.get('/healthz', (_req, res) => {
    res.json({ ok: true });
  });

  const auth = authenticate(ctx);
  app.get('/metrics', auth, async (_req, res) => {
    const m = await ctx.metrics.render();
    res.type(m.contentType).send(m.body);
  });

  const api = express.Router();
  // API responses are data, never a page: nothing in them may load or run.
  api.use((_req, res, next) => {
    res.set('content-security-policy', API_CSP);
    next();
  });
  api.get('/openapi.json', auth, (_req, res) => {
    res.json(table.openapi({ title: 'restorelab API', version: '1' }));
  });
  api.use(auth);
  api.use(express.json({ limit: BODY_LIMIT, strict: true }));
  table.mount(api);
  api.use((req) => {
    throw apiError('ROUTE_NOT_FOUND', `no route ${req.method} ${API_PREFIX}${req.path}; see ${API_PREFIX}/openapi.json`);
  });
  app.use(API_PREFIX, api);

  const dashboard = projectPath('dashboard');
  if (existsSync(dashboard)) app.use(express.static(dashboard, { index: 'index.html', maxAge: 0 }));

  app.use((req: Request) => {
    throw apiError('ROUTE_NOT_FOUND', `no route ${req.method} ${req.path}`);
  });
  app.use(errorHandler(ctx));
  return { app, table };
}

function clientOf(req: Request): string {
  return req.socket.remoteAddress ?? 'unknown';
}

/**
 * Bearer authentication. A valid token always passes, at once: only failures
 * are rate limited (src/api/rate-limit.ts), so failures from an address that
 * every local client shares cannot lock the CLI or the dashboard out.
 */
function authenticate(ctx: ApiContext) {
  return async (req: Request, res: Response, next: NextFunction): Promise<void> => {
    const client = clientOf(req);
    const header = req.get('authorization') ?? '';
    const m = /^Bearer\s+(\S+)$/i.exec(header);
    const who = m ? await ctx.tokens.check(m[1] as string) : undefined;
    if (who) {
      res.locals.principal = who;
      next();
      return;
    }
    const wasLimited = ctx.authLimiter.blocked(client);
    const delay = ctx.authLimiter.fail(client);
    // Never log the token itself: only whether one was sent. Once an address is
    // over its limit, one line says so instead of one line per guess.
    if (!wasLimited)
      ctx.log.warn(
        { client, method: req.method, path: req.path, reason: m ? 'unknown or revoked token' : 'no bearer token' },
        'authentication failed',
      );
    if (!wasLimited && ctx.authLimiter.blocked(client))
      ctx.log.warn(
        { client, maxFailures: ctx.authLimiter.maxFailures },
        'too many failed authentications from this address; its further failures are delayed and get 429 (valid tokens still pass)',
      );
    if (wasLimited) {
      await ctx.authLimiter.hold(client, delay);
      res.set('retry-after', String(ctx.authLimiter.retryAfter(client)));
      throw apiError('RATE_LIMITED');
    }
    res.set('www-authenticate', 'Bearer realm="restorelab"');
    throw apiError(
      'UNAUTHENTICATED',
      m
        ? 'the bearer token is not valid (revoked, mistyped or from another server)'
        : 'send Authorization: Bearer <token>; create one with: restorelab token create NAME --role viewer',
    );
  };
}

/** The sha256 CSP source of an inline style sheet. */
function styleHash(css: string): string {
  return `'sha256-${createHash('sha256').update(css, 'utf8').digest('base64')}'`;
}

/**
 * The dashboard's policy: its own files only (it has no inline script or
 * style). img-src allows blob: for the screenshots it fetches with the token
 * and data: for those inlined in a run report; the report is shown in a
 * srcdoc iframe, which inherits this policy, so its one inline sheet is
 * allowed by hash.
 */
export const DASHBOARD_CSP = [
  "default-src 'self'",
  "script-src 'self'",
  `style-src 'self' ${styleHash(REPORT_CSS)}`,
  "img-src 'self' data: blob:",
  "connect-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

/** The policy of /api/v1 responses: JSON, SSE and stored reports are never a page that may load or run anything. */
export const API_CSP = "default-src 'none'; frame-ancestors 'none'; sandbox";

/** Headers on every response: no framing (clickjacking), no MIME sniffing, no Referer with a URL leaving the server. */
function securityHeaders(_req: Request, res: Response, next: NextFunction): void {
  res.set({
    'content-security-policy': DASHBOARD_CSP,
    'x-frame-options': 'DENY',
    'x-content-type-options': 'nosniff',
    'referrer-policy': 'no-referrer',
  });
  next();
}

function requestLog(ctx: ApiContext) {
  return (req: Request, res: Response, next: NextFunction): void => {
    const start = process.hrtime.bigint();
    res.on('finish', () => {
      const ms = Number(process.hrtime.bigint() - start) / 1e6;
      const route = (req.route as { path?: string } | undefined)?.path;
      const who = (res.locals.principal as { name?: string } | undefined)?.name;
      ctx.metrics.httpRequests.inc({
        method: req.method,
        route: route ? `${req.baseUrl}${route}` : 'unmatched',
        status: String(res.statusCode),
      });
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
    if (error.status === 403)
      ctx.log.warn(
        { method: req.method, path: req.path, token: (res.locals.principal as { name?: string } | undefined)?.name },
        error.message,
      );
    if (internal) ctx.log.error({ err, method: req.method, path: req.path }, 'unhandled error');
    if (res.headersSent) {
      res.end();
      return;
    }
    res.status(error.status).json(errorBody(error));
  };
}

/**
 * An in-process API over a fresh state directory, with one token per role,
 * for supertest route tests. `home` holds the repository, state, catalog and
 * jobs directory; nothing outside it is touched.
 */
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { loadConfig, type ApiLimits, type Config } from '../../src/config/config.js';
import { createApiContext } from '../../src/api/server.js';
import { createApp } from '../../src/api/app.js';
import { AuthFailureLimiter } from '../../src/api/rate-limit.js';
import type { ApiContext } from '../../src/api/context.js';
import type express from 'express';
import type { RouteTable } from '../../src/api/route-table.js';

export interface TestApi {
  home: string;
  config: Config;
  ctx: ApiContext & { close(): Promise<void> };
  app: express.Express;
  table: RouteTable;
  /** Bearer headers per role. */
  auth: { viewer: string; operator: string; admin: string };
  /** Log lines the server wrote (JSON objects), to check what is logged. */
  logs: Array<Record<string, unknown>>;
  close(): Promise<void>;
}

export async function testApi(
  opts: { home?: string; env?: Record<string, string>; authLimiter?: AuthFailureLimiter; limits?: Partial<ApiLimits> } = {},
): Promise<TestApi> {
  const home = opts.home ?? mkdtempSync(join(tmpdir(), 'rl-api-'));
  const config = loadConfig({ env: { RESTORELAB_HOME: home, ...opts.env } });
  // The API's host-path limits (config `api`), e.g. a test's work directory as a backup source.
  Object.assign(config.api, opts.limits);
  const jobsDir = join(home, 'jobs');
  mkdirSync(jobsDir, { recursive: true });
  const logs: Array<Record<string, unknown>> = [];
  const log = pino(
    { level: 'debug' },
    {
      write: (line: string) => {
        logs.push(JSON.parse(line) as Record<string, unknown>);
      },
    },
  );
  const ctx = await createApiContext({ config, jobsDir, log, authLimiter: opts.authLimiter ?? new AuthFailureLimiter(1000) });
  const { app, table } = createApp(ctx);
  const bearer = async (role: 'viewer' | 'operator' | 'admin'): Promise<string> =>
    `Bearer ${(await ctx.tokens.create(`test-${role}`, role)).token}`;
  return {
    home,
    config,
    ctx,
    app,
    table,
    auth: { viewer: await bearer('viewer'), operator: await bearer('operator'), admin: await bearer('admin') },
    logs,
    close: async () => {
      await ctx.close();
      // A home this helper made is its own to remove; a given one belongs to the caller.
      if (!opts.home) rmSync(home, { recursive: true, force: true });
    },
  };
}

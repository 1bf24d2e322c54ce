/**
 * The lab workers as the dashboard shows them (docs/workers.md). A server on
 * a SQLite catalog has none: it answers `enabled: false` rather than an
 * error, so the dashboard can say how to get them.
 */
import pg from 'pg';
import type { RegisterRoutes } from './register.js';
import { WorkerRegistry } from '../../workers/registry.js';
import { workersUrl } from '../../workers/url.js';

export const workerRoutes: RegisterRoutes = (t, ctx) => {
  let url: string | undefined;
  try {
    url = workersUrl(ctx.config.catalog);
  } catch {
    url = undefined;
  }
  let registry: WorkerRegistry | undefined;
  if (url !== undefined) {
    // A small pool of its own: reading the registry must not wait behind the queue's polling.
    const pool = new pg.Pool({ connectionString: url, max: 2, application_name: 'restorelab-api' });
    pool.on('error', (err) => ctx.log.warn({ err }, 'workers registry connection failed'));
    registry = new WorkerRegistry((text, values) => pool.query(text, values ?? []));
    ctx.onClose(() => pool.end());
  }
  t.add({
    method: 'get',
    path: '/workers',
    role: 'viewer',
    tag: 'workers',
    summary: 'the lab workers: their slots, load, tasks and last heartbeat',
    handler: async () => {
      if (!registry)
        return {
          enabled: false,
          workers: [],
          hint: 'lab workers need a PostgreSQL queue: RESTORELAB_QUEUE=postgres://… (docs/workers.md)',
        };
      await registry.ensureSchema();
      return { enabled: true, workers: await registry.list() };
    },
  });
};

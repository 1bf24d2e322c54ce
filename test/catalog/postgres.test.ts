/**
 * The catalog contract suite (test/catalog/fixtures/catalog-suite.ts) on
 * PostgreSQL: the server scripts/services starts, a fresh database per test.
 */
import t from 'tap';
import { createServer } from 'node:net';
import { runCatalogSuite } from './fixtures/catalog-suite.js';
import { freshDatabase, postgresUrl } from '../helpers/pg.js';

/** A loopback port nothing listens on: bound, then released. */
async function closedPort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const { port } = srv.address() as { port: number };
  await new Promise((resolve) => srv.close(resolve));
  return port;
}

// Fails here, naming PostgreSQL, when the services are missing.
await postgresUrl();

runCatalogSuite(t, {
  fresh: (t) => freshDatabase(t),
  broken: async () => {
    const secret = 'pw-never-printed-4711';
    return {
      target: `postgres://restorelab:${secret}@127.0.0.1:${await closedPort()}/nowhere`,
      code: 'CATALOG_UNREACHABLE',
      names: /127\.0\.0\.1/,
      secret,
    };
  },
});

t.test('a wrong password is CATALOG_UNREACHABLE too, and the message keeps the password out', async (t) => {
  const u = new URL(await postgresUrl());
  u.password = 'certainly-wrong-pw-0815';
  const { connectCatalog } = await import('../../src/catalog/catalog.js');
  const err = (await connectCatalog(u.toString()).then(
    () => undefined,
    (e: unknown) => e,
  )) as { code?: string; message: string; hint?: string };
  t.equal(err?.code, 'CATALOG_UNREACHABLE');
  t.notOk(err.message.includes('certainly-wrong-pw-0815'));
  t.match(err.hint, /role and password/);
});

/** The catalog contract suite (test/catalog/fixtures/catalog-suite.ts) on the SQLite catalog, the one-host default. */
import t from 'tap';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { runCatalogSuite } from './fixtures/catalog-suite.js';

const work = await mkdtemp(join(tmpdir(), 'rl-catalog-sqlite-'));
t.teardown(() => rm(work, { recursive: true, force: true }));

runCatalogSuite(t, {
  fresh: async () => join(work, randomBytes(6).toString('hex'), 'catalog.sqlite'),
  broken: async () => {
    // A regular file where the catalog's directory should be.
    const file = join(work, 'not-a-dir');
    await writeFile(file, 'x');
    return { target: join(file, 'catalog.sqlite'), code: 'CATALOG_UNREADABLE', names: /not-a-dir\/catalog\.sqlite/ };
  },
});

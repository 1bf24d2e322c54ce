/**
 * The `restorelab scan` cases (fixtures/scan-cases.ts) on a PostgreSQL
 * catalog: the verdict cache, the file maps and the point statuses live
 * there (no SQLite catalog is made).
 */
import t from 'tap';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { freshDatabase } from '../helpers/pg.js';
import { runScanCases } from './fixtures/scan-cases.js';

const url = await freshDatabase(t);
const stateDir = await runScanCases(t, { RESTORELAB_CATALOG: url });
t.test('no SQLite catalog was made', async (t) => {
  t.notOk(existsSync(join(stateDir, 'catalog.sqlite')));
});

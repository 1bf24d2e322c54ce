/** The SureBackup history cases (fixtures/history-cases.ts) on the SQLite catalog. */
import t from 'tap';
import { join } from 'node:path';
import { runHistoryCases } from './fixtures/history-cases.js';

runHistoryCases(t, async (t) => join(t.testdir(), 'catalog.db'));

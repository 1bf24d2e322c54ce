/** The `restorelab scan` cases (fixtures/scan-cases.ts) on the default SQLite catalog. */
import t from 'tap';
import { runScanCases } from './fixtures/scan-cases.js';

await runScanCases(t, {});

/** The SureBackup history cases (fixtures/history-cases.ts) on PostgreSQL, a fresh database per case. */
import t from 'tap';
import { freshDatabase, postgresUrl } from '../helpers/pg.js';
import { runHistoryCases } from './fixtures/history-cases.js';

// Fails here, naming PostgreSQL, when the services are missing.
await postgresUrl();

runHistoryCases(t, (t) => freshDatabase(t));

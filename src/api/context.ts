/** What every route module gets from the server. */
import type { Logger } from 'pino';
import type { Config } from '../config/config.js';
import type { BackupJobHistory } from '../backup/jobs/history.js';
import type { History } from '../surebackup/history.js';
import type { Catalog } from '../catalog/sql.js';
import type { TokenStore } from './tokens.js';
import type { OperationRegistry } from './operations.js';
import type { Metrics } from './metrics.js';
import type { AuthFailureLimiter } from './rate-limit.js';
import type { PublicationDatastore } from '../datastore/publication-datastore.js';
import type { JobGate } from '../surebackup/gate.js';
import type { BackedUpVm, TriggerOutcome } from '../scheduler/scheduler.js';
import type { RunTrigger } from '../surebackup/history.js';
import type { BackupJobScheduler } from '../backup/jobs/scheduler.js';

export interface ApiContext {
  config: Config;
  /** The catalog (src/catalog/sql.ts), SQLite or PostgreSQL: every area the routes read and write. */
  sql: Catalog;
  /** Backup job history in `sql`, migrated. */
  backupJobHistory: BackupJobHistory;
  /** SureBackup job history in `sql`, migrated. */
  runs: History;
  tokens: TokenStore;
  operations: OperationRegistry;
  metrics: Metrics;
  log: Logger;
  authLimiter: AuthFailureLimiter;
  /** Directory of SureBackup job files (the jobs resource reads and writes here). */
  jobsDir: string;
  /**
   * The datastore the server's NFS export serves, when NFS is on: publications
   * made through the API are added to it so they are reachable over NFS.
   */
  datastore?: PublicationDatastore;
  /** Shared with the scheduler: one run of a job at a time, one VM limiter for every run. */
  jobGate: JobGate;
  /**
   * The server's scheduler, when it runs one: told to re-read the jobs
   * directory after a job changes, and of every backup that succeeded (it
   * triggers the afterBackup jobs covering the VM).
   */
  scheduler?: {
    reload(): void;
    notifyBackup(vms: readonly BackedUpVm[]): Promise<TriggerOutcome[]>;
    trigger(name: string, trigger: RunTrigger): Promise<TriggerOutcome>;
  };
  /** Directory of backup job files (src/backup/jobs). */
  backupJobsDir: string;
  /**
   * The server's backup job scheduler, through which every backup job run
   * starts (no overlap of one job); the API's own, unarmed, when the server
   * runs no schedules.
   */
  backupJobs: Pick<BackupJobScheduler, 'trigger' | 'isRunning'>;
  /** Registers cleanup for server shutdown, run last-registered first. */
  onClose(fn: () => Promise<void> | void): void;
}

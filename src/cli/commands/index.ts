/** Every capability's CLI module, in help order. Add one line per module. */
// Each module imports its implementation inside its actions: top-level imports made every CLI call load every capability (startup time).
import type { RegisterCommand } from '../context.js';
import { registerDoctor } from './doctor.js';
import { registerDemo } from './demo.js';
import { registerConfig } from './config.js';
import { registerLab } from './lab.js';
import { registerSurebackup } from './surebackup.js';
import { registerRecover } from './recover.js';
import { registerSessions } from './sessions.js';
import { registerStop } from './stop.js';
import { registerMigrate } from './migrate.js';
import { registerRepo } from './repo.js';
import { registerBackup } from './backup.js';
import { registerBackupJob } from './backup-job.js';
import { registerPoints } from './points.js';
import { registerRestore } from './restore.js';
import { registerVerify } from './verify.js';
import { registerPrune } from './prune.js';
import { registerGc } from './gc.js';
import { registerMount } from './mount.js';
import { registerFiles } from './files.js';
import { registerUmount } from './umount.js';
import { registerScan } from './scan.js';
import { registerPublish } from './publish.js';
import { registerUnpublish } from './unpublish.js';
import { registerPublications } from './publications.js';
import { registerServer } from './server.js';
import { registerToken } from './token.js';
import { registerCleanup } from './cleanup.js';
import { registerWorker } from './worker.js';

export const commands: RegisterCommand[] = [
  registerDemo,
  registerDoctor,
  registerConfig,
  registerLab,
  registerSurebackup,
  registerRecover,
  registerSessions,
  registerStop,
  registerMigrate,
  registerRepo,
  registerBackup,
  registerBackupJob,
  registerPoints,
  registerRestore,
  registerVerify,
  registerPrune,
  registerGc,
  registerMount,
  registerFiles,
  registerUmount,
  registerScan,
  registerPublish,
  registerUnpublish,
  registerPublications,
  registerServer,
  registerToken,
  registerCleanup,
  registerWorker,
];

/** Every route module, one line each (like the CLI's commands/index.ts). */
import type { RegisterRoutes } from './register.js';
import { systemRoutes } from './system.js';
import { publicationRoutes } from './publications.js';
import { sessionRoutes } from './sessions.js';
import { labRoutes } from './labs.js';
import { jobRoutes } from './jobs.js';
import { runRoutes } from './runs.js';
import { repositoryRoutes } from './repositories.js';
import { pointRoutes } from './points.js';
import { backupRoutes } from './backups.js';
import { backupJobRoutes } from './backup-jobs.js';
import { fileRestoreRoutes } from './file-restore.js';
import { stateRoutes } from './state.js';
import { workerRoutes } from './workers.js';

export const routeModules: RegisterRoutes[] = [
  systemRoutes,
  publicationRoutes,
  sessionRoutes,
  labRoutes,
  jobRoutes,
  runRoutes,
  repositoryRoutes,
  pointRoutes,
  backupRoutes,
  backupJobRoutes,
  fileRestoreRoutes,
  stateRoutes,
  workerRoutes,
];

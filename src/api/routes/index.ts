/** Every route module, one line each (like the CLI's commands/index.ts). */
import type { RouteTable } from '../route-table.js';
import type { ApiContext } from '../context.js';
import { systemRoutes } from './system.js';
import { repositoryRoutes } from './repositories.js';
import { pointRoutes } from './points.js';
import { backupRoutes } from './backups.js';
import { fileRestoreRoutes } from './file-restore.js';

export type RegisterRoutes = (table: RouteTable, ctx: ApiContext) => void;

export const routeModules: RegisterRoutes[] = [
  systemRoutes,
  repositoryRoutes,
  pointRoutes,
  backupRoutes,
  fileRestoreRoutes,
];

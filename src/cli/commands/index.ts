/** Every capability's CLI module, in help order. Add one line per module. */
import type { RegisterCommand } from '../context.js';
import { registerDoctor } from './doctor.js';
import { registerDemo } from './demo.js';
import { registerConfig } from './config.js';
import { registerLab } from './lab.js';
import { registerSurebackup } from './surebackup.js';

export const commands: RegisterCommand[] = [
  registerDemo,
  registerDoctor,
  registerConfig,
  registerLab,
  registerSurebackup,
];

/**
 * Every capability's CLI module, in help order. Add one line per module,
 * with the top-level command names it registers (test/cli/commands-index.test.ts
 * checks them against what the module registers).
 *
 * Modules are loaded on demand: a call that names one command loads only
 * that command's module (commandsFor), and each module imports its
 * implementation inside its actions. Loading every module cost every call,
 * a backup's included, about 50 ms of start-up; help and unknown commands
 * still load them all, so the help and the suggestions stay the same.
 */
import type { RegisterCommand } from '../context.js';

export interface CommandModule {
  /** The top-level commands it registers. */
  names: readonly string[];
  load(): Promise<RegisterCommand>;
}

export const commandModules: readonly CommandModule[] = [
  { names: ['demo'], load: async () => (await import('./demo.js')).registerDemo },
  { names: ['doctor'], load: async () => (await import('./doctor.js')).registerDoctor },
  { names: ['config'], load: async () => (await import('./config.js')).registerConfig },
  { names: ['lab'], load: async () => (await import('./lab.js')).registerLab },
  { names: ['surebackup'], load: async () => (await import('./surebackup.js')).registerSurebackup },
  { names: ['recover', 'publisher-serve', 'session-supervise'], load: async () => (await import('./recover.js')).registerRecover },
  { names: ['sessions'], load: async () => (await import('./sessions.js')).registerSessions },
  { names: ['stop'], load: async () => (await import('./stop.js')).registerStop },
  { names: ['migrate'], load: async () => (await import('./migrate.js')).registerMigrate },
  { names: ['repo'], load: async () => (await import('./repo.js')).registerRepo },
  { names: ['backup'], load: async () => (await import('./backup.js')).registerBackup },
  { names: ['backup-job'], load: async () => (await import('./backup-job.js')).registerBackupJob },
  { names: ['points'], load: async () => (await import('./points.js')).registerPoints },
  { names: ['restore'], load: async () => (await import('./restore.js')).registerRestore },
  { names: ['verify'], load: async () => (await import('./verify.js')).registerVerify },
  { names: ['prune'], load: async () => (await import('./prune.js')).registerPrune },
  { names: ['gc'], load: async () => (await import('./gc.js')).registerGc },
  { names: ['mount'], load: async () => (await import('./mount.js')).registerMount },
  { names: ['files'], load: async () => (await import('./files.js')).registerFiles },
  { names: ['umount'], load: async () => (await import('./umount.js')).registerUmount },
  { names: ['scan'], load: async () => (await import('./scan.js')).registerScan },
  { names: ['publish'], load: async () => (await import('./publish.js')).registerPublish },
  { names: ['unpublish'], load: async () => (await import('./unpublish.js')).registerUnpublish },
  { names: ['publications'], load: async () => (await import('./publications.js')).registerPublications },
  { names: ['server'], load: async () => (await import('./server.js')).registerServer },
  { names: ['token'], load: async () => (await import('./token.js')).registerToken },
  { names: ['cleanup'], load: async () => (await import('./cleanup.js')).registerCleanup },
  { names: ['worker', 'workers'], load: async () => (await import('./worker.js')).registerWorker },
];

/** Global options that take a value (main.ts): their value is not the command's name. */
const GLOBAL_WITH_VALUE = new Set(['--config', '--server', '--token']);

/**
 * The register functions a call needs, in help order: only the named
 * command's module when argv names a known one, else every module (help,
 * a mistyped command that commander suggests a fix for).
 */
export async function commandsFor(argv: readonly string[]): Promise<RegisterCommand[]> {
  const name = commandName(argv);
  const one = name === undefined ? undefined : commandModules.find((m) => m.names.includes(name));
  return Promise.all((one ? [one] : commandModules).map((m) => m.load()));
}

/** The first argument that is not an option (nor an option's value), after node and the script. */
function commandName(argv: readonly string[]): string | undefined {
  for (let i = 2; i < argv.length; i++) {
    const a = argv[i] as string;
    if (GLOBAL_WITH_VALUE.has(a)) i++;
    else if (!a.startsWith('-')) return a;
  }
  return undefined;
}

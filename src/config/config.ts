/**
 * The effective configuration: config/default.json, then an optional user file
 * (RESTORELAB_CONFIG or --config), then environment overrides. Relative paths
 * are resolved against RESTORELAB_HOME (default: the current directory).
 */
import { resolve, isAbsolute } from 'node:path';
import { readFileSync } from 'node:fs';
import { assertValid, readJsonFile } from '../schema/validate.js';
import { badInput } from '../errors.js';
import { projectPath } from '../paths.js';
import type { WireLimits } from '../nfs/limits.js';
import type { SyncLevel } from '../repo/api.js';

export interface Limits {
  chunkCacheMiB: number;
  /** On-disk cache of chunk blobs fetched from an s3:// repository, per repository (<stateDir>/chunk-cache/<repo id>). */
  objectCacheMiB: number;
  overlayLimitMiB: number;
  maxConcurrentVms: number;
  memoryBudgetMiB: number;
}

export interface NfsConfig {
  port: number;
  mountPort: number;
  portmapPort: number;
  allow: string[];
  readOnly: boolean;
  /** Addresses NFS, MOUNT and the portmapper listen on (default ["127.0.0.1"]: this host only). */
  listen: string[];
  /** Map AUTH_SYS uid/gid 0 to 65534 (default true; ESXi needs false). */
  rootSquash: boolean;
  /** Hostile-client budget; unset fields take the defaults of src/nfs/limits.ts (docs/nfs.md "Limits"). */
  limits?: Partial<NfsWireLimits>;
}

/** The NFS listeners' hostile-client budget, documented field by field where it is enforced. */
export type NfsWireLimits = WireLimits;

/** Who besides the publishing user may use FUSE publications (docs/publish.md). */
export interface FuseConfig {
  /** Group name or gid given the owner's rights, e.g. the group libvirt runs QEMU as. */
  group?: string;
}

export interface ServerConfig {
  listen: string;
  port: number;
  tlsCert?: string;
  tlsKey?: string;
}

/**
 * What API clients, and the jobs the server runs, may reach on the host
 * (docs/security.md, "API roles and the host"). Paths are absolute after loading (relative ones are
 * resolved against stateDir).
 */
export interface ApiLimits {
  /** Directories an API backup may read images from. */
  sourceRoots: string[];
  /** Directories an API restore, or a session's live migration, may write disks into. */
  restoreRoots: string[];
  /** Directories below which an API publication may mount FUSE. */
  mountRoots: string[];
  /** Directories an API admin may create repositories in (besides the configured repository itself). */
  repositoryRoots: string[];
  /** The only directory whose executables script tests of server-run jobs may start. */
  scriptsDir: string;
  /** The local user those scripts run as. */
  scriptUser: string;
  /** Upper bound on a script test's timeout in server-run jobs. */
  scriptMaxSeconds: number;
}

export interface Config {
  repository: string;
  /** Key file of the configured repository when it is encrypted (absent: it is not). */
  repositoryKeyFile?: string;
  /**
   * How this host's backups make new chunks durable, in every repository it
   * writes (SyncLevel, docs/backup.md "Sync levels"); absent: `filesystem`.
   */
  repositorySyncLevel?: SyncLevel;
  stateDir: string;
  /** The catalog: a SQLite file (absolute after loading), or a postgres:// URL (RESTORELAB_CATALOG). */
  catalog: string;
  driver: 'qemu' | 'libvirt';
  accel: 'auto' | 'kvm' | 'tcg';
  guestsDir: string;
  /** Backup job files (absolute after loading); absent: lab-templates/backup-jobs (src/backup/jobs/job.ts). */
  backupJobsDir?: string;
  limits: Limits;
  nfs: NfsConfig;
  fuse: FuseConfig;
  server: ServerConfig;
  api: ApiLimits;
}

/** Environment variables that override single settings (documented in docs/operations.md). */
export const ENV_OVERRIDES: Record<string, { path: string[]; parse: (v: string) => unknown }> = {
  RESTORELAB_REPO: { path: ['repository'], parse: (v) => v },
  RESTORELAB_KEY_FILE: { path: ['repositoryKeyFile'], parse: (v) => v },
  RESTORELAB_SYNC_LEVEL: { path: ['repositorySyncLevel'], parse: (v) => v },
  RESTORELAB_STATE_DIR: { path: ['stateDir'], parse: (v) => v },
  RESTORELAB_CATALOG: { path: ['catalog'], parse: (v) => v },
  RESTORELAB_DRIVER: { path: ['driver'], parse: (v) => v },
  RESTORELAB_ACCEL: { path: ['accel'], parse: (v) => v },
  RESTORELAB_GUESTS_DIR: { path: ['guestsDir'], parse: (v) => v },
  RESTORELAB_BACKUP_JOBS_DIR: { path: ['backupJobsDir'], parse: (v) => v },
  RESTORELAB_CHUNK_CACHE_MIB: { path: ['limits', 'chunkCacheMiB'], parse: Number },
  RESTORELAB_NFS_PORT: { path: ['nfs', 'port'], parse: Number },
  RESTORELAB_FUSE_GROUP: { path: ['fuse', 'group'], parse: (v) => v },
};

/** The host's sync level as options for openRepository/initRepository: every writer of a repository passes it. */
export function syncLevelOption(cfg: Pick<Config, 'repositorySyncLevel'>): { syncLevel?: SyncLevel } {
  return cfg.repositorySyncLevel === undefined ? {} : { syncLevel: cfg.repositorySyncLevel };
}

type Json = Record<string, unknown>;

function merge(base: Json, over: Json): Json {
  const out: Json = { ...base };
  for (const [k, v] of Object.entries(over)) {
    const b = out[k];
    out[k] =
      v && typeof v === 'object' && !Array.isArray(v) && b && typeof b === 'object' && !Array.isArray(b) ? merge(b as Json, v as Json) : v;
  }
  return out;
}

function setPath(obj: Json, path: string[], value: unknown): void {
  let cur = obj;
  for (const key of path.slice(0, -1)) {
    if (typeof cur[key] !== 'object' || cur[key] === null) cur[key] = {};
    cur = cur[key] as Json;
  }
  cur[path[path.length - 1] as string] = value;
}

export interface LoadOptions {
  file?: string;
  env?: NodeJS.ProcessEnv;
}

export function loadConfig(opts: LoadOptions = {}): Config {
  const env = opts.env ?? process.env;
  const defaults = JSON.parse(readFileSync(projectPath('config', 'default.json'), 'utf8')) as Json;
  let merged = defaults;
  const file = opts.file ?? env.RESTORELAB_CONFIG;
  if (file) {
    const user = readJsonFile(file, 'config file');
    if (typeof user !== 'object' || user === null || Array.isArray(user)) {
      throw badInput('SCHEMA_INVALID', `config file ${file} must hold a JSON object`, 'wrap the settings in { ... }');
    }
    merged = merge(defaults, user as Json);
  }
  for (const [name, o] of Object.entries(ENV_OVERRIDES)) {
    const v = env[name];
    if (v !== undefined && v !== '') setPath(merged, o.path, o.parse(v));
  }
  const cfg = assertValid<Config>(
    'config.schema.json',
    merged,
    file ? `config (${file} + environment)` : 'config (defaults + environment)',
  );
  const home = env.RESTORELAB_HOME ?? process.cwd();
  const abs = (p: string): string => (isAbsolute(p) ? p : resolve(home, p));
  // An object-storage repository (s3://BUCKET/PREFIX) is a URL, not a path under RESTORELAB_HOME.
  if (!cfg.repository.startsWith('s3://')) cfg.repository = abs(cfg.repository);
  if (cfg.repositoryKeyFile !== undefined) cfg.repositoryKeyFile = abs(cfg.repositoryKeyFile);
  cfg.stateDir = abs(cfg.stateDir);
  cfg.guestsDir = abs(cfg.guestsDir);
  if (cfg.backupJobsDir !== undefined) cfg.backupJobsDir = abs(cfg.backupJobsDir);
  // A postgres:// URL names a server, not a file: it is kept as it is (src/catalog/sql.ts isPostgresTarget).
  if (!/^postgres(ql)?:\/\//i.test(cfg.catalog)) cfg.catalog = isAbsolute(cfg.catalog) ? cfg.catalog : resolve(cfg.stateDir, cfg.catalog);
  const inState = (p: string): string => (isAbsolute(p) ? p : resolve(cfg.stateDir, p));
  cfg.api.sourceRoots = cfg.api.sourceRoots.map(inState);
  cfg.api.restoreRoots = cfg.api.restoreRoots.map(inState);
  cfg.api.mountRoots = cfg.api.mountRoots.map(inState);
  // An s3:// root (where POST /repositories may create object-storage repositories) is no path.
  cfg.api.repositoryRoots = cfg.api.repositoryRoots.map((p) => (p.startsWith('s3://') ? p : inState(p)));
  cfg.api.scriptsDir = inState(cfg.api.scriptsDir);
  return cfg;
}

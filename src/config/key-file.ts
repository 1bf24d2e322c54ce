/**
 * Which key file opens an encrypted repository: the one place every CLI
 * command, the scheduler, the session supervisor, the publication holders and
 * the API ask.
 *
 * Order: --key-file, then RESTORELAB_KEY_FILE, then `repositoryKeyFile` of
 * the config file (loadConfig already lets the environment variable override
 * the file). The key is tried on whichever repository is opened, configured
 * or named with --repo: the key check in config.json proves it fits before
 * anything is decrypted or written, and the check value is an HMAC under a
 * sub-key salted by that repository's id, so trying a key discloses nothing.
 * Only the path travels (argv of a child process carries no key, and the
 * path is made absolute so a child in another directory finds the same file).
 */
import { resolve } from 'node:path';
import type { Config } from './config.js';

export function resolveKeyFile(flag: string | undefined, cfg: Pick<Config, 'repositoryKeyFile'>): string | undefined {
  const path = flag !== undefined && flag !== '' ? flag : cfg.repositoryKeyFile;
  return path === undefined ? undefined : resolve(path);
}

/** As `{ keyFile }` for spreading into options, or nothing when no key file is known. */
export function keyFileOption(flag: string | undefined, cfg: Pick<Config, 'repositoryKeyFile'>): { keyFile?: string } {
  const keyFile = resolveKeyFile(flag, cfg);
  return keyFile === undefined ? {} : { keyFile };
}

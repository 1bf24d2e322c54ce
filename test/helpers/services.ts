/**
 * The scale-out services for tests: a Ceph RADOS Gateway (S3) and
 * PostgreSQL 15 on loopback, started by `scripts/services up --json`.
 *
 * `up` is idempotent: when the `services` pool's setup (test/pools.json) has
 * already started them it only checks that they answer and prints the same
 * credentials (about a second); a file run alone starts them itself (about
 * 40 s from nothing). The pool's teardown stops them, so a test never calls
 * `down`: other files share the same daemons.
 *
 * Each test that writes to the bucket or the database keeps to its own key
 * prefix or its own database (the role may create databases), so files in
 * the pool do not see each other's data.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { projectPath } from '../../src/paths.js';

export interface Services {
  s3: { endpoint: string; accessKeyId: string; secretAccessKey: string; bucket: string };
  postgres: { url: string };
}

export const SERVICES_SCRIPT = projectPath('scripts', 'services');

/** Starts (or finds up) the services and returns their endpoints and credentials; throws with the script's error. */
export async function services(): Promise<Services> {
  let stdout: string;
  try {
    ({ stdout } = await promisify(execFile)(SERVICES_SCRIPT, ['up', '--json'], { encoding: 'utf8', timeout: 600_000 }));
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    throw new Error(`scripts/services up failed: ${(err.stderr ?? '').trim() || err.message}`, { cause: e });
  }
  return JSON.parse(stdout) as Services;
}

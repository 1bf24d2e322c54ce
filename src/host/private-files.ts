/**
 * Files and directories only their owner may read: the catalog (it holds the
 * API token hashes and every restore point's manifest), key files, the state
 * directory and a repository (an unencrypted chunk is a piece of a VM disk).
 * New ones are created with these modes; existing ones are tightened when
 * opened, so an installation made before this rule heals itself.
 */
import { chmodSync, mkdirSync, statSync } from 'node:fs';

export const PRIVATE_FILE_MODE = 0o600;
export const PRIVATE_DIR_MODE = 0o700;

/**
 * Takes group and other permissions off `path` when it exists, is ours and
 * has any; the owner's own bits stay as they are. Best effort: a file we do
 * not own is left alone (its owner decides), and so is a missing one.
 */
export function tightenMode(path: string): void {
  let st;
  try {
    st = statSync(path);
  } catch {
    return;
  }
  if ((st.mode & 0o077) === 0 || (process.getuid && st.uid !== process.getuid())) return;
  try {
    chmodSync(path, st.mode & 0o7700);
  } catch {
    // Not ours after all, or a read-only file system: nothing better to do here.
  }
}

/** mkdir -p with owner-only modes for what it creates, and `dir` itself tightened when it exists. */
export function ensurePrivateDir(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: PRIVATE_DIR_MODE });
  tightenMode(dir);
}

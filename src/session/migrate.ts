/**
 * Live storage migration of a running session: every disk is mirrored to a
 * file in the target directory while the guest runs, then the domain
 * pivots onto the copies and the publication is closed (its overlay
 * discarded): from then on the VM no longer depends on the repository.
 *
 * QEMU's mirror job (blockdev-mirror, sync=full, or libvirt's block copy
 * which is the same job) copies the disk and, until it completes, also
 * writes every guest write to the target; BLOCK_JOB_READY means the copy has
 * converged, and completing the job switches atomically. So no write made
 * during the mirror can be lost.
 */
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { RestorelabError, badInput } from '../errors.js';
import type { LiveSession } from './runner.js';
import { assertFreeSpace } from './runner.js';
import type { SessionStore } from './store.js';

export function migrationTargets(vm: string, disks: string[], dir: string, format: 'raw' | 'qcow2'): Record<string, string> {
  return Object.fromEntries(disks.map((d) => [d, join(resolve(dir), `${vm}-${d}.${format}`)]));
}

/** The checks `migrate` makes before asking the supervisor (and again inside it). */
export function checkMigration(s: LiveSession['session'], dir: string, format: 'raw' | 'qcow2'): Record<string, string> {
  if (format !== 'raw' && format !== 'qcow2')
    throw badInput('BAD_FORMAT', `unknown disk format ${String(format)}`, 'use --format raw or --format qcow2');
  if (s.state !== 'running') {
    throw badInput(
      'SESSION_NOT_RUNNING',
      `session ${s.id} is ${s.state}; only a running session can be migrated`,
      s.state === 'migrated' ? `it already runs on ${s.migratedTo}` : 'recover the VM again',
    );
  }
  mkdirSync(dir, { recursive: true });
  const targets = migrationTargets(s.vm, Object.keys(s.disks), dir, format);
  for (const t of Object.values(targets)) {
    if (existsSync(t))
      throw badInput('MIGRATE_TARGET_EXISTS', `migrate target ${t} already exists`, 'remove it or pick another --to directory');
  }
  assertFreeSpace(
    dir,
    Object.values(s.diskBytes).reduce((a, b) => a + b, 0),
  );
  return targets;
}

export async function migrateLive(live: LiveSession, store: SessionStore, dir: string, format: 'raw' | 'qcow2'): Promise<void> {
  const s = live.session;
  const targets = checkMigration(s, dir, format);
  s.state = 'migrating';
  store.save(s);
  const started: string[] = [];
  try {
    for (const [disk, target] of Object.entries(targets)) {
      started.push(disk);
      await live.domain.blockMirror(disk, target, format);
    }
    for (const disk of Object.keys(targets)) await live.domain.pivot(disk);
  } catch (e) {
    // Best effort: a half-done mirror is cancelled so the VM stays on its source.
    for (const disk of started) await live.domain.abortMirror(disk);
    for (const t of Object.values(targets)) rmSync(t, { force: true });
    s.state = 'running';
    store.save(s);
    throw new RestorelabError('MIGRATE_FAILED', `migration of session ${s.id} failed: ${(e as Error).message}`, {
      hint: 'the VM keeps running from the backup; check the target directory and try again',
      cause: e,
    });
  }
  // Converged and pivoted: the published files are no longer in use.
  s.disks = targets;
  s.resources.migratedDisks = targets;
  s.migratedTo = resolve(dir);
  s.state = 'migrated';
  store.save(s);
  if (live.publication) {
    await live.publication.close({ discard: true });
    delete live.publication;
  }
  delete s.resources.publication;
  store.save(s);
}

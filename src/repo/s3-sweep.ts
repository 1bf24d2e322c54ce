/**
 * Sweep markers: how deletes on object storage stay safe beside writers on
 * other hosts. A sweep (gc, a failed backup's roll-back) deletes an object
 * with a HEAD (still older than the cutoff?) then a DELETE; S3 has no rename
 * to close the window between the two, so a writer's touch() landing inside
 * it is lost, and the object with it. Instead of closing the window, the
 * sweeper announces itself and the writer checks before it commits:
 *
 *   <prefix>gc/<host>-<pid>-<8 hex>.sweep
 *     {"purpose","hostname","pid","state":"sweeping"|"done","batch",at,"leaseMs"}
 *
 * - The sweeper PUTs its marker (`sweeping`) before its first HEAD, re-PUTs
 *   it with the next `batch` at a *checkpoint* (between two deletes, at most
 *   every SWEEP_CHECKPOINT_MS), and PUTs `done` after its last DELETE. Its
 *   deletes run one after the other, so when the marker's ETag changes,
 *   every HEAD-then-DELETE begun before has finished.
 * - A writer takes a *view* (each marker's ETag, and whether it sweeps) once
 *   its shared lock is held, before its first touch. Before it commits, it
 *   looks again: a marker that is new, changed, or still sweeping means a
 *   DELETE may have come after one of its touches. It then waits until every
 *   marker that sweeps now has moved (so no HEAD from before its last touch
 *   is still waiting for its DELETE), and checks that everything its point
 *   references is still there (repository.ts, commitPoint).
 * - A marker not re-PUT for its `leaseMs` belongs to a sweeper that died or
 *   hangs: it counts as ended (the same assumption as the lock leases).
 *   gc removes markers that ended before its cutoff: a writer that was live
 *   when a marker ended has `since` after the marker's Last-Modified, so the
 *   cutoff keeps it as long as that writer may still look for it.
 *
 * Only ETags and the order of requests are compared (S3 is strongly
 * consistent, AWS and RGW alike); no client clock enters, and marker ages
 * are measured in the gateway's clock as lock ages are (s3-lock.ts).
 */
import type { S3Client } from '@aws-sdk/client-s3';
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Sweep, SweepView } from './api.js';
import { RestorelabError } from '../errors.js';
import { SWEEP_SUFFIX, SWEEPS_DIR } from './format.js';
import { s3Url, type S3Location, s3Sdk } from './s3-config.js';
import { listAged, S3_LOCK_LEASE_MS, type AgedObject } from './s3-lock.js';

/** How often a sweeper re-PUTs its marker while it deletes: what a committing writer waits for, at most. */
export const SWEEP_CHECKPOINT_MS = 1000;
/** How often a waiting writer lists the markers again. */
const SWEEP_POLL_MS = 100;

export interface S3SweepOptions extends S3Location {
  client: S3Client;
  /** How long a marker outlives a sweeper that stopped writing it; default S3_LOCK_LEASE_MS (tests shorten it). */
  leaseMs?: number;
}

export interface SweepMarkerBody {
  purpose: string;
  hostname: string;
  pid: number;
  state: 'sweeping' | 'done';
  /** Checkpoints so far: every write changes the body, hence the ETag. */
  batch: number;
  /** Epoch ms of this write (the sweeper's clock), for people reading the marker. */
  at: number;
  leaseMs: number;
}

interface ListedMarker extends AgedObject {
  body: SweepMarkerBody | undefined;
}

function sweepsPrefix(o: S3Location): string {
  return `${o.prefix}${SWEEPS_DIR}/`;
}

async function readMarker(o: S3SweepOptions, name: string): Promise<SweepMarkerBody | undefined> {
  try {
    const r = await o.client.send(new (s3Sdk().GetObjectCommand)({ Bucket: o.bucket, Key: sweepsPrefix(o) + name }));
    return JSON.parse((await r.Body?.transformToString()) ?? '') as SweepMarkerBody;
  } catch {
    // Gone since the listing, or damaged by hand: sweeping until its lease runs out, the safe side.
    return undefined;
  }
}

async function listMarkers(o: S3SweepOptions): Promise<ListedMarker[]> {
  const listed = (await listAged(o.client, o.bucket, sweepsPrefix(o))).filter((m) => m.name.endsWith(SWEEP_SUFFIX));
  return Promise.all(listed.map(async (m) => ({ ...m, body: await readMarker(o, m.name) })));
}

/** Whether the marker's sweeper may still be deleting: it says so, and it wrote the marker within its lease. */
function sweeping(o: S3SweepOptions, m: ListedMarker): boolean {
  if (m.body?.state === 'done') return false;
  const lease = typeof m.body?.leaseMs === 'number' && m.body.leaseMs > 0 ? m.body.leaseMs : (o.leaseMs ?? S3_LOCK_LEASE_MS);
  return m.ageMs <= lease;
}

/** The writer's view: taken once its lock is held, before its first touch. */
export async function takeSweepView(o: S3SweepOptions): Promise<SweepView> {
  const markers = new Map<string, { etag: string; sweeping: boolean }>();
  for (const m of await listMarkers(o)) markers.set(m.name, { etag: m.etag, sweeping: sweeping(o, m) });
  return { markers };
}

/**
 * Whether a sweep may have deleted something since `view` was taken; when
 * it returns, no DELETE whose HEAD came before this call is still to come.
 * Rejects with REPO_BUSY if a sweeper keeps its marker fresh yet never moves
 * it for twice its lease (a broken clock; a hung sweeper's marker ages out).
 */
export async function sweptSince(o: S3SweepOptions, view: SweepView): Promise<boolean> {
  const now = await listMarkers(o);
  let swept = false;
  const names = new Set(now.map((m) => m.name));
  // A marker that ended and was removed since: its sweep may have deleted after our touches.
  for (const [name, seen] of view.markers) if (seen.sweeping && !names.has(name)) swept = true;
  const waitFor = new Map<string, string>();
  for (const m of now) {
    const seen = view.markers.get(m.name);
    // New, moved, or sweeping when the writer started (it may have deleted since, even if it died after).
    if (!seen || seen.etag !== m.etag || seen.sweeping) swept = true;
    if (sweeping(o, m)) {
      swept = true;
      waitFor.set(m.name, m.etag);
    }
  }
  const deadline = Date.now() + 2 * (o.leaseMs ?? S3_LOCK_LEASE_MS);
  while (waitFor.size > 0) {
    if (Date.now() > deadline) {
      throw new RestorelabError(
        'REPO_BUSY',
        `repository ${s3Url(o)}: the sweep of ${[...waitFor.keys()].join(', ')} has not moved for ${Math.round((2 * (o.leaseMs ?? S3_LOCK_LEASE_MS)) / 1000)} s`,
        { hint: `look at ${sweepsPrefix(o)} in the bucket; run the backup again once that gc has finished` },
      );
    }
    await sleep(SWEEP_POLL_MS);
    const again = new Map((await listMarkers(o)).map((m) => [m.name, m]));
    for (const [name, etag] of waitFor) {
      const m = again.get(name);
      if (!m || m.etag !== etag || !sweeping(o, m)) waitFor.delete(name);
    }
  }
  return swept;
}

/**
 * Announces a sweep: the marker is written before this returns, so before
 * the sweeper's first HEAD. With `tidyBeforeMs` (gc's cutoff), markers of
 * sweeps that ended before it are removed (removeEndedSweeps).
 */
export async function beginS3Sweep(o: S3SweepOptions, purpose: string, tidyBeforeMs?: number): Promise<Sweep> {
  const leaseMs = o.leaseMs ?? S3_LOCK_LEASE_MS;
  const key = `${sweepsPrefix(o)}${hostname()}-${process.pid}-${randomBytes(4).toString('hex')}${SWEEP_SUFFIX}`;
  // Often enough that a live sweeper's marker never looks dead: three writes per lease at least.
  const every = Math.min(SWEEP_CHECKPOINT_MS, Math.floor(leaseMs / 3));
  let batch = 0;
  // When the last marker write that succeeded began: its Last-Modified is no earlier, so the lease runs from here at the latest.
  let last = 0;
  const put = async (state: SweepMarkerBody['state']): Promise<void> => {
    const started = Date.now();
    const body: SweepMarkerBody = { purpose, hostname: hostname(), pid: process.pid, state, batch, at: started, leaseMs };
    await o.client.send(new (s3Sdk().PutObjectCommand)({ Bucket: o.bucket, Key: key, Body: JSON.stringify(body) + '\n' }));
    last = started;
  };
  await put('sweeping');
  if (tidyBeforeMs !== undefined) await removeEndedSweeps(o, tidyBeforeMs);
  let ended = false;
  return {
    async checkpoint() {
      if (ended || Date.now() - last < every) return;
      batch++;
      await put('sweeping');
    },
    assertLive() {
      const age = Date.now() - last;
      // A third of the lease is left for the delete to reach the gateway and for clock steps.
      if (!ended && age > (leaseMs * 2) / 3)
        throw new RestorelabError(
          'GC_SWEEP_EXPIRED',
          `gc stopped before a delete: its sweep marker ${key} was last written ${Math.round(age / 1000)} s ago, past two thirds of its ${Math.round(leaseMs / 1000)} s lease (the process was paused)`,
          { hint: 'nothing is lost: what it kept stays until the next gc; run restorelab gc again' },
        );
    },
    async end() {
      if (ended) return;
      ended = true;
      batch++;
      await put('done');
    },
  };
}

/**
 * gc's tidy-up: markers that ended (done, or dead past their lease) and
 * were last written before `cutoffMs` (the cutoff of gc, which no live
 * writer's `since` precedes). Returns how many were removed.
 */
export async function removeEndedSweeps(o: S3SweepOptions, cutoffMs: number): Promise<number> {
  let removed = 0;
  for (const m of await listMarkers(o)) {
    if (sweeping(o, m) || m.lastModifiedMs >= cutoffMs) continue;
    // A DELETE of a key that is gone succeeds: another gc's tidy-up racing this one is no error.
    await o.client.send(new (s3Sdk().DeleteObjectCommand)({ Bucket: o.bucket, Key: sweepsPrefix(o) + m.name }));
    removed++;
  }
  return removed;
}

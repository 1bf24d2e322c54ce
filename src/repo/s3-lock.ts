/**
 * Repository locks on object storage: one small JSON object per holder,
 * `<prefix>locks/<kind>-<host>-<pid>-<8 hex>.lock`, with the same conflict
 * rules and the same take-then-look protocol as the local lock files
 * (lock.ts): PUT ours, list the others, delete ours and report the holder
 * on a conflict. S3 lists what was written before (strong read-after-write
 * consistency, AWS and RGW alike), so two takers may both back off but
 * never both succeed.
 *
 * *Lease*: a holder on another host cannot be probed for its pid, so every
 * lock object carries a lease (`leaseMs`) and its holder re-PUTs it every
 * leaseMs / 3 while it holds the lock. A lock whose Last-Modified is more
 * than its lease old is stale: reported in `staleRemoved` and deleted. Ages
 * are measured in the gateway's clock only: the Last-Modified of the others
 * against the Date of the listing response, so no client clock enters.
 * A holder on this host whose process is gone is stale at once (isStale).
 */
import type { S3Client } from '@aws-sdk/client-s3';
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import type { LockHolder, LockKind, RepoLock } from './api.js';
import { RestorelabError } from '../errors.js';
import { LOCK_SUFFIX, LOCKS_DIR } from './format.js';
import { bootId, conflicts, describe, isStale, startTicks } from './lock.js';
import { s3Url, type S3Location, s3Sdk } from './s3-config.js';

/** How long a lock outlives a holder that stopped renewing it (crashed, cut off). */
export const S3_LOCK_LEASE_MS = 5 * 60 * 1000;

export interface S3LockOptions extends S3Location {
  client: S3Client;
  /** Default S3_LOCK_LEASE_MS; tests shorten it. */
  leaseMs?: number;
}

/** What a lock object holds: the holder, and its lease. */
export type S3LockBody = Omit<LockHolder, 'file'> & { leaseMs: number };

interface ListedLock {
  holder: LockHolder;
  /** Gateway ms since the object was last written. */
  ageMs: number;
  leaseMs: number;
}

function locksPrefix(o: S3Location): string {
  return `${o.prefix}${LOCKS_DIR}/`;
}

/** An object of a listing, with its age in the gateway's clock. */
export interface AgedObject {
  /** The key below the listed prefix. */
  name: string;
  etag: string;
  /** Gateway ms since the object was last written. */
  ageMs: number;
  lastModifiedMs: number;
}

/**
 * Every object under `prefix` with its age in the gateway's clock: the Date
 * header of the listing response against Last-Modified, so no client clock
 * enters. The Date header has whole seconds: ages are rounded down by a
 * second, so a fresh object never looks older than it is.
 */
export async function listAged(client: S3Client, bucket: string, prefix: string): Promise<AgedObject[]> {
  const out: AgedObject[] = [];
  let token: string | undefined;
  do {
    const cmd = new (s3Sdk().ListObjectsV2Command)({ Bucket: bucket, Prefix: prefix, ContinuationToken: token });
    let gatewayNow = Date.now();
    cmd.middlewareStack.add(
      (next) => async (args) => {
        const r = await next(args);
        const date = Date.parse(String((r.response as { headers?: Record<string, string> }).headers?.date ?? ''));
        if (!Number.isNaN(date)) gatewayNow = date;
        return r;
      },
      { step: 'deserialize', name: 'restorelabGatewayDate' },
    );
    const page = await client.send(cmd);
    for (const obj of page.Contents ?? []) {
      const name = obj.Key?.slice(prefix.length);
      if (!name || name.includes('/')) continue;
      const lastModifiedMs = obj.LastModified?.getTime() ?? gatewayNow;
      out.push({ name, etag: obj.ETag ?? '', ageMs: Math.max(0, gatewayNow - lastModifiedMs - 1000), lastModifiedMs });
    }
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (token);
  return out;
}

/**
 * Every lock object with its age in the gateway's clock, but `own` (a taker's own lock, whose body it
 * wrote). The bodies are read at once: on the RADOS Gateway each small GET waits about 40 ms for its
 * body (the gateway writes headers and body apart, and the second write waits for our delayed ACK),
 * which one after the other is what every backup paid before its first chunk.
 */
async function listLocks(o: S3LockOptions, own?: string): Promise<ListedLock[]> {
  const listed = (await listAged(o.client, o.bucket, locksPrefix(o))).filter((obj) => obj.name.endsWith(LOCK_SUFFIX) && obj.name !== own);
  return Promise.all(listed.map(async (obj) => ({ ...(await readLock(o, obj.name)), ageMs: obj.ageMs })));
}

async function readLock(o: S3LockOptions, file: string): Promise<{ holder: LockHolder; leaseMs: number }> {
  try {
    const r = await o.client.send(new (s3Sdk().GetObjectCommand)({ Bucket: o.bucket, Key: locksPrefix(o) + file }));
    const body = JSON.parse((await r.Body?.transformToString()) ?? '') as S3LockBody;
    const { leaseMs, ...holder } = body;
    return { holder: { ...holder, file }, leaseMs: typeof leaseMs === 'number' && leaseMs > 0 ? leaseMs : S3_LOCK_LEASE_MS };
  } catch {
    // Gone since the listing, or damaged by hand: live and exclusive until its lease runs out, as an unreadable local lock file is.
    return {
      holder: { kind: 'exclusive', purpose: `unreadable lock object ${file}`, pid: 0, hostname: '?', since: 0, file },
      leaseMs: S3_LOCK_LEASE_MS,
    };
  }
}

function expired(l: ListedLock): boolean {
  return l.ageMs > l.leaseMs || isStale(l.holder);
}

/** Holders whose lease runs and whose process is not known to be gone. */
export async function liveS3Locks(o: S3LockOptions): Promise<LockHolder[]> {
  return (await listLocks(o)).filter((l) => !expired(l)).map((l) => l.holder);
}

export async function acquireS3Lock(o: S3LockOptions, kind: LockKind, purpose: string): Promise<RepoLock> {
  const leaseMs = o.leaseMs ?? S3_LOCK_LEASE_MS;
  const repoPath = s3Url(o);
  const since = Date.now();
  const file = `${kind}-${hostname()}-${process.pid}-${randomBytes(4).toString('hex')}${LOCK_SUFFIX}`;
  const key = locksPrefix(o) + file;
  const start = startTicks(process.pid);
  const boot = bootId();
  const body: S3LockBody = {
    kind,
    purpose,
    pid: process.pid,
    hostname: hostname(),
    since,
    ...(boot ? { bootId: boot } : {}),
    ...(start !== undefined ? { startTicks: start } : {}),
    leaseMs,
  };
  const put = (): Promise<unknown> =>
    o.client.send(new (s3Sdk().PutObjectCommand)({ Bucket: o.bucket, Key: key, Body: JSON.stringify(body) + '\n' }));
  const remove = (): Promise<unknown> => o.client.send(new (s3Sdk().DeleteObjectCommand)({ Bucket: o.bucket, Key: key }));
  await put();
  const staleRemoved: LockHolder[] = [];
  try {
    for (const other of await listLocks(o, file)) {
      if (expired(other)) {
        await o.client
          .send(new (s3Sdk().DeleteObjectCommand)({ Bucket: o.bucket, Key: locksPrefix(o) + other.holder.file }))
          .catch(() => undefined);
        staleRemoved.push(other.holder);
        continue;
      }
      if (conflicts(kind, other.holder.kind)) {
        throw new RestorelabError('REPO_BUSY', `repository ${repoPath} is busy: ${describe(other.holder)}`, {
          hint: `wait for it to finish; a holder that died is ignored once its lease (${Math.round(other.leaseMs / 1000)} s) runs out`,
        });
      }
    }
  } catch (err) {
    await remove().catch(() => undefined);
    throw err;
  }
  // Renewal: a failed PUT is tried again at the next tick; the lease leaves two more before others may take over.
  let renewing: Promise<unknown> | undefined;
  const renew = setInterval(
    () => {
      renewing ??= put()
        .catch(() => undefined)
        .finally(() => (renewing = undefined));
    },
    Math.max(100, Math.floor(leaseMs / 3)),
  );
  renew.unref();
  let released = false;
  return {
    kind,
    since,
    staleRemoved,
    async release() {
      if (released) return;
      released = true;
      clearInterval(renew);
      // A renewal still in flight would put the object back after our delete.
      await renewing;
      await remove();
    },
  };
}

/**
 * Repository locks as objects with leases, on the RADOS Gateway: the local
 * lock rules (lock.test.ts), a lease that renews while held, and an expired
 * lease that counts as stale.
 */
import t from 'tap';
import { ListObjectsV2Command, PutObjectCommand } from '@aws-sdk/client-s3';
import { RestorelabError } from '../../src/errors.js';
import { acquireS3Lock, liveS3Locks } from '../../src/repo/s3-lock.js';
import { s3Scratch } from '../helpers/s3.js';

async function busy(p: Promise<unknown>): Promise<RestorelabError | undefined> {
  return p.then(
    () => undefined,
    (e: unknown) => e as RestorelabError,
  );
}

function waitMs(ms: number): Promise<void> {
  // The lease is time itself passing: nothing to poll.
  return new Promise((r) => setTimeout(r, ms));
}

t.test('shared locks coexist; exclusive conflicts with them, naming the holder; gc excludes gc only', async (t) => {
  const s = await s3Scratch(t);
  const o = { client: s.client, bucket: s.bucket, prefix: s.prefix };
  const a = await acquireS3Lock(o, 'shared', 'backup a');
  const b = await acquireS3Lock(o, 'shared', 'backup b');
  t.equal((await liveS3Locks(o)).length, 2);
  const err = await busy(acquireS3Lock(o, 'exclusive', 'prune'));
  t.equal(err?.code, 'REPO_BUSY');
  t.match(err?.message ?? '', /shared lock for "backup (a|b)"/);
  t.match(err?.message ?? '', `s3://${s.bucket}/${s.prefix}`);
  t.equal((await liveS3Locks(o)).length, 2, 'the refused taker left no object behind');
  const gc = await acquireS3Lock(o, 'gc', 'gc');
  t.equal((await busy(acquireS3Lock(o, 'gc', 'gc 2')))?.code, 'REPO_BUSY');
  await Promise.all([a.release(), b.release(), gc.release()]);
  const page = await s.client.send(new ListObjectsV2Command({ Bucket: s.bucket, Prefix: `${s.prefix}locks/` }));
  t.same(page.Contents ?? [], [], 'released locks are deleted');
  const x = await acquireS3Lock(o, 'exclusive', 'prune');
  t.equal((await busy(acquireS3Lock(o, 'shared', 'backup')))?.code, 'REPO_BUSY', 'exclusive excludes shared');
  await x.release();
});

t.test('a held lock renews its lease; a holder that stopped renewing is stale once its lease ran out', async (t) => {
  const s = await s3Scratch(t);
  const o = { client: s.client, bucket: s.bucket, prefix: s.prefix };
  const held = await acquireS3Lock({ ...o, leaseMs: 1500 }, 'shared', 'long backup');
  // A holder on another host that died: its lock object is never renewed.
  const dead = { kind: 'shared', purpose: 'dead backup', pid: 1, hostname: 'elsewhere', since: Date.now(), leaseMs: 1500 };
  await s.client.send(
    new PutObjectCommand({ Bucket: s.bucket, Key: `${s.prefix}locks/shared-elsewhere-1-00000000.lock`, Body: JSON.stringify(dead) }),
  );
  t.equal((await liveS3Locks(o)).length, 2, 'both live at first');
  await waitMs(4000);
  const live = await liveS3Locks(o);
  t.same(
    live.map((h) => h.purpose),
    ['long backup'],
    'after 2.6 leases the renewed one is live, the dead one is not',
  );
  // (A taker refused by the renewed lock would remove the dead one as stale too, before it backs off.)
  await held.release();
  const x = await acquireS3Lock(o, 'exclusive', 'prune');
  t.same(
    x.staleRemoved.map((h) => h.purpose),
    ['dead backup'],
    'the expired lock is reported and removed',
  );
  await x.release();
  const page = await s.client.send(new ListObjectsV2Command({ Bucket: s.bucket, Prefix: `${s.prefix}locks/` }));
  t.same(page.Contents ?? [], [], 'nothing left');
});

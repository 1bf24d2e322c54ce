/**
 * gc on object storage beside a backup (issue 19: "locking and garbage
 * collection stay safe with several writers"), on the real RADOS Gateway.
 *
 * gc deletes an unreferenced object with a HEAD (still old?) then a DELETE.
 * A backup that reuses the object touches it; a touch that lands between
 * the two is lost and the object deleted. The stores' test seam
 * (betweenHeadAndDelete) holds gc inside that window while a backup touches
 * the object, so the interleaving is forced, not hoped for. Before the sweep
 * markers (s3-sweep.ts) the backup committed a point naming a deleted chunk;
 * now its commit sees the sweep, checks what it reused, and refuses.
 */
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { GetObjectCommand, ListObjectsV2Command } from '@aws-sdk/client-s3';
import { backupImages, backupVm } from '../../src/backup/engine.js';
import type { ImageSource } from '../../src/ingest/contract.js';
import type { FixedIndex } from '../../src/repo/api.js';
import { SweptChunksError } from '../../src/repo/api.js';
import { collectGarbage } from '../../src/repo/gc.js';
import { GC_SAFETY_MARGIN_MS } from '../../src/repo/format.js';
import { initRepository, LocalRepository } from '../../src/repo/repository.js';
import { S3ChunkStore } from '../../src/repo/s3-chunk-store.js';
import { S3MetaStore } from '../../src/repo/s3-meta-store.js';
import { beginS3Sweep, removeEndedSweeps, sweptSince, takeSweepView, type SweepMarkerBody } from '../../src/repo/s3-sweep.js';
import { verifyRepository } from '../../src/repo/verify.js';
import { RestorelabError } from '../../src/errors.js';
import type { VmDefinition } from '../../src/vm/definition.js';
import { s3Env, s3Scratch, type S3Scratch } from '../helpers/s3.js';

const KiB = 1024;
const CHUNK = 256 * KiB;

// Each case waits out gc's margin (6 s) and runs a few backups on the gateway.
t.setTimeout(240_000);
const work = await mkdtemp(join(tmpdir(), 'rl-s3sweep-'));
t.teardown(() => rm(work, { recursive: true, force: true }));

const vm: VmDefinition = { name: 'sweepvm', memoryMiB: 256, vcpus: 1, disks: [{ name: 'root' }], nics: [] };

/** gc held once inside its HEAD-then-DELETE window, until the test lets it go. */
class Window {
  private armed = false;
  private release: () => void = () => undefined;
  private readonly released = new Promise<void>((r) => (this.release = r));
  /** What gc was about to delete when it was held. */
  readonly held: Promise<string>;
  private onHeld: (what: string) => void = () => undefined;

  constructor() {
    this.held = new Promise((r) => (this.onHeld = r));
  }

  arm(): void {
    this.armed = true;
  }

  /** The seam: the first delete after arm() waits here. */
  readonly seam = async (what: string): Promise<void> => {
    if (!this.armed) return;
    this.armed = false;
    this.onHeld(what);
    await this.released;
  };

  letGo(): void {
    this.release();
  }
}

interface Lab {
  repo: LocalRepository;
  chunkWindow: Window;
  indexWindow: Window;
}

/** An s3:// repository whose stores hold gc in its window on demand; one clock (the gateway runs here), so no skew margin. */
async function lab(s3: S3Scratch, leaseMs?: number): Promise<Lab> {
  Object.assign(process.env, s3Env(s3.service));
  const plain = await initRepository(`s3://${s3.bucket}/${s3.prefix}`, { chunkSize: CHUNK });
  const chunkWindow = new Window();
  const indexWindow = new Window();
  const where = { client: s3.client, bucket: s3.bucket, prefix: s3.prefix };
  const repo = new LocalRepository(plain.path, plain.config, undefined, {
    meta: new S3MetaStore({ ...where, betweenHeadAndDelete: indexWindow.seam, ...(leaseMs !== undefined ? { leaseMs } : {}) }),
    chunks: new S3ChunkStore({ ...where, clockSkewMs: 0, betweenHeadAndDelete: chunkWindow.seam }),
  });
  return { repo, chunkWindow, indexWindow };
}

/** The repository as a backup sees it, letting gc go once the backup's indexes are written (every touch done, commit next). */
function lettingGoAfterIndexes(repo: LocalRepository, w: Window): LocalRepository {
  return Object.create(repo, {
    writeIndex: {
      value: async (index: FixedIndex): Promise<string> => {
        const digest = await repo.writeIndex(index);
        w.letGo();
        return digest;
      },
    },
  }) as LocalRepository;
}

async function image(name: string, ...parts: Buffer[]): Promise<string> {
  const file = join(work, name);
  await writeFile(file, Buffer.concat(parts));
  return file;
}

/**
 * Makes every object written so far older than gc's cutoff: gc keeps GC_SAFETY_MARGIN_MS on top of the
 * (here zero) clock skew, and Last-Modified has whole seconds.
 */
const pastTheMargin = (): Promise<void> => sleep(GC_SAFETY_MARGIN_MS + 1100);

t.test('a chunk gc deletes after the backup touched it: the backup stores it again before it commits', async (t) => {
  const s3 = await s3Scratch(t);
  const { repo, chunkWindow } = await lab(s3);
  const a = randomBytes(4 * CHUNK);
  const first = await backupVm({ repo, vm, disks: { root: await image('a.raw', a) }, parent: null });
  await repo.removePoint(first.id);
  await pastTheMargin();

  chunkWindow.arm();
  const gc = collectGarbage(repo, { safetyMarginMs: 0 });
  const victim = await chunkWindow.held;
  // The backup reuses every chunk of `a` (touching the victim while gc holds its HEAD's verdict) and adds one,
  // so its index differs from the removed point's and gc's index sweep does not meet it.
  const warnings: string[] = [];
  const file = await image('b.raw', a, randomBytes(CHUNK));
  const point = await backupVm({
    repo: lettingGoAfterIndexes(repo, chunkWindow),
    vm,
    disks: { root: file },
    parent: null,
    onWarning: (w) => warnings.push(w),
  });
  const report = await gc;
  t.equal(report.chunksRemoved, 1, 'gc deleted the victim after the touch (and kept the chunks touched before its HEAD)');
  t.ok(
    warnings.some((w) => /a gc deleted 1 chunk\(s\) and 0 index\(es\)/.test(w)),
    `the backup says it stored the victim again: ${warnings.join(' | ')}`,
  );
  t.ok(await repo.chunks.has(victim), 'the victim is stored again');
  t.same(
    (await repo.listPoints()).map((p) => p.id),
    [point.id],
  );
  const verified = await verifyRepository(repo);
  t.equal(verified.ok, true, `verify of every visible point passes: ${JSON.stringify(verified.corrupt)}`);
});

t.test('an index gc deletes after the backup touched it: the backup writes it again before it commits', async (t) => {
  const s3 = await s3Scratch(t);
  const { repo, indexWindow } = await lab(s3);
  const file = await image('c.raw', randomBytes(2 * CHUNK));
  const first = await backupVm({ repo, vm, disks: { root: file }, parent: null });
  await repo.removePoint(first.id);
  await pastTheMargin();

  indexWindow.arm();
  const gc = collectGarbage(repo, { safetyMarginMs: 0 });
  const held = await indexWindow.held;
  t.match(held, /^indexes\//, 'gc is held on the index');
  // Same bytes, same index: writeIndex only touches it, inside gc's window.
  const warnings: string[] = [];
  const point = await backupVm({
    repo: lettingGoAfterIndexes(repo, indexWindow),
    vm,
    disks: { root: file },
    parent: null,
    onWarning: (w) => warnings.push(w),
  });
  const report = await gc;
  t.equal(report.indexesRemoved, 1);
  t.ok(
    warnings.some((w) => /0 chunk\(s\) and 1 index\(es\)/.test(w)),
    warnings.join(' | '),
  );
  t.same(
    (await repo.listPoints()).map((p) => p.id),
    [point.id],
  );
  t.equal((await verifyRepository(repo)).ok, true, 'verify of every visible point passes');
});

t.test('a gc paused inside its window past its sweep lease deletes nothing more: GC_SWEEP_EXPIRED, the chunk stays', async (t) => {
  // A short lease: the marker's renewal and the writers' judgement of it scale with it (s3-sweep.ts).
  const leaseMs = 3000;
  const s3 = await s3Scratch(t);
  const { repo, chunkWindow } = await lab(s3, leaseMs);
  const first = await backupVm({ repo, vm, disks: { root: await image('p.raw', randomBytes(2 * CHUNK)) }, parent: null });
  await repo.removePoint(first.id);
  await pastTheMargin();

  chunkWindow.arm();
  const gc = collectGarbage(repo, { safetyMarginMs: 0 }).then(
    () => undefined,
    (e: unknown) => e,
  );
  const victim = await chunkWindow.held;
  // As a SIGSTOP between its HEAD and its DELETE: writers stop counting its marker once the lease is gone.
  await sleep(leaseMs + 500);
  chunkWindow.letGo();
  const err = await gc;
  t.ok(err instanceof RestorelabError, String(err));
  t.equal((err as RestorelabError).code, 'GC_SWEEP_EXPIRED');
  t.match((err as RestorelabError).message, /past two thirds of its 3 s lease/);
  t.ok(await repo.chunks.has(victim), 'the chunk it had judged old is still there');
  // The next gc, not paused, finishes the job.
  const again = await collectGarbage(repo, { safetyMarginMs: 0 });
  t.equal(again.chunksRemoved, 2, 'a gc run again removes what was unreferenced');
});

t.test('commitPoint refuses a point whose chunk a sweep deleted after the writer took its lock', async (t) => {
  const s3 = await s3Scratch(t);
  const { repo } = await lab(s3);
  const old = await backupVm({ repo, vm, disks: { root: await image('f.raw', randomBytes(CHUNK)) }, parent: null });
  const { digests } = await repo.readIndex(old.disks[0]!.indexDigest);
  await repo.removePoint(old.id);
  await pastTheMargin();
  // A writer that names the old chunk (no touch: as a backup whose touch gc's DELETE undid).
  const lock = await repo.lock('shared', 'test writer');
  t.teardown(() => lock.release());
  const report = await collectGarbage(repo, { safetyMarginMs: 0 });
  t.equal(report.chunksRemoved, 1);
  const indexDigest = await repo.writeIndex({ size: CHUNK, chunkSize: CHUNK, digests });
  const point = { ...old, disks: [{ name: 'root', size: CHUNK, indexDigest }] };
  const err = await repo.commitPoint(point, { lock }).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.ok(err instanceof SweptChunksError, String(err));
  t.equal((err as SweptChunksError).code, 'BACKUP_GC_RACE');
  t.same((err as SweptChunksError).missingChunks, digests);
  t.match((err as SweptChunksError).hint ?? '', /run the backup again/);
  t.same(await repo.listPoints(), [], 'nothing was committed');
});

t.test('a backup beside a gc that deletes nothing it uses commits', async (t) => {
  const s3 = await s3Scratch(t);
  const { repo, chunkWindow } = await lab(s3);
  const old = await backupVm({ repo, vm, disks: { root: await image('d.raw', randomBytes(2 * CHUNK)) }, parent: null });
  await repo.removePoint(old.id);
  await pastTheMargin();
  chunkWindow.arm();
  const gc = collectGarbage(repo, { safetyMarginMs: 0 });
  await chunkWindow.held;
  const point = await backupVm({
    repo: lettingGoAfterIndexes(repo, chunkWindow),
    vm,
    disks: { root: await image('e.raw', randomBytes(2 * CHUNK)) },
    parent: null,
  });
  const report = await gc;
  t.equal(report.chunksRemoved, 2, "gc removed the old point's chunks");
  t.same(
    (await repo.listPoints()).map((p) => p.id),
    [point.id],
    'the backup checked its chunks and committed',
  );
  t.equal((await verifyRepository(repo)).ok, true);
});

t.test("a failed backup's roll-back is a sweep too: announced, and ended", async (t) => {
  const s3 = await s3Scratch(t);
  const { repo } = await lab(s3);
  const data = randomBytes(4 * CHUNK);
  let reads = 0;
  const failing: ImageSource = {
    size: data.length,
    format: 'raw',
    async *extents() {
      yield { offset: 0, length: data.length, zero: false };
    },
    async read(offset, length) {
      // The third read fails: the backup has stored chunks, which its roll-back deletes.
      if (++reads === 3) throw new Error('bad sector');
      return data.subarray(offset, offset + length);
    },
    close: async () => undefined,
  };
  const err = await backupImages({
    repo,
    vm,
    images: [{ name: 'root', source: failing }],
    source: 'failing',
    time: new Date().toISOString(),
    workers: 1,
  }).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.match(String(err), /bad sector/);
  const left: string[] = [];
  for await (const c of repo.chunks.list()) left.push(c.digest);
  t.same(left, [], 'the roll-back removed the chunks the backup had added');
  const page = await s3.client.send(new ListObjectsV2Command({ Bucket: s3.bucket, Prefix: `${s3.prefix}gc/` }));
  const markers = await Promise.all(
    (page.Contents ?? []).map(async (o) => {
      const r = await s3.client.send(new GetObjectCommand({ Bucket: s3.bucket, Key: o.Key }));
      return JSON.parse((await r.Body?.transformToString()) ?? '') as SweepMarkerBody;
    }),
  );
  t.same(
    markers.map((m) => [m.purpose, m.state]),
    [['roll-back of a failed backup', 'done']],
    'its marker says it ran and ended',
  );
});

t.test('sweep markers: what a writer learns at commit', async (t) => {
  const s3 = await s3Scratch(t);
  const o = { client: s3.client, bucket: s3.bucket, prefix: s3.prefix, leaseMs: 3000 };

  t.equal(await sweptSince(o, await takeSweepView(o)), false, 'no sweep: nothing to check');

  const ended = await beginS3Sweep(o, 'gc');
  await ended.end();
  t.equal(await sweptSince(o, await takeSweepView(o)), false, 'a sweep that ended before the writer started does not count');

  const view = await takeSweepView(o);
  const running = await beginS3Sweep(o, 'gc');
  let answered = false;
  const answer = sweptSince(o, view).then((v) => ((answered = true), v));
  await sleep(300);
  t.equal(answered, false, 'a writer waits while the sweep has a delete in flight');
  await running.end();
  t.equal(await answer, true, 'and learns, once it moved, that a sweep ran beside it');

  const before = await takeSweepView(o);
  const checkpointed = await beginS3Sweep(o, 'gc');
  await sleep(1100);
  await checkpointed.checkpoint();
  const seen = await takeSweepView(o);
  t.equal([...seen.markers.values()].filter((m) => m.sweeping).length, 1, 'a checkpoint keeps the marker sweeping');
  await checkpointed.end();
  t.equal(await sweptSince(o, before), true);

  // A sweeper that died: its marker counts as ended once its lease ran out, and gc tidies it away.
  const dead = await beginS3Sweep(o, 'gc');
  void dead;
  const late = await takeSweepView(o);
  const deadline = Date.now() + 10_000;
  while ([...(await takeSweepView(o)).markers.values()].some((m) => m.sweeping)) {
    if (Date.now() > deadline) throw new Error('the dead sweeper never aged out');
    await sleep(250);
  }
  t.equal(await sweptSince(o, late), true, 'it may have deleted before it died: a writer that saw it sweeping checks');
  t.equal(await sweptSince(o, await takeSweepView(o)), false, 'a writer that started after it died does not');
  t.equal(await removeEndedSweeps(o, Date.now() + 60_000), 4, 'gc removes ended markers before its cutoff');
  t.same([...(await takeSweepView(o)).markers.keys()], []);
});

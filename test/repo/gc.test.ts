import t from 'tap';
import { existsSync, readdirSync, readFileSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { initRepository, type LocalRepository } from '../../src/repo/repository.js';
import { collectGarbage } from '../../src/repo/gc.js';
import { pruneRepository } from '../../src/repo/prune.js';
import { verifyRepository } from '../../src/repo/verify.js';
import { chunkBytes, makePoint, SMALL, tmpDir } from './fixtures/points.js';

const HOUR = 3_600_000;

/** Makes every chunk and index look written an hour ago, as if by earlier backups. */
function ageEverything(repo: LocalRepository): void {
  const old = new Date(Date.now() - HOUR);
  for (const shard of readdirSync(join(repo.path, 'chunks'))) {
    for (const f of readdirSync(join(repo.path, 'chunks', shard))) utimesSync(join(repo.path, 'chunks', shard, f), old, old);
  }
  for (const f of readdirSync(join(repo.path, 'indexes'))) utimesSync(join(repo.path, 'indexes', f), old, old);
}

function digestOf(repo: LocalRepository, seed: number): string {
  return repo.codec.digest(chunkBytes(seed, SMALL));
}

function blobSize(repo: LocalRepository, seed: number): number {
  return repo.codec.encode(chunkBytes(seed, SMALL)).length;
}

async function stored(repo: LocalRepository): Promise<Set<string>> {
  const out = new Set<string>();
  for await (const c of repo.chunks.list()) out.add(c.digest);
  return out;
}

t.test('prune + gc frees exactly the unreferenced chunks and indexes', async (t) => {
  const repo = await initRepository(join(tmpDir(t), 'repo'), { chunkSize: SMALL });
  const a = await makePoint(repo, 'web', [1, 2, 5, 6, null], { time: '2026-11-01T00:00:00Z' });
  const b = await makePoint(repo, 'web', [1, 2, 3], { time: '2026-11-02T00:00:00Z' });
  await pruneRepository(repo, { keepLast: 1 });
  ageEverything(repo);
  // A quarantined chunk and a crashed writer's temp file.
  await makePoint(repo, 'junk', [9]).then((p) => repo.removePoint(p.id));
  ageEverything(repo);
  await repo.chunks.quarantine(digestOf(repo, 9));
  const tmp = join(repo.path, 'chunks', '00', '.tmp-1-abcdef');
  writeFileSync(tmp, 'partial');
  utimesSync(tmp, new Date(Date.now() - HOUR), new Date(Date.now() - HOUR));

  const dry = await collectGarbage(repo, { dryRun: true });
  t.equal(dry.chunksRemoved, 2);
  t.equal((await stored(repo)).size, 5, 'dry run deletes nothing');

  const report = await collectGarbage(repo);
  t.equal(report.chunksTotal, 5);
  t.equal(report.chunksReferenced, 3);
  t.equal(report.chunksRemoved, 2);
  t.equal(report.bytesFreed, blobSize(repo, 5) + blobSize(repo, 6));
  t.equal(report.indexesRemoved, 2, "a's index and the junk point's index");
  t.equal(report.tempFilesRemoved, 1);
  t.equal(report.quarantinedChunks, 1);
  t.same([...(await stored(repo))].sort(), [1, 2, 3].map((s) => digestOf(repo, s)).sort());
  t.ok(existsSync(join(repo.path, 'chunks', digestOf(repo, 9).slice(0, 2), `${digestOf(repo, 9)}.bad`)), '.bad is never deleted');
  t.notOk(existsSync(tmp));
  t.same(readdirSync(join(repo.path, 'indexes')), [`${b.disks[0]?.indexDigest}.fidx`]);
  t.not(a.id, b.id);
  t.equal((await verifyRepository(repo)).ok, true, 'the surviving point still verifies');

  const second = await collectGarbage(repo);
  t.equal(second.chunksRemoved, 0, 'nothing left to free');
});

t.test('gc beside a running backup never deletes what the backup references', async (t) => {
  const repo = await initRepository(join(tmpDir(t), 'repo'), { chunkSize: SMALL });
  await makePoint(repo, 'web', [1, 2, 5, 6], { time: '2026-11-01T00:00:00Z' });
  const b = await makePoint(repo, 'web', [2, 3], { time: '2026-11-02T00:00:00Z' });
  await pruneRepository(repo, { keepLast: 1 });
  ageEverything(repo);

  // The fake writer: a shared lock, then it reuses chunk 1 (garbage since the prune) and inserts new ones while gc runs.
  const writer = await repo.lock('shared', 'backup');
  const reuse = digestOf(repo, 1);
  t.same(await repo.chunks.insert(reuse, repo.codec.encode(chunkBytes(1, SMALL))), { existed: true, size: blobSize(repo, 1) });
  // Pretend the backup started 10 minutes ago and reused chunk 1 9 minutes ago: only the writer's `since`
  // (not gc's own start time) keeps that chunk.
  const [lockFile] = readdirSync(repo.locksDir);
  const lockPath = join(repo.locksDir, lockFile ?? '');
  const since = Date.now() - 10 * 60_000;
  writeFileSync(lockPath, JSON.stringify({ ...JSON.parse(readFileSync(lockPath, 'utf8')), since }));
  const nineMinAgo = new Date(Date.now() - 9 * 60_000);
  utimesSync(join(repo.path, 'chunks', reuse.slice(0, 2), reuse), nineMinAgo, nineMinAgo);
  const backup = (async () => {
    const digests: string[] = [reuse];
    for (const seed of [10, 11, 12, 13]) {
      const plain = chunkBytes(seed, SMALL);
      const d = repo.codec.digest(plain);
      await repo.chunks.insert(d, repo.codec.encode(plain));
      digests.push(d);
      await sleep(20);
    }
    const indexDigest = await repo.writeIndex({ size: 5 * SMALL, chunkSize: SMALL, digests });
    return repo.commitPoint({
      vm: b.vm,
      disks: [{ name: 'sda', size: 5 * SMALL, indexDigest }],
      consistency: 'crash',
      time: new Date().toISOString(),
      source: 'fake writer',
      parent: b.id,
      stats: b.stats,
    });
  })();
  const [report, w] = await Promise.all([collectGarbage(repo), backup]);
  await writer.release();

  t.equal(report.chunksRemoved, 2, 'only chunks 5 and 6');
  t.equal(report.bytesFreed, blobSize(repo, 5) + blobSize(repo, 6));
  t.ok(Date.parse(report.cutoff) < since, 'cutoff is before the writer started');
  const left = await stored(repo);
  for (const seed of [1, 2, 3, 10, 11, 12, 13]) t.ok(left.has(digestOf(repo, seed)), `chunk ${seed} kept`);
  for (const seed of [5, 6]) t.notOk(left.has(digestOf(repo, seed)), `chunk ${seed} freed`);
  const v = await verifyRepository(repo);
  t.equal(v.ok, true, "the writer's point and the kept point verify");
  t.equal(v.pointsChecked, 2);
  t.ok(w.id);
});

t.test('gc refuses to run beside prune, and stops when a manifest is unreadable', async (t) => {
  const repo = await initRepository(join(tmpDir(t), 'repo'), { chunkSize: SMALL });
  const p = await makePoint(repo, 'web', [1]);
  const ex = await repo.lock('exclusive', 'prune');
  await t.rejects(collectGarbage(repo), /busy/);
  await ex.release();
  writeFileSync(join(repo.path, 'points', `${p.id}.json`), '{"broken"');
  ageEverything(repo);
  await t.rejects(collectGarbage(repo), { code: 'GC_UNSAFE' });
  t.equal((await stored(repo)).size, 1);
});

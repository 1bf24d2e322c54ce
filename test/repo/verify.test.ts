import t from 'tap';
import { existsSync, readFileSync, writeFileSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { initRepository, type LocalRepository } from '../../src/repo/repository.js';
import { verifyRepository } from '../../src/repo/verify.js';
import { CorruptChunkError } from '../../src/repo/contract.js';
import { chunkBytes, makePoint, SMALL, tmpDir } from './fixtures/points.js';

function chunkFile(repo: LocalRepository, digest: string): string {
  return join(repo.path, 'chunks', digest.slice(0, 2), digest);
}

function flipByte(file: string, at: number): void {
  const b = readFileSync(file);
  b.writeUInt8(b.readUInt8(at) ^ 0x01, at);
  writeFileSync(file, b);
}

t.test('a flipped byte: verify names the chunk, quarantines it, marks the affected points; reads fail', async (t) => {
  const repo = await initRepository(join(tmpDir(t), 'repo'), { chunkSize: SMALL });
  const a = await makePoint(repo, 'web', [1, 2, 3, null], { time: '2026-11-01T00:00:00Z' });
  const b = await makePoint(repo, 'web', [1, 3, 4], { time: '2026-11-02T00:00:00Z' });
  const c = await makePoint(repo, 'db', [5, 6], { time: '2026-11-03T00:00:00Z' });

  const clean = await verifyRepository(repo);
  t.equal(clean.ok, true);
  t.equal(clean.chunksChecked, 6, 'each shared chunk checked once');
  t.equal(clean.pointsChecked, 3);

  const bad = repo.codec.digest(chunkBytes(3, SMALL));
  flipByte(chunkFile(repo, bad), 200);
  const report = await verifyRepository(repo, { workers: 2 });
  t.equal(report.ok, false);
  t.equal(report.chunksChecked, 6, 'keeps going after the error');
  t.same(
    report.corrupt.map((f) => [f.digest, f.kind, f.reason, f.quarantined]),
    [[bad, 'chunk', 'CRC mismatch', true]],
  );
  t.same(report.affectedPoints, [a.id, b.id].sort());
  t.ok(existsSync(chunkFile(repo, bad) + '.bad'), 'quarantined, not deleted');
  t.notOk(existsSync(chunkFile(repo, bad)));
  t.equal((await repo.getPoint(a.id)).damaged, true);
  t.equal((await repo.getPoint(b.id)).damaged, true);
  t.equal((await repo.getPoint(c.id)).damaged, undefined);

  const disk = await repo.openDisk(a.id, 'sda');
  const err = await disk.readChunk(2).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.ok(err instanceof CorruptChunkError, 'a read of the region fails');
  t.ok((await disk.readChunk(0))?.equals(chunkBytes(1, SMALL)), 'other chunks still read');

  const onlyC = await verifyRepository(repo, { point: c.id });
  t.equal(onlyC.ok, true);
  t.equal(onlyC.chunksChecked, 2);

  const again = await verifyRepository(repo);
  t.same(
    again.corrupt.map((f) => f.reason),
    ['quarantined by an earlier verify'],
  );

  // A later backup that stores the same bytes again heals the points.
  const plain = chunkBytes(3, SMALL);
  t.same(await repo.chunks.insert(bad, repo.codec.encode(plain)), { existed: false, size: repo.codec.encode(plain).length });
  const healed = await verifyRepository(repo);
  t.equal(healed.ok, true);
  t.equal((await repo.getPoint(a.id)).damaged, undefined);
});

t.test('a missing chunk and a damaged index are findings too', async (t) => {
  const repo = await initRepository(join(tmpDir(t), 'repo'), { chunkSize: SMALL });
  const a = await makePoint(repo, 'web', [1, 2]);
  const b = await makePoint(repo, 'db', [7]);
  const gone = repo.codec.digest(chunkBytes(2, SMALL));
  unlinkSync(chunkFile(repo, gone));
  const indexFile = join(repo.path, 'indexes', `${b.disks[0]?.indexDigest}.fidx`);
  flipByte(indexFile, 70);
  const report = await verifyRepository(repo);
  t.equal(report.ok, false);
  t.same(report.corrupt.map((f) => f.kind).sort(), ['chunk', 'index']);
  t.match(
    report.corrupt.find((f) => f.kind === 'chunk'),
    { digest: gone, reason: 'missing from the store', points: [a.id] },
  );
  t.match(report.corrupt.find((f) => f.kind === 'index')?.reason, /disk sda: fixed index .* is corrupt/);
  t.same(report.affectedPoints, [a.id, b.id].sort());
});

t.test('encrypted repository: workers verify with the key and catch a flipped byte', async (t) => {
  const base = tmpDir(t);
  const repo = await initRepository(join(base, 'repo'), { chunkSize: SMALL, keyFile: join(base, 'k') });
  const p = await makePoint(repo, 'web', [1, 2, 3]);
  t.equal((await verifyRepository(repo)).ok, true);
  const d = repo.codec.digest(chunkBytes(2, SMALL));
  const file = chunkFile(repo, d);
  // Flip a byte and fix the CRC, so only the GCM tag can catch it.
  const blob = readFileSync(file);
  blob.writeUInt8(blob.readUInt8(100) ^ 0x80, 100);
  const { crc32 } = await import('node:zlib');
  blob.writeUInt32LE(crc32(blob.subarray(24)), 12);
  writeFileSync(file, blob);
  const report = await verifyRepository(repo);
  t.same(
    report.corrupt.map((f) => f.digest),
    [d],
  );
  t.match(report.corrupt[0]?.reason, /authentication tag mismatch/);
  t.same(report.affectedPoints, [p.id]);
});

t.test('only the CRC field damaged: the digest proves the data, so verify rewrites the CRC instead of quarantining', async (t) => {
  for (const encrypted of [false, true]) {
    const base = tmpDir(t);
    const repo = await initRepository(join(base, 'repo'), { chunkSize: SMALL, ...(encrypted ? { keyFile: join(base, 'k') } : {}) });
    const p = await makePoint(repo, 'web', [1, 2, 3]);
    const d = repo.codec.digest(chunkBytes(2, SMALL));
    const file = chunkFile(repo, d);
    const good = readFileSync(file);
    flipByte(file, 13); // inside the CRC field (bytes 12..15 of the header)
    const report = await verifyRepository(repo);
    const what = encrypted ? 'encrypted' : 'plain';
    t.equal(report.ok, true, `${what}: no corruption: the data is good`);
    t.same(report.corrupt, [], `${what}: no corrupt finding`);
    t.same(
      report.repaired.map((f) => [f.digest, f.kind, f.quarantined, f.points]),
      [[d, 'repaired', undefined, [p.id]]],
      `${what}: one "repaired" warning naming the chunk`,
    );
    t.match(report.repaired[0]?.reason, /CRC/);
    t.notOk(existsSync(file + '.bad'), `${what}: not quarantined`);
    t.ok(readFileSync(file).equals(good), `${what}: the blob is the original again, byte for byte`);
    t.equal((await repo.getPoint(p.id)).damaged, undefined, `${what}: the point is not marked damaged`);
    t.ok((await (await repo.openDisk(p.id, 'sda')).readChunk(1))?.equals(chunkBytes(2, SMALL)), `${what}: the chunk reads`);
    const again = await verifyRepository(repo);
    t.equal(again.ok, true);
    t.same([again.corrupt, again.repaired], [[], []], `${what}: a second verify is clean`);
  }
});

t.test('a data byte damaged next to a good CRC field is still quarantined', async (t) => {
  const repo = await initRepository(join(tmpDir(t), 'repo'), { chunkSize: SMALL });
  const p = await makePoint(repo, 'web', [1, 2]);
  const d = repo.codec.digest(chunkBytes(1, SMALL));
  flipByte(chunkFile(repo, d), 300);
  const report = await verifyRepository(repo);
  t.equal(report.ok, false);
  t.same(report.repaired, [], 'nothing is "repaired" when the data is wrong');
  t.same(
    report.corrupt.map((f) => [f.digest, f.kind, f.quarantined]),
    [[d, 'chunk', true]],
  );
  t.ok(existsSync(chunkFile(repo, d) + '.bad'));
  t.equal((await repo.getPoint(p.id)).damaged, true);
});

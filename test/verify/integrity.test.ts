import t from 'tap';
import { readFileSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { integrityTest } from '../../src/verify/integrity.js';
import { FileRepo } from './fixtures/file-repo.js';

t.test('every referenced chunk is re-hashed; a flipped byte names its chunk', async (t) => {
  const repo = new FileRepo(t.testdir(), 4096);
  const shared = randomBytes(4096);
  const sda = Buffer.concat([randomBytes(4096 * 3), Buffer.alloc(4096), shared]);
  const sdb = Buffer.concat([shared, randomBytes(4096)]);
  repo.addPoint('p1', 'web', { sda, sdb });
  const ok = await integrityTest(repo, 'p1');
  t.equal(ok.result, 'passed', ok.detail);
  t.equal(ok.chunks, 5, 'hole skipped, the shared chunk checked once');

  const disk = await repo.openDisk('p1', 'sda');
  const victim = disk.chunkId(2)!;
  const bytes = readFileSync(repo.chunkPath(victim));
  bytes[100] = bytes[100]! ^ 0x01;
  writeFileSync(repo.chunkPath(victim), bytes);
  const bad = await integrityTest(repo, 'p1');
  t.equal(bad.result, 'failed');
  t.same(
    bad.corrupt.map((c) => [c.disk, c.index, c.digest]),
    [['sda', 2, victim]],
  );
  t.match(bad.detail, `sda chunk #2 ${victim}`);
  t.match(bad.detail, '1 of 5 chunks corrupt');
});

t.test('an unknown point is an error, not a pass', async (t) => {
  const repo = new FileRepo(t.testdir());
  await t.rejects(integrityTest(repo, 'nope'), { code: 'POINT_NOT_FOUND' });
});

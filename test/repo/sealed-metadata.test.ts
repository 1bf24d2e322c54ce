// The manifests and indexes of an encrypted repository are sealed (format
// v2, docs/formats.md): nothing of the VM is in clear, a bit flip or another
// key fails the GCM tag, a manifest cannot pose as an index, and an index is
// named by an HMAC of its plaintext (so writing it twice stores it once).
// Old encrypted repositories (v1, plaintext metadata) still open and read;
// a v2 one refuses a plaintext manifest or index slipped into it.
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { initRepository, openRepository } from '../../src/repo/repository.js';
import { createMetadataSeal, isSealed } from '../../src/repo/metadata-seal.js';
import { encodeFixedIndex } from '../../src/repo/fixed-index.js';
import { RestorelabError } from '../../src/errors.js';
import { makePoint, SMALL, tmpDir } from './fixtures/points.js';

const VM = 'sealed-vm-name-h9';

function filesOf(dir: string): Buffer[] {
  return readdirSync(dir).map((n) => readFileSync(join(dir, n)));
}

/** The manifest text format v1 wrote (docs/formats.md), built here independently of repository.ts. */
function v1Manifest(point: object): string {
  const body = JSON.stringify(point);
  return `{"format":"restorelab-point","version":1,"point":${body},"checksum":"${createHash('sha256').update(body).digest('hex')}"}\n`;
}

/** Rewrites config.json as format version `v`, with a correct checksum (what an older restorelab wrote). */
function setVersion(repoDir: string, v: number): void {
  const file = join(repoDir, 'config.json');
  const { checksum: _c, ...rest } = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
  const cfg = { ...rest, version: v };
  writeFileSync(file, JSON.stringify({ ...cfg, checksum: createHash('sha256').update(JSON.stringify(cfg)).digest('hex') }));
}

t.test('seal: round trip, purpose bound, tamper and another key fail', async (t) => {
  const key = randomBytes(32);
  const seal = createMetadataSeal(key, 'repo-id');
  const plain = Buffer.from('{"vm":"x"}');
  const sealed = seal.seal('manifest', plain);
  t.ok(isSealed(sealed));
  t.equal(sealed.subarray(0, 8).toString('latin1'), 'RLSEAL01');
  t.same(seal.open('manifest', sealed), plain);
  t.notOk(sealed.includes(plain), 'the plaintext is not in the sealed bytes');
  t.not(seal.seal('manifest', plain).toString('hex'), sealed.toString('hex'), 'a fresh nonce each time');
  t.throws(() => seal.open('index', sealed), /not a index/);
  const flipped = Buffer.from(sealed);
  flipped[20] = (flipped[20] as number) ^ 1;
  t.throws(() => seal.open('manifest', flipped), /authentication tag mismatch/);
  t.throws(() => createMetadataSeal(randomBytes(32), 'repo-id').open('manifest', sealed), /authentication tag mismatch/);
  t.throws(
    () => createMetadataSeal(key, 'other-repo').open('manifest', sealed),
    /authentication tag mismatch/,
    'sub-keys are salted by the repository id',
  );
  t.throws(() => seal.open('manifest', sealed.subarray(0, 30)), /too short/);
  t.equal(seal.indexName(plain), seal.indexName(Buffer.from(plain)), 'index names are deterministic');
  t.not(seal.indexName(plain), createHash('sha256').update(plain).digest('hex'), 'and not the plain hash');
});

t.test('an encrypted repository writes sealed manifests and indexes with nothing of the VM in clear', async (t) => {
  const base = tmpDir(t);
  const keyFile = join(base, 'k');
  const dir = join(base, 'repo');
  const repo = await initRepository(dir, { chunkSize: SMALL, keyFile });
  t.equal(repo.config.version, 2, 'new encrypted repositories are format version 2');
  const p = await makePoint(repo, VM, [1, 2, null, 3]);
  const manifests = filesOf(join(dir, 'points'));
  const indexes = filesOf(join(dir, 'indexes'));
  t.equal(manifests.length, 1);
  t.equal(indexes.length, 1);
  for (const f of [...manifests, ...indexes]) {
    t.ok(isSealed(f), 'sealed');
    t.notOk(f.includes(VM), 'no VM name');
    t.notOk(f.includes('synthetic'), 'no source');
    t.notOk(f.includes('RLFIDX01'), 'no plaintext index magic');
  }
  t.notOk(readFileSync(join(dir, 'config.json')).includes(VM));
  const again = await openRepository(dir, { keyFile });
  t.same(await again.getPoint(p.id), p);
  t.same(
    (await again.listPoints({ vm: VM })).map((x) => x.id),
    [p.id],
  );
  const disk = await again.openDisk(p.id, 'sda');
  t.equal(disk.chunkId(2), null, 'the hole survives the round trip');
  const before = readdirSync(join(dir, 'indexes'));
  await again.writeIndex({ size: 4 * SMALL, chunkSize: SMALL, digests: [disk.chunkId(0), disk.chunkId(1), null, disk.chunkId(3)] });
  t.same(readdirSync(join(dir, 'indexes')), before, 'the same index is stored once');
  await again.setDamaged(p.id, true);
  t.ok(isSealed(readFileSync(join(dir, 'points', `${p.id}.json`))), 'a rewritten manifest stays sealed');
  t.equal((await again.getPoint(p.id)).damaged, true);

  // A plain manifest or index slipped into a v2 encrypted repository is refused.
  const { id: _id, ...rest } = p;
  const forgedId = '20200101T000000Z-abcdef';
  writeFileSync(join(dir, 'points', `${forgedId}.json`), v1Manifest({ id: forgedId, ...rest }));
  const err = await again.getPoint(forgedId).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.ok(err instanceof RestorelabError && err.code === 'POINT_CORRUPT', 'refused');
  t.match((err as Error).message, /plaintext manifest in an encrypted repository of format version 2/);
  const plainIndex = encodeFixedIndex({ size: SMALL, chunkSize: SMALL, digests: [disk.chunkId(0)] });
  const plainName = createHash('sha256').update(plainIndex).digest('hex');
  writeFileSync(join(dir, 'indexes', `${plainName}.fidx`), plainIndex);
  const ierr = await again.readIndex(plainName).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.ok(ierr instanceof RestorelabError && ierr.code === 'INDEX_CORRUPT');
  t.match((ierr as Error).message, /plaintext index/);
});

t.test('an encrypted repository of format v1 (plaintext metadata) still opens, reads old points, writes sealed ones', async (t) => {
  const base = tmpDir(t);
  const keyFile = join(base, 'k');
  const dir = join(base, 'repo');
  const made = await initRepository(dir, { chunkSize: SMALL, keyFile });
  // The point an older restorelab wrote: chunks as ever, a plaintext index named by its SHA-256, a plaintext manifest.
  const sealedPoint = await makePoint(made, 'seed', [7, 8]);
  const digests = [(await made.openDisk(sealedPoint.id, 'sda')).chunkId(0), (await made.openDisk(sealedPoint.id, 'sda')).chunkId(1)];
  const plainIndex = encodeFixedIndex({ size: 2 * SMALL, chunkSize: SMALL, digests });
  const indexDigest = createHash('sha256').update(plainIndex).digest('hex');
  writeFileSync(join(dir, 'indexes', `${indexDigest}.fidx`), plainIndex);
  const oldId = '20240101T000000Z-0a0b0c';
  const oldPoint = {
    id: oldId,
    vm: { name: VM, memoryMiB: 256, vcpus: 1, disks: [{ name: 'sda' }], nics: [] },
    disks: [{ name: 'sda', size: 2 * SMALL, indexDigest }],
    consistency: 'crash',
    time: '2024-01-01T00:00:00.000Z',
    source: 'old',
    stats: { bytesRead: 0, bytesNew: 0, bytesReused: 0, bytesZero: 0, seconds: 0 },
  };
  writeFileSync(join(dir, 'points', `${oldId}.json`), v1Manifest(oldPoint));
  setVersion(dir, 1);

  const repo = await openRepository(dir, { keyFile });
  t.equal(repo.config.version, 1);
  t.same(await repo.getPoint(oldId), oldPoint, 'the plaintext manifest reads');
  const disk = await repo.openDisk(oldId, 'sda');
  t.equal(disk.chunkId(1), digests[1], 'the plaintext index reads');
  t.ok(await disk.readChunk(0));
  t.same((await repo.listPoints()).map((p) => p.id).sort(), [oldId, sealedPoint.id].sort());
  const fresh = await makePoint(repo, VM, [9]);
  const file = readFileSync(join(dir, 'points', `${fresh.id}.json`));
  t.ok(isSealed(file), 'new points in an old repository are sealed');
  t.notOk(file.includes(VM));
});

t.test('an unencrypted repository is unchanged: format v1, plaintext manifests and SHA-256 index names', async (t) => {
  const dir = join(tmpDir(t), 'repo');
  const repo = await initRepository(dir, { chunkSize: SMALL });
  t.equal(repo.config.version, 1);
  const p = await makePoint(repo, VM, [1]);
  const manifest = readFileSync(join(dir, 'points', `${p.id}.json`));
  t.notOk(isSealed(manifest));
  t.ok(manifest.includes(VM), 'the plaintext control: the name is there when nothing is encrypted');
  const [idx] = readdirSync(join(dir, 'indexes'));
  t.equal(
    idx,
    `${createHash('sha256')
      .update(readFileSync(join(dir, 'indexes', idx as string)))
      .digest('hex')}.fidx`,
  );
});

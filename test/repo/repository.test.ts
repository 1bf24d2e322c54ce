import t from 'tap';
import { readdirSync, readFileSync, statSync, writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { initRepository, openRepository } from '../../src/repo/repository.js';
import { CorruptChunkError } from '../../src/repo/contract.js';
import { RestorelabError } from '../../src/errors.js';
import { chunkBytes, makePoint, SMALL, tmpDir } from './fixtures/points.js';

async function rejection(p: Promise<unknown>): Promise<RestorelabError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!(err instanceof RestorelabError)) throw new Error(`expected a RestorelabError, got ${String(err)}`);
  return err;
}

t.test('init writes config, shards and directories; open reads it back', async (t) => {
  const dir = join(tmpDir(t), 'repo');
  const repo = await initRepository(dir, { chunkSize: SMALL });
  t.same(readdirSync(dir).sort(), ['chunks', 'config.json', 'indexes', 'locks', 'points']);
  t.equal(readdirSync(join(dir, 'chunks')).length, 256);
  const again = await openRepository(dir);
  t.same(again.config, repo.config);
  t.equal(again.config.chunkSize, SMALL);
  t.equal(again.config.encryption, 'none');
  t.equal((await initRepository(join(tmpDir(t), 'r2'))).config.chunkSize, 1024 * 1024, 'default 1 MiB');
});

t.test('init refuses a non-empty directory and bad chunk sizes', async (t) => {
  const dir = tmpDir(t);
  writeFileSync(join(dir, 'something'), 'x');
  t.match((await rejection(initRepository(dir))).message, /not empty/);
  for (const bad of [3 * 1024 * 1024, 128 * 1024, 16 * 1024 * 1024, 0, 1.5]) {
    const err = await rejection(initRepository(join(tmpDir(t), 'r'), { chunkSize: bad }));
    t.equal(err.code, 'BAD_CHUNK_SIZE', `chunk size ${bad}`);
    t.match(err.hint ?? '', /--chunk-size/);
  }
});

t.test('open: missing repository, newer version, edited config', async (t) => {
  const missing = await rejection(openRepository(join(tmpDir(t), 'nothing')));
  t.equal(missing.code, 'REPO_NOT_FOUND');
  t.match(missing.hint ?? '', /repo init/);

  const dir = join(tmpDir(t), 'repo');
  await initRepository(dir, { chunkSize: SMALL });
  const cfgPath = join(dir, 'config.json');
  const cfg = JSON.parse(readFileSync(cfgPath, 'utf8')) as Record<string, unknown>;
  writeFileSync(cfgPath, JSON.stringify({ ...cfg, version: 7 }));
  const newer = await rejection(openRepository(dir));
  t.equal(newer.code, 'REPO_VERSION_UNSUPPORTED');
  t.match(newer.message, /repository format version 7 is newer than this restorelab supports \(2\)/);
  t.match(newer.hint ?? '', /upgrade/);

  writeFileSync(cfgPath, JSON.stringify({ ...cfg, chunkSize: 512 * 1024 }));
  t.match((await rejection(openRepository(dir))).message, /fails its checksum/);
  writeFileSync(cfgPath, '{not json');
  const broken = await rejection(openRepository(dir));
  t.equal(broken.code, 'REPO_CONFIG_CORRUPT');
  t.match(broken.message, `repository config ${cfgPath} is not valid JSON: `);
  t.match(broken.message, / at line 1, column 2$/, 'the spot');
  t.notMatch(broken.message, /not json/, 'not the bytes');
  writeFileSync(cfgPath, JSON.stringify({ ...cfg, format: 'not-json-secret' }));
  const foreign = await rejection(openRepository(dir));
  t.equal(foreign.code, 'NOT_A_REPOSITORY');
  t.notMatch(foreign.message, /not-json-secret/, "the file's format value is not echoed");
});

t.test('encryption: key file created at init, required and checked at open', async (t) => {
  const base = tmpDir(t);
  const keyFile = join(base, 'repo.key');
  const repo = await initRepository(join(base, 'repo'), { chunkSize: SMALL, keyFile });
  t.equal(statSync(keyFile).mode & 0o777, 0o600);
  t.match(readFileSync(keyFile, 'utf8'), /^[0-9a-f]{64}\n$/);
  t.equal(repo.config.encryption, 'aes-256-gcm');
  t.equal(repo.config.hash, 'hmac-sha256');
  const point = await makePoint(repo, 'vm1', [1, null, 2]);

  const noKey = await rejection(openRepository(join(base, 'repo')));
  t.equal(noKey.code, 'KEY_REQUIRED');
  t.match(noKey.hint ?? '', /--key-file/);

  const wrongKey = join(base, 'wrong.key');
  writeFileSync(wrongKey, 'ab'.repeat(32) + '\n');
  const wrong = await rejection(openRepository(join(base, 'repo'), { keyFile: wrongKey }));
  t.equal(wrong.code, 'KEY_WRONG');
  t.match(wrong.message, /does not match repository/);

  writeFileSync(join(base, 'junk.key'), 'hello');
  t.equal((await rejection(openRepository(join(base, 'repo'), { keyFile: join(base, 'junk.key') }))).code, 'KEY_FILE_INVALID');

  const opened = await openRepository(join(base, 'repo'), { keyFile });
  const disk = await opened.openDisk(point.id, 'sda');
  t.ok((await disk.readChunk(0))?.equals(chunkBytes(1, SMALL)), 'encryption round trip');
  t.equal(await disk.readChunk(1), null);
  // No chunk file holds the plaintext.
  const digest = disk.chunkId(0) ?? '';
  const stored = readFileSync(join(base, 'repo', 'chunks', digest.slice(0, 2), digest));
  t.equal(stored.indexOf(chunkBytes(1, SMALL).subarray(8, 40)), -1);
});

t.test('points: commit, list, filter, get, openDisk reads back exact bytes', async (t) => {
  const repo = await initRepository(join(tmpDir(t), 'repo'), { chunkSize: SMALL });
  const p1 = await makePoint(repo, 'web', [1, 2, null, 3], { lastLength: 1000, time: '2026-11-01T10:00:00.000Z' });
  const p2 = await makePoint(repo, 'db', [4], { time: '2026-11-02T10:00:00.000Z' });
  t.match(p1.id, /^20261101T100000Z-[0-9a-f]{6}$/);
  t.same(
    (await repo.listPoints()).map((p) => p.id),
    [p1.id, p2.id],
  );
  t.same(
    (await repo.listPoints({ vm: 'db' })).map((p) => p.id),
    [p2.id],
  );
  t.same(await repo.getPoint(p1.id), p1);

  const disk = await repo.openDisk(p1.id, 'sda');
  t.equal(disk.size, 3 * SMALL + 1000);
  t.equal(disk.chunkCount, 4);
  t.ok((await disk.readChunk(0))?.equals(chunkBytes(1, SMALL)));
  t.equal(disk.chunkId(2), null);
  t.ok((await disk.readChunk(3))?.equals(chunkBytes(3, 1000)), 'short last chunk');

  t.equal((await rejection(repo.getPoint('20261101T100000Z-000000'))).code, 'POINT_NOT_FOUND');
  t.equal((await rejection(repo.getPoint('../config'))).code, 'POINT_NOT_FOUND');
  const noDisk = await rejection(repo.openDisk(p1.id, 'sdz'));
  t.equal(noDisk.code, 'DISK_NOT_FOUND');
  t.match(noDisk.message, new RegExp(`${p1.id} has no disk sdz`));
});

t.test('a manifest is visible only once complete; temp files are ignored and reported', async (t) => {
  const dir = join(tmpDir(t), 'repo');
  const repo = await initRepository(dir, { chunkSize: SMALL });
  const p = await makePoint(repo, 'web', [1]);
  // What a writer killed mid-commit leaves: a temp file holding half a manifest.
  const whole = readFileSync(join(dir, 'points', `${p.id}.json`), 'utf8');
  writeFileSync(join(dir, 'points', '.tmp-4242-deadbeef0000'), whole.slice(0, whole.length / 2));
  t.same(
    (await repo.listPoints()).map((x) => x.id),
    [p.id],
  );
  t.same(
    (await repo.leftovers()).map((l) => l.path),
    [join(dir, 'points', '.tmp-4242-deadbeef0000')],
  );
});

t.test('a tampered manifest fails its checksum', async (t) => {
  const dir = join(tmpDir(t), 'repo');
  const repo = await initRepository(dir, { chunkSize: SMALL });
  const p = await makePoint(repo, 'web', [1]);
  const file = join(dir, 'points', `${p.id}.json`);
  writeFileSync(file, readFileSync(file, 'utf8').replace('"web"', '"wab"'));
  t.match((await rejection(repo.getPoint(p.id))).message, /checksum mismatch/);
  t.equal((await rejection(repo.listPoints())).code, 'POINT_CORRUPT');
  t.equal((await repo.scanPoints()).problems.length, 1);
});

t.test('commitPoint refuses a point whose index is missing or the wrong size', async (t) => {
  const repo = await initRepository(join(tmpDir(t), 'repo'), { chunkSize: SMALL });
  const base = {
    vm: { name: 'x', memoryMiB: 1, vcpus: 1, disks: [], nics: [] },
    consistency: 'crash' as const,
    time: new Date().toISOString(),
    source: 's',
    stats: { bytesRead: 0, bytesNew: 0, bytesReused: 0, bytesZero: 0, seconds: 0 },
  };
  t.equal(
    (await rejection(repo.commitPoint({ ...base, disks: [{ name: 'a', size: 1, indexDigest: 'f'.repeat(64) }] }))).code,
    'INDEX_NOT_FOUND',
  );
  const idx = await repo.writeIndex({ size: SMALL, chunkSize: SMALL, digests: [null] });
  t.equal((await rejection(repo.commitPoint({ ...base, disks: [{ name: 'a', size: 2 * SMALL, indexDigest: idx }] }))).code, 'BAD_POINT');
  t.same(await repo.listPoints(), []);
});

t.test('readChunk never returns wrong data: flipped, missing and quarantined chunks reject', async (t) => {
  const dir = join(tmpDir(t), 'repo');
  const repo = await initRepository(dir, { chunkSize: SMALL });
  const p = await makePoint(repo, 'web', [1, 2, 3]);
  const disk = await repo.openDisk(p.id, 'sda');
  const file = (i: number): string => {
    const d = disk.chunkId(i) ?? '';
    return join(dir, 'chunks', d.slice(0, 2), d);
  };
  const blob = readFileSync(file(0));
  blob.writeUInt8(blob.readUInt8(blob.length - 10) ^ 0xff, blob.length - 10);
  writeFileSync(file(0), blob);
  const err = await disk.readChunk(0).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.ok(err instanceof CorruptChunkError);
  t.equal((err as CorruptChunkError).digest, disk.chunkId(0));
  t.match((err as Error).message, /CRC mismatch/);

  await repo.chunks.remove(disk.chunkId(1) ?? '');
  await t.rejects(disk.readChunk(1), { name: 'CorruptChunkError', reason: 'missing from the store' });
  await repo.chunks.quarantine(disk.chunkId(2) ?? '');
  await t.rejects(disk.readChunk(2), { name: 'CorruptChunkError', reason: 'quarantined by verify' });
});

t.test('writeIndex is idempotent and names the index by the hash of its bytes', async (t) => {
  const dir = join(tmpDir(t), 'repo');
  const repo = await initRepository(dir, { chunkSize: SMALL });
  const index = { size: 2 * SMALL, chunkSize: SMALL, digests: ['c'.repeat(64), null] };
  const a = await repo.writeIndex(index);
  t.equal(await repo.writeIndex(index), a);
  t.same(readdirSync(join(dir, 'indexes')), [`${a}.fidx`]);
  t.same(await repo.readIndex(a), index);
  mkdirSync(join(dir, 'unrelated'));
  await t.rejects(repo.writeIndex({ ...index, chunkSize: 2 * SMALL, size: 4 * SMALL }), /differs from the repository/);
});

t.test('a repository and its key file are owner-only; open tightens what an older version left open', async (t) => {
  const { chmodSync } = await import('node:fs');
  const base = tmpDir(t);
  const dir = join(base, 'repo');
  const keyFile = join(base, 'k');
  const repo = await initRepository(dir, { chunkSize: SMALL, keyFile });
  await makePoint(repo, 'web', [1]);
  const mode = (p: string): number => statSync(p).mode & 0o777;
  t.equal(mode(dir) & 0o077, 0, `the repository directory is owner-only (${mode(dir).toString(8)})`);
  t.equal(mode(keyFile) & 0o077, 0, 'the key file is owner-only');
  const chunk = join(dir, 'chunks', repo.codec.digest(chunkBytes(1, SMALL)).slice(0, 2), repo.codec.digest(chunkBytes(1, SMALL)));
  t.equal(mode(chunk) & 0o077, 0, 'a chunk blob is owner-only');
  chmodSync(dir, 0o755);
  chmodSync(keyFile, 0o644);
  await openRepository(dir, { keyFile });
  t.equal(mode(dir), 0o700, 'open tightens the repository directory');
  t.equal(mode(keyFile), 0o600, 'and the key file');
});

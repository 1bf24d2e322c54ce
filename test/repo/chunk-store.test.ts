import t from 'tap';
import { readdirSync, renameSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { RestorelabError } from '../../src/errors.js';
import { dirname, join } from 'node:path';
import type { PlacedBlob } from '../../src/repo/api.js';
import { createShards, LocalChunkStore } from '../../src/repo/chunk-store.js';
import { runChunkStoreSuite } from './fixtures/chunk-store-suite.js';
import { tmpDir } from './fixtures/points.js';

runChunkStoreSuite(t, async (t) => {
  const dir = join(tmpDir(t, 'rl-store-'), 'chunks');
  await createShards(dir);
  const store = new LocalChunkStore(dir);
  return {
    store,
    async age(digest, mtimeMs) {
      const when = new Date(mtimeMs);
      utimesSync(join(dir, digest.slice(0, 2), digest), when, when);
    },
  };
});

t.test('local store: sharded by the first two hex digits, no temp files left behind', async (t) => {
  const dir = join(tmpDir(t, 'rl-store-'), 'chunks');
  await createShards(dir);
  t.equal(readdirSync(dir).length, 256);
  const store = new LocalChunkStore(dir);
  const digest = 'ab' + '1'.repeat(62);
  await store.insert(digest, Buffer.from('x'));
  t.same(readdirSync(join(dir, 'ab')), [digest]);
});

t.test('local store: temp files of a crashed insert are not chunks, and are listed by age', async (t) => {
  const dir = join(tmpDir(t, 'rl-store-'), 'chunks');
  await createShards(dir);
  const store = new LocalChunkStore(dir);
  writeFileSync(join(dir, 'cd', '.tmp-999-abc'), 'partial');
  const old = new Date(Date.now() - 3_600_000);
  utimesSync(join(dir, 'cd', '.tmp-999-abc'), old, old);
  const listed = [];
  for await (const c of store.list()) listed.push(c);
  t.same(listed, []);
  const temps = [];
  for await (const x of store.listTemp(Date.now() - 60_000)) temps.push(x.path);
  t.same(temps, [join(dir, 'cd', '.tmp-999-abc')]);
});

t.test('local store: a full file system fails the insert cleanly, naming store and digest, leaving no temp file', async (t) => {
  const mnt = tmpDir(t, 'rl-full-');
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=512k', 'rl-full', mnt]);
  } catch (err) {
    t.fail(`mounting a 512 KiB tmpfs needs root and the mount command: ${(err as Error).message}`);
    return;
  }
  t.teardown(() => execFileSync('umount', ['-l', mnt]));
  const dir = join(mnt, 'chunks');
  await createShards(dir);
  const store = new LocalChunkStore(dir);
  const data = Buffer.alloc(1024 * 1024, 1);
  const digest = 'ef' + '2'.repeat(62);
  const err = (await store.insert(digest, data).then(
    () => undefined,
    (e: unknown) => e,
  )) as RestorelabError;
  t.ok(err instanceof RestorelabError);
  t.equal(err.code, 'REPO_FULL');
  t.match(err.message, digest);
  t.match(err.message, dir);
  t.match(err.hint ?? '', /free space/);
  t.same(readdirSync(join(dir, 'ef')), [], 'no partial chunk and no temp file');
  t.notOk(await store.has(digest));
});

t.test(
  'local store: insertPlaced has the blob written beside the chunk and renamed onto it; an existing chunk is only touched',
  async (t) => {
    const dir = join(tmpDir(t, 'rl-store-'), 'chunks');
    await createShards(dir);
    const synced: string[] = [];
    const store = new LocalChunkStore(dir, { syncFilesystem: async (d) => void synced.push(d) });
    const digest = 'ab' + '3'.repeat(62);
    const seen: PlacedBlob[] = [];
    const place = async (p: PlacedBlob): Promise<number> => {
      seen.push(p);
      writeFileSync(p.tmp, 'blob bytes', { mode: p.mode, flag: 'wx' });
      renameSync(p.tmp, p.target);
      return 10;
    };
    t.same(await store.insertPlaced(digest, place), { existed: false, size: 10 });
    t.equal(seen.length, 1);
    t.equal(dirname(seen[0]!.tmp), join(dir, 'ab'), "the temp file lies in the chunk's shard");
    t.equal(seen[0]!.target, join(dir, 'ab', digest));
    t.equal(seen[0]!.fsync, false, 'level filesystem: no fsync per blob');
    t.equal(seen[0]!.mode, 0o600);
    t.ok((await store.get(digest)).equals(Buffer.from('blob bytes')));
    t.same(readdirSync(join(dir, 'ab')), [digest], 'no temp file left');
    await store.sync();
    t.same(synced, [dir], 'a placed chunk counts for sync()');
    const old = new Date(Date.now() - 3_600_000);
    utimesSync(join(dir, 'ab', digest), old, old);
    t.same(await store.insertPlaced(digest, place), { existed: true, size: 10 });
    t.equal(seen.length, 1, 'an existing chunk is not written again');
    t.ok(statSync(join(dir, 'ab', digest)).mtimeMs > old.getTime() + 60_000, 'but its mtime is refreshed, as insert() does');
    const fileLevel = new LocalChunkStore(dir, { syncLevel: 'file' });
    await fileLevel.insertPlaced('ab' + '4'.repeat(62), place);
    t.equal(seen.at(-1)!.fsync, true, 'level file: the blob is fsynced');
  },
);

t.test('local store: a failing insertPlaced leaves no temp file and says which store and chunk', async (t) => {
  const dir = join(tmpDir(t, 'rl-store-'), 'chunks');
  await createShards(dir);
  const store = new LocalChunkStore(dir);
  const digest = 'cd' + '5'.repeat(62);
  const err = (await store
    .insertPlaced(digest, async (p) => {
      writeFileSync(p.tmp, 'half');
      throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
    })
    .catch((e: unknown) => e)) as RestorelabError;
  t.equal(err.code, 'REPO_FULL');
  t.match(err.message, digest);
  t.match(err.message, dir);
  t.same(readdirSync(join(dir, 'cd')), [], 'the temp file was removed');
  t.notOk(await store.has(digest));
});

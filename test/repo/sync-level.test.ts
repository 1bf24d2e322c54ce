/**
 * Sync levels (SyncLevel, docs/backup.md "Sync levels"): a restore point is
 * committed only after the chunks it references are durable.
 *
 * The unit tests inject the file-system sync to count and fail it; the
 * integration test runs the real CLI under strace and reads the system calls
 * it made: one syncfs, before any index or manifest is renamed into place,
 * instead of an fsync per chunk.
 */
import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { backupVm } from '../../src/backup/engine.js';
import { RestorelabError } from '../../src/errors.js';
import { exec, which } from '../../src/host/exec.js';
import { FilesystemSyncer, syncFilesystem } from '../../src/host/syncfs.js';
import type { SyncLevel } from '../../src/repo/api.js';
import { initRepository, openRepository } from '../../src/repo/repository.js';
import { projectPath } from '../../src/paths.js';
import type { VmDefinition } from '../../src/vm/definition.js';
import { makePoint, SMALL, tmpDir } from './fixtures/points.js';

const vm: VmDefinition = { name: 'synced', memoryMiB: 64, vcpus: 1, disks: [{ name: 'root', format: 'raw' }], nics: [] };

/** A raw image of `chunks` chunks of incompressible data. */
function image(dir: string, chunks: number, name = 'disk.raw'): string {
  const p = join(dir, name);
  writeFileSync(p, randomBytes(chunks * SMALL));
  return p;
}

function chunkFiles(repoDir: string): string[] {
  const root = join(repoDir, 'chunks');
  return readdirSync(root).flatMap((shard) => readdirSync(join(root, shard)).filter((n) => /^[0-9a-f]{64}$/.test(n)));
}

function indexFiles(repoDir: string): string[] {
  return readdirSync(join(repoDir, 'indexes')).filter((n) => n.endsWith('.fidx'));
}

/** A repository whose file-system sync is counted, and fails while `failing` is set. */
async function countedRepo(dir: string): Promise<{ calls: string[]; failing: { on: boolean }; repoDir: string }> {
  const repoDir = join(dir, 'repo');
  await initRepository(repoDir, { chunkSize: SMALL });
  return { calls: [], failing: { on: false }, repoDir };
}

function open(repoDir: string, calls: string[], failing: { on: boolean }, syncLevel?: SyncLevel) {
  return openRepository(repoDir, {
    ...(syncLevel ? { syncLevel } : {}),
    syncFilesystem: async (d) => {
      calls.push(d);
      if (failing.on) throw new Error('injected: the disk went away');
    },
  });
}

t.test('a failing sync commits nothing: no point, no index, the new chunks rolled back, and a clear error', async (t) => {
  const dir = tmpDir(t, 'rl-sync-fail-');
  const { calls, failing, repoDir } = await countedRepo(dir);
  const repo = await open(repoDir, calls, failing);
  const img = image(dir, 6);
  failing.on = true;
  const err = (await backupVm({ repo, vm, disks: { root: img } }).then(
    () => undefined,
    (e: unknown) => e,
  )) as RestorelabError;
  t.ok(err instanceof RestorelabError, 'a RestorelabError');
  t.equal(err.code, 'REPO_SYNC_FAILED');
  t.match(err.message, /cannot make the chunks of store .*\/chunks durable \(sync level filesystem\): injected: the disk went away/);
  t.match(err.hint ?? '', /nothing was committed/);
  t.equal(err.exitCode, 1);
  t.same(calls, [join(repoDir, 'chunks')], 'the chunk store asked for one sync of its own directory');
  t.same(await repo.listPoints(), [], 'no restore point is visible');
  t.same(indexFiles(repoDir), [], 'no index was written before the sync');
  t.same(chunkFiles(repoDir), [], "the failed backup's chunks were rolled back");
  t.same(await repo.leftovers(), [], 'no temp files');

  failing.on = false;
  const point = await backupVm({ repo, vm, disks: { root: img } });
  t.equal(calls.length, 2, 'the next backup syncs once');
  t.same(
    (await repo.listPoints()).map((p) => p.id),
    [point.id],
  );
  t.equal(chunkFiles(repoDir).length, 6);
});

t.test('commitPoint syncs chunks found or stored since the last sync, whoever called it', async (t) => {
  const dir = tmpDir(t, 'rl-sync-commit-');
  const { calls, failing, repoDir } = await countedRepo(dir);
  const writer = await open(repoDir, calls, failing);
  const first = await makePoint(writer, 'a', [1, 2, null]);
  t.equal(calls.length, 1, 'one sync for a point of two new chunks (writeIndex; commitPoint had nothing left)');

  // A second writer only finds chunk 1 (touch, as the engine does): another process may have stored it
  // without syncing yet, so its commit must sync too. Here that sync fails: nothing becomes visible.
  const other = await open(repoDir, calls, failing);
  const index = await writer.readIndex((first.disks[0] as { indexDigest: string }).indexDigest);
  t.equal(await other.chunks.touch(index.digests[0] as string), true);
  failing.on = true;
  await t.rejects(
    other.commitPoint({ ...first, vm: { ...first.vm, name: 'b' } }),
    { code: 'REPO_SYNC_FAILED' },
    'commitPoint refuses when the sync fails',
  );
  t.same(
    (await writer.listPoints()).map((p) => p.vm.name),
    ['a'],
    'only the first point is visible',
  );
  failing.on = false;
  const calls0 = calls.length;
  await other.commitPoint({ ...first, vm: { ...first.vm, name: 'b' } });
  t.equal(calls.length, calls0 + 1, 'and syncs once it can');
  await makePoint(other, 'c', [null, null]);
  t.equal(calls.length, calls0 + 1, 'a point of holes only, with nothing stored or found since, needs no sync');
});

t.test('levels file and none never sync the file system; filesystem syncs once per backup, even when every chunk is reused', async (t) => {
  const dir = tmpDir(t, 'rl-sync-levels-');
  const img = image(dir, 5);
  for (const level of ['file', 'none'] as const) {
    const { calls, failing, repoDir } = await countedRepo(join(dir, level));
    failing.on = true;
    const repo = await open(repoDir, calls, failing, level);
    await backupVm({ repo, vm, disks: { root: img } });
    await backupVm({ repo, vm, disks: { root: img } });
    t.same(calls, [], `${level}: no file-system sync (and a failing one never matters)`);
    t.equal((await repo.listPoints()).length, 2);
  }
  const { calls, failing, repoDir } = await countedRepo(join(dir, 'filesystem'));
  const repo = await open(repoDir, calls, failing, 'filesystem');
  const p1 = await backupVm({ repo, vm, disks: { root: img } });
  t.equal(calls.length, 1, 'first backup: one sync');
  const again = await open(repoDir, calls, failing, 'filesystem');
  const p2 = await backupVm({ repo: again, vm, disks: { root: img } });
  t.equal(p2.stats.bytesNew, 0, 'the second backup stores nothing new');
  t.equal(calls.length, 2, 'second backup (a new process, all chunks reused): one sync, for chunks another writer may not have synced');
  t.not(p1.id, p2.id);
});

t.test('syncFilesystem runs syncfs on a real directory, and names the directory and the failure otherwise', async (t) => {
  const dir = tmpDir(t, 'rl-syncfs-');
  await syncFilesystem(dir);
  const missing = join(dir, 'not-there');
  await t.rejects(syncFilesystem(missing), new RegExp(`sync -f ${missing} failed: exit 1: .*No such file or directory`));
  const repoDir = join(dir, 'repo');
  await initRepository(repoDir, { chunkSize: SMALL });
  const repo = await openRepository(repoDir);
  t.equal((repo.chunks as { syncLevel?: string }).syncLevel, 'filesystem', 'the default level');
  await makePoint(repo, 'real', [7, 8]);
  t.equal((await repo.listPoints()).length, 1);
});

t.test('FilesystemSyncer: syncs in order through one waiting shell, names the failure, and never keeps a process alive', async (t) => {
  const dir = tmpDir(t, 'rl-syncer-');
  const syncer = new FilesystemSyncer(dir);
  syncer.start();
  await Promise.all([syncer.sync(), syncer.sync(), syncer.sync()]);
  syncer.close();
  await syncer.sync();
  t.pass('a sync right after close() (the idle timeout does the same) starts a new shell instead of failing');
  const inFlight = syncer.sync();
  syncer.close();
  await t.rejects(inFlight, /the syncer was closed/, 'close() rejects a sync in flight');
  await syncer.sync();
  syncer.close();
  const missing = new FilesystemSyncer(join(dir, 'not-there'));
  await t.rejects(missing.sync(), new RegExp(`sync -f ${dir}/not-there failed: exit 1: .*No such file or directory`));
  await t.rejects(missing.sync(), /exit 1/, 'the shell survives a failed sync and answers the next');
  missing.close();
  // A process whose syncer is idle exits at once (not after the idle timeout); one with a sync in flight waits for it.
  const script = `
    const { FilesystemSyncer } = await import(${JSON.stringify(new URL('../../src/host/syncfs.js', import.meta.url).href)});
    const s = new FilesystemSyncer(${JSON.stringify(dir)});
    s.start();
    await s.sync();
    void s.sync().then(() => process.stdout.write('second sync done'));`;
  const started = Date.now();
  const r = await exec(process.execPath, ['--input-type=module', '-e', script], { timeoutMs: 20_000 });
  t.equal(r.code, 0, r.stderr);
  t.equal(r.stdout, 'second sync done', 'the sync in flight was waited for');
  t.ok(Date.now() - started < 5_000, `exited in ${Date.now() - started} ms, not after the 10 s idle timeout`);
});

/** What one traced CLI backup did: its fsyncs, syncfs calls and renames into indexes/ and points/, in order. */
async function tracedBackup(
  t: Test,
  dir: string,
  level: SyncLevel,
  chunks: number,
): Promise<{ fsyncs: number; syncfs: number[]; commits: number[]; chunks: number[] }> {
  const home = join(dir, level);
  const repoDir = join(home, 'repo');
  await initRepository(repoDir, { chunkSize: SMALL });
  const img = image(home, chunks);
  const vmFile = join(home, 'vm.json');
  writeFileSync(vmFile, JSON.stringify(vm));
  const trace = join(home, 'strace.txt');
  const env = { ...process.env, RESTORELAB_HOME: home, RESTORELAB_STATE_DIR: join(home, 'state'), RESTORELAB_SYNC_LEVEL: level };
  const args = [
    '-f',
    '-qq',
    '-o',
    trace,
    '-e',
    'trace=fsync,fdatasync,syncfs,rename,renameat,renameat2',
    process.execPath,
    projectPath('bin', 'restorelab.js'),
    'backup',
    '--repo',
    repoDir,
    '--vm',
    vmFile,
    '--disk',
    `root=${img}`,
    '--no-after-backup',
    '--json',
  ];
  const code = await new Promise<number | null>((resolve, reject) => {
    const child = spawn('strace', args, { env, stdio: ['ignore', 'ignore', 'inherit'] });
    child.on('error', reject);
    child.on('close', resolve);
  });
  t.equal(code, 0, `${level}: the traced backup succeeded`);
  const lines = readFileSync(trace, 'utf8').split('\n');
  const at = (re: RegExp): number[] => lines.flatMap((l, i) => (re.test(l) ? [i] : []));
  return {
    fsyncs: at(/\bf(data)?sync\(/).length,
    syncfs: at(/\bsyncfs\(/),
    commits: at(/rename(at2?)?\(.*\/(indexes|points)\/[^"]*\.(fidx|json)"/),
    chunks: at(/rename(at2?)?\(.*\/chunks\/[0-9a-f]{2}\/[0-9a-f]{64}"/),
  };
}

t.test(
  'the real CLI: a syncfs after the last chunk and before the index and manifest renames, instead of an fsync per chunk',
  async (t) => {
    if (!which('strace')) throw new Error('strace is missing (apt-get install strace): this test reads the system calls of a backup');
    const probe = await exec('strace', ['-f', '-qq', '-o', '/dev/null', 'true']);
    if (probe.code !== 0) throw new Error(`strace cannot trace here: ${probe.stderr.trim()}`);
    const dir = tmpDir(t, 'rl-sync-strace-');
    const chunks = 24;
    const fs = await tracedBackup(t, dir, 'filesystem', chunks);
    // The first flushes what was dirty before the backup (ChunkStore.prepareSync); the last covers its chunks.
    t.equal(fs.syncfs.length, 2, 'filesystem: two syncfs, one when the backup starts and one at the end');
    t.equal(fs.commits.length, 2, 'one index and one manifest renamed into place');
    t.equal(fs.chunks.length, chunks, 'every new chunk renamed into place');
    const last = fs.syncfs.at(-1) ?? -1;
    t.ok(last > Math.max(...fs.chunks), 'the last syncfs comes after the last chunk');
    t.ok(last < Math.min(...fs.commits), 'and before the index and the manifest');

    const file = await tracedBackup(t, dir, 'file', chunks);
    t.equal(file.syncfs.length, 0, 'file: no syncfs');
    // The rest (index, manifest, lock files, the SQLite catalog) is the same at both levels.
    t.ok(fs.fsyncs < chunks, `filesystem: ${fs.fsyncs} fsyncs for ${chunks} new chunks, none per chunk`);
    t.ok(
      file.fsyncs - fs.fsyncs >= 2 * chunks,
      `file: ${file.fsyncs} fsyncs, ${file.fsyncs - fs.fsyncs} more: a file and a shard fsync per chunk`,
    );
  },
);

t.test(
  'early flushes while reading: a sync per earlyFlushBytes of new blobs, then the final one; a failing one fails the backup',
  async (t) => {
    const dir = tmpDir(t, 'rl-sync-early-');
    const { calls, failing, repoDir } = await countedRepo(dir);
    const repo = await open(repoDir, calls, failing);
    const img = image(dir, 12);
    // Blobs of incompressible chunks are a little larger than the chunk: one flush per 4 of them.
    await backupVm({ repo, vm, disks: { root: img }, earlyFlushBytes: 4 * SMALL });
    t.ok(calls.length >= 3 && calls.length <= 4, `early flushes and the final sync (${calls.length} syncs for 12 new chunks)`);

    // The early flush is the one that fails (the final sync would succeed): the backup must fail all the same.
    const calls0 = calls.length;
    let n = 0;
    const flaky = await openRepository(repoDir, {
      syncFilesystem: async (d) => {
        calls.push(d);
        if (++n === 1) throw new Error('injected: writeback failed');
      },
    });
    const err = (await backupVm({ repo: flaky, vm, disks: { root: image(dir, 12, 'other.raw') }, earlyFlushBytes: 4 * SMALL }).then(
      () => undefined,
      (e: unknown) => e,
    )) as RestorelabError;
    t.ok(err instanceof RestorelabError, 'a RestorelabError');
    t.equal(err.code, 'REPO_SYNC_FAILED');
    t.match(err.message, /injected: writeback failed/);
    t.ok(calls.length > calls0, 'an early flush ran');
    t.equal((await flaky.listPoints()).length, 1, 'no new point');
    t.equal(chunkFiles(repoDir).length, 12, "the failed backup's chunks were rolled back");
  },
);

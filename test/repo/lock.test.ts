import t, { type Test } from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readdirSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { initRepository } from '../../src/repo/repository.js';
import { liveLocks } from '../../src/repo/lock.js';
import { RestorelabError } from '../../src/errors.js';
import { SMALL, tmpDir } from './fixtures/points.js';

const child = fileURLToPath(new URL('./fixtures/lock-child.js', import.meta.url));

async function spawnHolder(t: Test, dir: string, kind: string): Promise<ChildProcess> {
  const proc = spawn(process.execPath, [child, dir, kind], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
  });
  let out = '';
  proc.stdout?.setEncoding('utf8');
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('lock child did not report within 30 s')), 30_000);
    proc.stdout?.on('data', (d: string) => {
      out += d;
      if (out.includes('locked')) {
        clearTimeout(timer);
        resolve();
      }
    });
    proc.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`lock child exited with ${code}`));
    });
  });
  return proc;
}

async function busy(p: Promise<unknown>): Promise<RestorelabError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!(err instanceof RestorelabError) || err.code !== 'REPO_BUSY') throw new Error(`expected REPO_BUSY, got ${String(err)}`);
  return err;
}

t.test('shared locks coexist; exclusive excludes everyone; gc runs beside shared only', async (t) => {
  const repo = await initRepository(join(tmpDir(t), 'repo'), { chunkSize: SMALL });
  const s1 = await repo.lock('shared', 'backup a');
  const s2 = await repo.lock('shared', 'backup b');
  const err = await busy(repo.lock('exclusive', 'prune'));
  t.match(err.message, /shared lock for "backup [ab]" held by pid \d+ on/);
  t.equal(err.exitCode, 6);
  const gc = await repo.lock('gc', 'gc');
  await busy(repo.lock('gc', 'gc 2'));
  t.equal((await liveLocks(repo.locksDir)).length, 3);
  await s1.release();
  await s2.release();
  await busy(repo.lock('exclusive', 'prune'));
  await gc.release();
  const ex = await repo.lock('exclusive', 'prune');
  await busy(repo.lock('shared', 'backup c'));
  t.ok(ex.since <= Date.now());
  await ex.release();
  await ex.release();
  t.same(readdirSync(repo.locksDir), [], 'released locks leave no files (and no failed-attempt files)');
});

t.test('a lock held by another live process blocks; after kill -9 it is reported stale and taken over', async (t) => {
  const repo = await initRepository(join(tmpDir(t), 'repo'), { chunkSize: SMALL });
  const proc = await spawnHolder(t, repo.path, 'exclusive');
  const err = await busy(repo.lock('shared', 'backup'));
  t.match(err.message, new RegExp(`held by pid ${proc.pid} on ${hostname()}`));
  t.match(err.hint ?? '', /delete .*\.lock/);
  proc.kill('SIGKILL');
  await once(proc, 'exit');
  const lock = await repo.lock('exclusive', 'prune');
  t.equal(lock.staleRemoved.length, 1);
  t.equal(lock.staleRemoved[0]?.pid, proc.pid);
  t.equal(lock.staleRemoved[0]?.purpose, 'lock-child');
  t.equal(readdirSync(repo.locksDir).length, 1, 'only our own lock file remains');
  await lock.release();
});

t.test('a reused pid is not mistaken for the holder (start time differs)', async (t) => {
  const repo = await initRepository(join(tmpDir(t), 'repo'), { chunkSize: SMALL });
  // Our own pid is alive, but a holder that started at another time is a different process.
  writeFileSync(
    join(repo.locksDir, 'exclusive-old.lock'),
    JSON.stringify({
      kind: 'exclusive',
      purpose: 'old run',
      pid: process.pid,
      hostname: hostname(),
      since: 1,
      startTicks: 1,
    }),
  );
  const lock = await repo.lock('shared', 'backup');
  t.same(
    lock.staleRemoved.map((h) => h.purpose),
    ['old run'],
  );
  await lock.release();
});

t.test('a holder on another host counts as live', async (t) => {
  const repo = await initRepository(join(tmpDir(t), 'repo'), { chunkSize: SMALL });
  writeFileSync(
    join(repo.locksDir, 'shared-elsewhere.lock'),
    JSON.stringify({
      kind: 'shared',
      purpose: 'remote backup',
      pid: 1,
      hostname: 'some-other-host',
      since: 1000,
    }),
  );
  const live = await liveLocks(repo.locksDir);
  t.same(
    live.map((h) => h.since),
    [1000],
  );
  await busy(repo.lock('exclusive', 'prune'));
});

import t from 'tap';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { initRepository, openRepository } from '../../src/repo/repository.js';
import { verifyRepository } from '../../src/repo/verify.js';
import { collectGarbage } from '../../src/repo/gc.js';
import { SMALL, tmpDir } from './fixtures/points.js';

const child = fileURLToPath(new URL('./fixtures/commit-child.js', import.meta.url));

t.test('kill -9 while writing points: only complete points are visible, verify and gc stay clean', async (t) => {
  const dir = join(tmpDir(t, 'rl-crash-'), 'repo');
  await initRepository(dir, { chunkSize: SMALL });
  for (const delayMs of [0, 7, 23]) {
    const proc = spawn(process.execPath, [child, dir], { stdio: ['ignore', 'pipe', 'inherit'] });
    t.teardown(() => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
    });
    let commits = 0;
    proc.stdout?.setEncoding('utf8');
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('commit child made no progress in 60 s')), 60_000);
      proc.stdout?.on('data', (d: string) => {
        commits += d.split('\n').filter((l) => l.startsWith('committed')).length;
        if (commits >= 2) {
          clearTimeout(timer);
          setTimeout(resolve, delayMs);
        }
      });
      proc.on('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`commit child exited with ${code}`));
      });
    });
    proc.kill('SIGKILL');
    await once(proc, 'exit');
  }

  const repo = await openRepository(dir);
  const points = await repo.listPoints();
  t.ok(points.length >= 6, `${points.length} complete points visible`);
  t.same(
    readdirSync(join(dir, 'points')).filter((f) => !f.startsWith('.tmp-')).length,
    points.length,
    'no half-written manifest under a real name',
  );
  const report = await verifyRepository(repo);
  t.equal(report.ok, true, 'every visible point verifies');
  t.equal(report.staleLocksRemoved.length, 1, "the last killed writer's lock is reported stale (each new writer took over the one before)");
  t.equal(report.staleLocksRemoved[0]?.purpose, 'commit-child');

  // gc with no margin left: what the killed writers left unreferenced goes; every point still verifies.
  const gc = await collectGarbage(repo, { safetyMarginMs: -60_000 });
  t.equal(gc.chunksReferenced, gc.chunksTotal - gc.chunksRemoved);
  t.same(await repo.leftovers(), [], 'no temp files left after gc');
  t.equal((await verifyRepository(repo)).ok, true);
  t.equal((await repo.listPoints()).length, points.length);
});

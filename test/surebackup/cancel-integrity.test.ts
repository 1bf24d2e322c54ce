// A real repository with a flipped chunk byte, and a real-guest run cancelled mid-way.
import t from 'tap';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { openRepository } from '../../src/repo/repository.js';
import { integrityTest } from '../../src/verify/integrity.js';
import { createTestRunner } from '../../src/verify/tests.js';
import { resolveRole } from '../../src/surebackup/roles.js';
import { History } from '../../src/surebackup/history.js';
import { createLabBackend } from '../../src/surebackup/backend.js';
import { executeRun } from '../../src/surebackup/execute.js';
import type { Job } from '../../src/surebackup/runner.js';
import type { TestRunner } from '../../src/verify/contract.js';
import { readLabState } from '../../src/lab/lab.js';
import { shortDir, guestRepository, labFile, leftovers } from './fixtures/guest-lab.js';
import { subnet } from '../helpers/subnets.js';

t.test('a flipped chunk byte fails the integrity test and names the chunk', async (t) => {
  const dir = shortDir(t);
  const { repo, points } = await guestRepository(dir, ['web']);
  const reader = await openRepository(repo);
  const point = points.web!;
  const ok = await integrityTest(reader, point.id);
  t.equal(ok.result, 'passed', ok.detail);
  const disk = await reader.openDisk(point.id, 'root');
  let victim = 0;
  while (disk.chunkId(victim) === null) victim++;
  const digest = disk.chunkId(victim)!;
  const file = join(repo, 'chunks', digest.slice(0, 2), digest);
  const bytes = readFileSync(file);
  const at = Math.floor(bytes.length / 2);
  bytes[at] = bytes[at]! ^ 0x40;
  writeFileSync(file, bytes);
  const bad = await integrityTest(await openRepository(repo), point.id);
  t.equal(bad.result, 'failed');
  t.same(
    bad.corrupt.map((c) => [c.disk, c.index, c.digest]),
    [['root', victim, digest]],
  );
  t.match(bad.detail, `root chunk #${victim} ${digest}`);
  // The same verdict through the TestRunner the jobs use.
  const run = createTestRunner({ repo: () => openRepository(repo), screenshotDir: dir });
  const viaRunner = await run(
    { kind: 'integrity' },
    {
      name: 'web',
      pointId: point.id,
      role: resolveRole('web', 'web', {}),
      handle: { ip: '', masqIp: '', netns: '', screendump: async () => '', stop: async () => undefined },
    },
    new AbortController().signal,
  );
  t.equal(viaRunner.result, 'failed');
  t.match(viaRunner.detail, digest);
});

t.test('a job cancelled mid-run leaves no VM, namespace, mount or publication', async (t) => {
  const dir = shortDir(t);
  const stateDir = join(dir, 'state');
  const { repo } = await guestRepository(dir, ['web']);
  const backend = createLabBackend({ repo, stateDir, driver: 'qemu', accel: 'tcg' });
  const history = await History.open(join(stateDir, 'catalog.sqlite'));
  t.teardown(async () => {
    history.close();
    await backend.labDown().catch(() => undefined);
    await backend.close();
  });
  let netns: string | undefined;
  const origUp = backend.labUp.bind(backend);
  backend.labUp = async (l, s) => {
    const r = await origUp(l, s);
    netns = r.netns;
    return r;
  };
  const labName = `sbc${process.pid % 10000}`;
  const job: Job = {
    name: 'cancelled',
    lab: labFile(dir, labName, subnet('surebackup/cancel-integrity')),
    point: 'latest',
    concurrency: 1,
    applicationGroup: [],
    verify: { vms: ['web'], role: 'web', maxBootSeconds: 150 },
    keepLabOnFailure: true,
  };
  const ac = new AbortController();
  const real = createTestRunner({ repo: () => backend.reader(), screenshotDir: join(dir, 'shots') });
  let sawRunning = false;
  // Cancel once the VM is up and its tests are under way.
  const runTest: TestRunner = async (spec, vm, signal) => {
    if (spec.kind === 'tcp') {
      sawRunning = (await leftovers(stateDir, netns)).some((l) => l.startsWith('process:'));
      ac.abort(new Error('cancelled by the test'));
    }
    return real(spec, vm, signal);
  };
  await t.rejects(
    executeRun({
      job,
      backend,
      repo: () => backend.reader(),
      stateDir,
      history,
      trigger: 'manual',
      signal: ac.signal,
      runTest,
      log: { warn: () => undefined },
    }),
    /cancelled by the test/,
  );
  t.ok(sawRunning, 'the VM was running when the job was cancelled');
  t.same(await leftovers(stateDir, netns), [], 'nothing left, even with keepLabOnFailure');
  t.equal(readLabState(stateDir, labName), undefined, 'lab down');
  t.equal((await history.lastRuns({ job: 'cancelled' }))[0]!.status, 'cancelled');
});

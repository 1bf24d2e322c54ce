/**
 * Live backup of a QEMU VM the test started itself (plain -drive, -qmp, a
 * guest-agent chardev), while a process in the guest writes continuously:
 * two filesystem-consistent backups through the CLI; the second reads only
 * the chunks the dirty bitmap marks; both restored points pass e2fsck -fn and
 * hold what was written (unsynced) before their freeze and nothing written
 * after it; the VM never stops; nothing of ours is left in QEMU but the
 * bitmap of the latest point.
 */
import t from 'tap';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openRepository } from '../../src/repo/index.js';
import { QmpClient } from '../../src/hypervisor/qmp.js';
import { startLiveVm, restoredRoot, type LiveVm } from '../helpers/live-vm.js';
import { cliIn } from '../helpers/cli.js';

const work = await mkdtemp(join(tmpdir(), 'rl-live-qmp-'));
const cli = cliIn(work);
let vm: LiveVm | undefined;
t.teardown(async () => {
  await vm?.stop();
  await rm(work, { recursive: true, force: true });
});

async function qmpQuery<T>(socket: string, command: string, args?: Record<string, unknown>): Promise<T> {
  const q = await QmpClient.connect(socket);
  try {
    return await q.execute<T>(command, args);
  } finally {
    await q.close();
  }
}

t.test('two live backups of a running, writing guest', async (t) => {
  vm = await startLiveVm(work, { format: 'qcow2' });
  const repo = join(work, 'repo');
  t.equal((await cli(['repo', 'init', repo, '--chunk-size', '256K', '--json'])).code, 0);
  const vmFile = join(work, 'web.json');
  await writeFile(vmFile, JSON.stringify({ name: 'web', memoryMiB: 256, vcpus: 1, disks: [{ name: 'root', format: 'qcow2' }], nics: [] }));
  // The writer: a counter and a log, rewritten ten times a second for the whole test.
  await vm.spawnInGuest(
    'i=0; while :; do i=$((i+1)); echo $i > /cnt.tmp; mv /cnt.tmp /counter; echo line$i >> /writer.log; sleep 0.1; done',
  );
  await vm.sh('sleep 1; echo first > /m1'); // no sync: only the freeze flushes it
  const backup = () =>
    cli([
      'backup',
      '--repo',
      repo,
      '--vm',
      vmFile,
      '--qmp',
      vm!.qmp,
      '--qga',
      vm!.qga,
      '--consistency',
      'filesystem',
      '--no-after-backup',
      '--json',
    ]);

  const b1 = await backup();
  t.equal(b1.code, 0, b1.stderr);
  t.match(b1.json, { vm: 'web', consistency: 'filesystem', changedBlockTracking: { used: false, reason: /no earlier restore point/ } });
  // Bounded by the freeze and snapshot limits; the < 1 s target is measured by bench/live-backup.ts (TCG and a loaded host here).
  const freeze1 = b1.json.freezeMs as number;
  t.ok(freeze1 >= 0 && freeze1 < 30_000, `guest frozen ${freeze1} ms`);
  const read1 = (b1.json.stats as { bytesRead: number }).bytesRead;
  const after1 = Number((await vm.sh('cat /counter')).stdout);

  // About 3% of the 64 MiB disk changes, plus the writer's own blocks.
  await vm.sh('dd if=/dev/urandom of=/data bs=64k count=32 2>/dev/null; echo second > /m2');
  const b2 = await backup();
  t.equal(b2.code, 0, b2.stderr);
  t.match(b2.json, {
    consistency: 'filesystem',
    changedBlockTracking: { used: true, reason: /dirty bitmap restorelab-.*root: \d+ of 256 chunks changed/ },
  });
  const read2 = (b2.json.stats as { bytesRead: number }).bytesRead;
  const changed = Number(/root: (\d+) of/.exec((b2.json.changedBlockTracking as { reason: string }).reason)?.[1]);
  t.ok(read2 > 0 && read2 <= changed * 256 * 1024, `second backup read ${read2} bytes: only the ${changed} changed chunks`);
  t.ok(read2 * 2 < read1, `second read ${read2} bytes, first ${read1}`);
  t.ok(changed < 64, `${changed} of 256 chunks dirty`);

  t.equal(await vm.status(), 'running', 'the VM kept running');
  t.equal(vm.child.exitCode, null, 'the QEMU process never exited');
  const later = Number((await vm.sh('cat /counter')).stdout);
  t.ok(later > after1, `the writer kept writing (${after1} -> ${later})`);

  const r = await openRepository(repo);
  const p1 = await restoredRoot(r, b1.json.restorePoint as string, work);
  t.equal(p1.fsck.code, 0, `point 1 is clean: ${p1.fsck.out}`);
  t.equal(await p1.read('/m1'), 'first\n', 'point 1 holds what was written before its freeze');
  t.equal(await p1.read('/m2'), undefined, 'and nothing written after it');
  const c1 = Number(await p1.read('/counter'));
  t.ok(c1 > 0 && c1 <= after1, `point 1's counter ${c1} is one the guest had written (<= ${after1})`);
  const p2 = await restoredRoot(r, b2.json.restorePoint as string, work);
  t.equal(p2.fsck.code, 0, `point 2 is clean: ${p2.fsck.out}`);
  t.equal(await p2.read('/m1'), 'first\n');
  t.equal(await p2.read('/m2'), 'second\n', 'point 2 holds what was written before its freeze');
  t.ok(Number(await p2.read('/counter')) > c1, 'point 2 has a later counter');

  // Only the latest point's bitmap stays; no node, job or export of ours.
  const nodes = await qmpQuery<{ 'node-name': string; 'dirty-bitmaps'?: { name: string; persistent: boolean }[] }[]>(
    vm.qmp,
    'query-named-block-nodes',
    { flat: true },
  );
  t.same(
    nodes.filter((n) => n['node-name'].startsWith('restorelab-')),
    [],
    'no fleecing node left',
  );
  const bitmaps = nodes.flatMap((n) => n['dirty-bitmaps'] ?? []).filter((b) => b.name.startsWith('restorelab-'));
  t.equal(bitmaps.length, 1, "one bitmap: the latest point's");
  t.equal(bitmaps[0]?.persistent, true, 'persistent on a qcow2 disk');
  t.same(await qmpQuery(vm.qmp, 'query-block-exports'), []);
  t.same(await qmpQuery(vm.qmp, 'query-jobs'), []);

  const pts = await cli(['points', '--repo', repo, '--json']);
  t.match(pts.json, { points: [{ consistency: 'filesystem' }, { consistency: 'filesystem' }] });
});

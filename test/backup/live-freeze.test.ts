/**
 * Freeze failures of a live backup: a guest without an agent, and a guest
 * whose agent hangs (stopped with SIGSTOP). Either way the point is
 * crash-consistent with the reason recorded in it and in the JSON, the
 * guest is not left frozen (it writes and syncs right after), and with
 * --require-consistency the backup fails before anything is taken.
 */
import t from 'tap';
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openRepository } from '../../src/repo/index.js';
import { startLiveVm, type LiveVm } from '../helpers/live-vm.js';
import { cliIn } from '../helpers/cli.js';
import { waitForAgent } from '../../src/hypervisor/qga.js';

const work = await mkdtemp(join(tmpdir(), 'rl-live-freeze-'));
const cli = cliIn(work);
const vms: LiveVm[] = [];
t.teardown(async () => {
  for (const v of vms) await v.stop();
  await rm(work, { recursive: true, force: true });
});
const repo = join(work, 'repo');
const vmFile = join(work, 'vm.json');
await writeFile(vmFile, JSON.stringify({ name: 'frz', memoryMiB: 256, vcpus: 1, disks: [{ name: 'root', format: 'raw' }], nics: [] }));

t.before(async () => {
  const r = await cli(['repo', 'init', repo, '--chunk-size', '1M', '--json']);
  if (r.code !== 0) throw new Error(r.stderr);
});

const backup = (vm: LiveVm, ...extra: string[]) =>
  cli([
    'backup',
    '--repo',
    repo,
    '--vm',
    vmFile,
    '--qmp',
    vm.qmp,
    '--qga',
    vm.qga,
    '--consistency',
    'filesystem',
    '--no-after-backup',
    '--json',
    ...extra,
  ]);

t.test('a guest without an agent: crash-consistent point, reason recorded', async (t) => {
  const dir = join(work, 'no-agent');
  await mkdir(dir);
  const vm = await startLiveVm(dir, { variant: 'no-agent', format: 'raw', agent: false });
  vms.push(vm);
  const b = await backup(vm);
  t.equal(b.code, 0, b.stderr);
  t.match(b.json, { consistency: 'crash', consistencyReason: /guest agent not reachable/ });
  t.notOk('freezeMs' in b.json, 'nothing was frozen');
  const point = await (await openRepository(repo)).getPoint(b.json.restorePoint as string);
  t.match(point, { consistency: 'crash', capture: { consistencyWanted: 'filesystem', consistencyReason: /guest agent not reachable/ } });
  t.equal(await vm.status(), 'running');

  const strict = await backup(vm, '--require-consistency');
  t.equal(strict.code, 1, 'required consistency cannot be had: the backup fails');
  t.match(strict.json, { error: { code: 'LIVE_CONSISTENCY_NOT_REACHED' } });
  t.equal((await (await openRepository(repo)).listPoints({ vm: 'frz' })).length, 1, 'and leaves no point');
});

t.test('a hung agent: crash-consistent, and the guest is not left frozen', async (t) => {
  const dir = join(work, 'hung');
  await mkdir(dir);
  const vm = await startLiveVm(dir, { format: 'raw' });
  vms.push(vm);
  // The agent stops answering for 40 s; its child (this shell) lives on and wakes it.
  await vm.spawnInGuest('p=$(pidof qemu-ga); kill -STOP $p; sleep 40; kill -CONT $p');
  await new Promise((r) => setTimeout(r, 2000));
  const started = Date.now();
  const b = await backup(vm);
  t.equal(b.code, 0, b.stderr);
  t.match(b.json, { consistency: 'crash', consistencyReason: /guest agent not reachable/ });
  t.ok(Date.now() - started < 35_000, 'the hung agent cost a bounded wait');
  (await waitForAgent(vm.qga, 120_000)).close();
  // A frozen filesystem would block this write and sync past the timeout.
  const w = await vm.sh('timeout 10 sh -c "echo after > /after && sync" && cat /after');
  t.equal(w.exitcode, 0, 'the guest writes and syncs after the backup');
  t.equal(w.stdout, 'after\n');
  const st = await vm.sh('echo ok');
  t.equal(st.stdout, 'ok\n');
});

/**
 * The runner's group paths on real guests (issue 21, item 3), in one run of
 * two TCG boots: the `no-boot` guest (its kernel panics) heads the
 * application group and fails its heartbeat; `web`, marked
 * `waitForPrevious: false`, boots beside it instead of after it; the next
 * group member and the VM under test are then `dependency-failed` without
 * booting; and with `keepLabOnFailure` the lab and both group VMs are still
 * there after the run, the kept `web` still answering its guest agent on the
 * disks this process serves. Then the test takes them down and checks that
 * nothing is left.
 */
import t from 'tap';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { exec } from '../../src/host/exec.js';
import { History } from '../../src/surebackup/history.js';
import { createLabBackend } from '../../src/surebackup/backend.js';
import { executeRun } from '../../src/surebackup/execute.js';
import type { Job } from '../../src/surebackup/runner.js';
import type { RecoveredVm } from '../../src/verify/contract.js';
import { readLabState } from '../../src/lab/lab.js';
import { guestRepository, labFile, leftovers, shortDir } from './fixtures/guest-lab.js';
import { subnet } from '../helpers/subnets.js';

/** A boot timeout the no-boot guest cannot beat, and short so the group fails soon. */
const NO_BOOT_SECONDS = 20;

t.test(
  'a failing group member: dependency-failed after it, waitForPrevious: false boots beside it, keepLabOnFailure keeps the lab',
  async (t) => {
    const dir = shortDir(t);
    const stateDir = join(dir, 'state');
    const { repo, points } = await guestRepository(dir, ['no-boot', 'web', 'no-agent', 'broken-app']);
    const backend = createLabBackend({ repo, stateDir, driver: 'qemu', accel: 'tcg' });
    const history = await History.open(join(stateDir, 'catalog.sqlite'));
    // Every VM the backend brought up, to see which booted and to take the kept ones down.
    const booted: { name: string; handle: RecoveredVm }[] = [];
    const recover = backend.recover.bind(backend);
    backend.recover = async (name, point, opts) => {
      const handle = await recover(name, point, opts);
      booted.push({ name, handle });
      return handle;
    };
    let netns: string | undefined;
    const labUp = backend.labUp.bind(backend);
    backend.labUp = async (l, s) => {
      const r = await labUp(l, s);
      netns = r.netns;
      return r;
    };
    t.teardown(async () => {
      for (const b of booted) await b.handle.stop().catch(() => undefined);
      await backend.labDown().catch(() => undefined);
      await backend.close();
      history.close();
    });
    const labName = `realg${process.pid % 10000}`;
    const job: Job = {
      name: 'group-failure',
      lab: labFile(dir, labName, subnet('real:surebackup/group-failure')),
      point: 'latest',
      concurrency: 1,
      keepLabOnFailure: true,
      applicationGroup: [
        { name: 'no-boot', role: 'web', tests: [{ kind: 'heartbeat' }], maxBootSeconds: NO_BOOT_SECONDS },
        { name: 'web', role: 'web', tests: [{ kind: 'heartbeat' }], maxBootSeconds: 150, waitForPrevious: false },
        { name: 'no-agent', role: 'web' },
      ],
      verify: { vms: ['broken-app'], role: 'web' },
    };
    const rep = await executeRun({
      job,
      backend,
      repo: () => backend.reader(),
      stateDir,
      history,
      trigger: 'manual',
      log: { warn: () => undefined },
    });
    const vm = (n: string) => rep.vms.find((v) => v.name === n)!;
    const show = (n: string): string =>
      vm(n)
        .tests.map((x) => `${x.name}=${x.result} ${x.detail}`)
        .join(' | ');

    t.equal(rep.result, 'failed');
    t.same(
      rep.vms.map((v) => v.name),
      ['no-boot', 'web', 'no-agent', 'broken-app'],
      'every VM has a result, in plan order',
    );
    t.same(
      rep.vms.map((v) => v.point),
      [points['no-boot']!.id, points.web!.id, points['no-agent']!.id, points['broken-app']!.id],
    );

    // The failing member: its heartbeat, for real, after its boot timeout.
    t.equal(vm('no-boot').result, 'failed', show('no-boot'));
    const hb = vm('no-boot').tests.find((x) => x.kind === 'heartbeat')!;
    t.equal(hb.result, 'failed');
    t.match(hb.detail, new RegExp(`maximum boot time \\(${NO_BOOT_SECONDS} s\\)`));
    t.ok(hb.seconds >= NO_BOOT_SECONDS - 1, `failed after its boot timeout (${hb.seconds} s)`);

    // waitForPrevious: false — web booted while no-boot was still being tested, and passed.
    t.equal(vm('web').result, 'success', show('web'));
    const timings = Object.fromEntries((await history.vmTimings(rep.run)).map((x) => [x.vm, x]));
    t.ok(
      timings.web!.startedMs < timings['no-boot']!.endedMs,
      `web started ${((timings.web!.startedMs - timings['no-boot']!.startedMs) / 1000).toFixed(1)} s after no-boot, before no-boot's tests ended`,
    );

    // Everything after the failed member, group or under test: dependency-failed, never booted.
    for (const n of ['no-agent', 'broken-app']) {
      t.equal(vm(n).result, 'dependency-failed', `${n}: ${show(n)}`);
      t.same(
        vm(n).tests.map((x) => [x.kind, x.result, x.detail]),
        [['dependency', 'skipped', 'application group VM no-boot failed']],
        `${n}: the reason names the failed member`,
      );
    }
    t.same(booted.map((b) => b.name).sort(), ['no-boot', 'web'], 'only the two group VMs before the failure were booted');
    t.equal((await history.run(rep.run))?.status, 'failed');
    const stored = Object.fromEntries((await history.run(rep.run))!.vms.map((v) => [v.name, v.result]));
    t.same(
      stored,
      { 'no-boot': 'failed', web: 'success', 'no-agent': 'dependency-failed', 'broken-app': 'dependency-failed' },
      'the catalog has the same verdicts',
    );

    // keepLabOnFailure: the lab and both group VMs outlive the run, usable.
    t.equal(rep.labKept, true, 'the report says the lab was kept');
    t.match(readFileSync(rep.report, 'utf8'), /lab kept running for troubleshooting/);
    t.equal(readLabState(stateDir, labName)?.ready, true, 'the lab is still up');
    t.ok(netns && (await exec('ip', ['netns', 'list'])).stdout.includes(netns), `its namespace ${netns} is still there`);
    const running = (await leftovers(stateDir)).filter((l) => l.startsWith('process:'));
    t.equal(running.length, 2, `both group VMs still run: ${running.join('; ')}`);
    const web = booted.find((b) => b.name === 'web')!.handle;
    t.equal(await web.agentPing?.(), true, 'the kept web VM still answers its guest agent');

    // Taking the kept lab down leaves nothing.
    for (const b of booted) await b.handle.stop();
    await backend.labDown();
    t.same(await leftovers(stateDir, netns, labName), [], 'no VM, namespace, mount or publication left');
    t.equal(readLabState(stateDir, labName), undefined, 'lab down');
  },
);

// How test results become a VM's result and a run's result, and the runner's
// decisions around them (dependency failures, waitForPrevious: false,
// keepLabOnFailure, skipped network tests, the evidence of a failed VM), on a
// LabBackend made of functions. Fast: one of the tests the mutation run uses
// (docs/testing.md); real guests go through the same runner in
// test/surebackup/failures.test.ts and verdicts.test.ts.
import t from 'tap';
import { passedVm, runJob, runVerdict, selectPoint, vmVerdict, type Job, type LabBackend } from '../../src/surebackup/runner.js';
import type { RecoveredVm, TestResult, TestRunner, VmResult } from '../../src/verify/contract.js';
import { resolveRole, roles } from '../../src/surebackup/roles.js';
import { Limiter } from '../../src/surebackup/limiter.js';
import { address } from '../helpers/subnets.js';

t.test("a VM's result: failed beats warning beats success; passed and skipped change nothing", async (t) => {
  const all: VmResult['result'][] = ['success', 'warning', 'failed', 'dependency-failed'];
  for (const cur of all) {
    t.equal(vmVerdict(cur, 'failed'), 'failed', `${cur} + failed`);
    t.equal(vmVerdict(cur, 'passed'), cur, `${cur} + passed`);
    t.equal(vmVerdict(cur, 'skipped'), cur, `${cur} + skipped`);
  }
  t.equal(vmVerdict('success', 'warning'), 'warning');
  t.equal(vmVerdict('warning', 'warning'), 'warning');
  t.equal(vmVerdict('failed', 'warning'), 'failed', 'a warning never softens a failure');
});

t.test("a run's result: any VM that did not pass fails it", async (t) => {
  t.same(
    ['success', 'warning', 'failed', 'dependency-failed'].map((r) => passedVm({ result: r as VmResult['result'] })),
    [true, true, false, false],
  );
  t.equal(runVerdict([{ result: 'success' }, { result: 'success' }]), 'success');
  t.equal(runVerdict([{ result: 'success' }, { result: 'warning' }]), 'warning');
  t.equal(runVerdict([{ result: 'warning' }, { result: 'failed' }]), 'failed');
  t.equal(runVerdict([{ result: 'success' }, { result: 'dependency-failed' }]), 'failed');
  t.equal(runVerdict([]), 'success');
});

t.test('the point a job verifies: the newest, or the newest at or before a time', async (t) => {
  const points = [
    { id: 'a', time: '2026-01-01T00:00:00Z' },
    { id: 'b', time: '2026-01-02T00:00:00Z' },
    { id: 'c', time: '2026-01-03T00:00:00Z' },
  ];
  t.equal(selectPoint(points, 'latest'), 'c');
  t.equal(selectPoint(points, '2026-01-02T00:00:00Z'), 'b', 'at the time itself');
  t.equal(selectPoint(points, '2026-01-02T12:00:00Z'), 'b');
  t.equal(selectPoint(points, '2025-12-31T00:00:00Z'), undefined, 'nothing that old');
  t.equal(selectPoint([], 'latest'), undefined);
  t.equal(selectPoint(points, 'yesterday'), undefined, 'not a time: no point, not the newest');
});

t.test('roles: defaults, heavyweight timeouts, overrides, and what is bad input', async (t) => {
  const web = resolveRole('w', 'web', {});
  t.same(web, {
    name: 'web',
    maxBootSeconds: 600,
    appInitSeconds: 120,
    tests: [
      { kind: 'heartbeat' },
      { kind: 'ping' },
      { kind: 'tcp', port: 80 },
      { kind: 'http', port: 80, path: '/', status: 200 },
      { kind: 'screenshot' },
      { kind: 'integrity' },
    ],
  });
  t.same(
    [roles.dc!.maxBootSeconds, roles.dc!.appInitSeconds, roles.mssql!.maxBootSeconds, roles.ssh!.appInitSeconds],
    [1800, 1800, 1800, 120],
  );
  t.same(roles.mail!.tests[2], { kind: 'tcp', port: 25, banner: '^220' });
  const over = resolveRole('w', 'web', { maxBootSeconds: 30, appInitSeconds: 5, tests: [{ kind: 'ping' }] });
  t.same(over, { name: 'web', maxBootSeconds: 30, appInitSeconds: 5, tests: [{ kind: 'ping' }] });
  t.same(resolveRole('c', undefined, { tests: [{ kind: 'integrity' }] }), {
    name: 'custom',
    maxBootSeconds: 600,
    appInitSeconds: 120,
    tests: [{ kind: 'integrity' }],
  });
  const dns = resolveRole('ns', 'dns', { dns: { name: 'web.lab.test', expect: '192.168.77.10' } });
  t.same(
    dns.tests.filter((x) => x.kind === 'dns'),
    [{ kind: 'dns', name: 'web.lab.test', expect: '192.168.77.10' }],
    "the job's question",
  );
  t.same(
    dns.tests.map((x) => x.kind),
    ['heartbeat', 'ping', 'dns', 'screenshot', 'integrity'],
  );
  t.same(resolveRole('ns', 'dns', { tests: [{ kind: 'ping' }] }).tests, [{ kind: 'ping' }], 'its own tests need no question');
  t.throws(() => resolveRole('ns', 'dns', {}), { code: 'DNS_QUERY_MISSING', message: 'VM ns has role "dns" but no DNS query to check' });
  t.throws(() => resolveRole('x', undefined, {}), { code: 'ROLE_WITHOUT_TESTS', message: 'VM x has no role and no tests' });
  t.throws(() => resolveRole('x', 'fileserver', {}), {
    code: 'ROLE_WITHOUT_TESTS',
    message: 'VM x has role "fileserver", which is not a predefined role, and no tests',
  });
  t.throws(() => resolveRole('x', 'web', { tests: [] }), { code: 'ROLE_WITHOUT_TESTS', message: 'VM x has role "web" and no tests' });
  t.throws(() => resolveRole('x', undefined, {}), {
    code: 'ROLE_WITHOUT_TESTS',
    hint: /one of the predefined roles: dns, web, dc, global-catalog, mail, mssql, postgresql, mysql, ssh$/,
  });
});

interface Lab {
  backend: LabBackend;
  log: string[];
  live: Set<string>;
  stops: Record<string, { screenshot?: boolean } | undefined>;
}
function lab(o: { vms?: string[]; evidence?: boolean; recoverFails?: string[] } = {}): Lab {
  const log: string[] = [];
  const live = new Set<string>();
  const stops: Lab['stops'] = {};
  const backend: LabBackend = {
    labUp: async () => {
      log.push('lab-up');
      return { netns: 'ns' };
    },
    labDown: async () => {
      log.push('lab-down');
    },
    listPoints: async (vm) => [
      { id: `${vm}-old`, time: '2026-01-01T00:00:00Z' },
      { id: `${vm}-p1`, time: '2026-02-01T00:00:00Z' },
    ],
    listVms: async (tag) => (tag === 'none' ? [] : (o.vms ?? ['a', 'b'])),
    recover: async (vm, _p, opts) => {
      log.push(`recover ${vm}${opts.evidenceDir ? ` ${opts.evidenceDir}` : ''}`);
      if (o.recoverFails?.includes(vm)) throw new Error(`cannot boot ${vm}`);
      live.add(vm);
      const h: RecoveredVm = {
        ip: '10.0.0.2',
        masqIp: address('mutation:fake-vm', 2),
        netns: 'ns',
        screendump: async () => '/dev/null',
        stop: async (how) => {
          stops[vm] = how;
          live.delete(vm);
          log.push(`stop ${vm}`);
          return o.evidence ? { console: `/ev/${vm}.console.log`, ...(how?.screenshot ? { screenshot: `/ev/${vm}.png` } : {}) } : undefined;
        },
      };
      return h;
    },
  };
  return { backend, log, live, stops };
}

/** Results by VM and test kind; everything else passes. */
function tests(
  results: Record<string, Partial<Record<string, TestResult['result']>>> = {},
  hold?: Record<string, Promise<void>>,
): TestRunner & { calls: string[] } {
  const calls: string[] = [];
  const run: TestRunner = async (spec, vm) => {
    calls.push(`${vm.name}:${spec.kind}`);
    await hold?.[vm.name];
    const result = results[vm.name]?.[spec.kind] ?? 'passed';
    return {
      name: spec.kind,
      kind: spec.kind,
      result,
      seconds: 0,
      detail: `${spec.kind} ${result}`,
      ...(spec.kind === 'screenshot' ? { artifact: `/shots/${vm.name}.png` } : {}),
    };
  };
  return Object.assign(run, { calls });
}

const job = (over: Partial<Job> = {}): Job => ({
  name: 'j',
  lab: {},
  point: 'latest',
  concurrency: 2,
  applicationGroup: [],
  verify: { vms: ['web'], tests: [{ kind: 'heartbeat' }, { kind: 'tcp', port: 80 }] },
  ...over,
});

t.test('a job that selects no VM is an error before anything boots, not an empty success', async (t) => {
  const l = lab({ vms: [] });
  await t.rejects(runJob(job({ verify: { vms: 'all', role: 'web' } }), l.backend, tests()), {
    code: 'NO_VMS_TO_VERIFY',
    message: 'job j selects no VM to verify',
  });
  await t.rejects(runJob(job({ verify: { tag: 'none', role: 'web' } }), lab().backend, tests()), {
    code: 'NO_VMS_TO_VERIFY',
    message: 'job j selects no VM to verify (no backed-up VM carries tag "none")',
    hint: /verify\.vms \/ verify\.tag/,
  });
  t.same(l.log, [], 'nothing booted');
  const r = await runJob(job({ verify: { role: 'ssh' } }), lab().backend, tests());
  t.same(
    r.vms.map((v) => v.name),
    ['a', 'b'],
    'no list means every VM',
  );
});

t.test('verdicts, point and timings of verified VMs', async (t) => {
  const l = lab();
  const run = tests({ b: { tcp: 'warning' } });
  const r = await runJob(
    job({
      verify: { vms: ['a', 'b'], tests: [{ kind: 'heartbeat' }, { kind: 'screenshot' }, { kind: 'integrity' }, { kind: 'tcp', port: 80 }] },
    }),
    l.backend,
    run,
    { evidenceDir: '/runs/1' },
  );
  t.same(
    r.vms.map((v) => [v.name, v.point, v.group, v.result]),
    [
      ['a', 'a-p1', false, 'success'],
      ['b', 'b-p1', false, 'warning'],
    ],
  );
  t.equal(r.result, 'warning');
  t.equal(r.labKept, false);
  const a = r.vms[0]!;
  t.equal(a.screenshot, '/shots/a.png');
  t.ok(a.bootToHeartbeatSeconds !== null && a.bootToHeartbeatSeconds >= 0);
  t.ok(a.toFirstAnswerSeconds !== null, 'the tcp answer, not the screenshot or integrity, is the first answer');
  t.ok(a.endedAt >= a.startedAt);
  t.equal(a.recoverySeconds, (a.endedAt - a.startedAt) / 1000);
  t.ok(l.log.includes('recover a /runs/1'), "the VM's evidence goes to the run's directory");
  t.same(l.stops, { a: { screenshot: false }, b: { screenshot: false } }, 'VMs that passed keep no last screen');
  t.equal(l.log.at(-1), 'lab-down');
  // No application answer: no time to first answer; a failed heartbeat: no boot time.
  const quiet = await runJob(
    job({ verify: { vms: ['a'], tests: [{ kind: 'heartbeat' }, { kind: 'screenshot' }, { kind: 'integrity' }] } }),
    lab().backend,
    tests({ a: { heartbeat: 'failed' } }),
  );
  t.same([quiet.vms[0]!.bootToHeartbeatSeconds, quiet.vms[0]!.toFirstAnswerSeconds, quiet.vms[0]!.result], [null, null, 'failed']);
  const warned = await runJob(
    job({ verify: { vms: ['a'], tests: [{ kind: 'heartbeat' }, { kind: 'tcp', port: 1 }] } }),
    lab().backend,
    tests({ a: { heartbeat: 'warning', tcp: 'failed' } }),
  );
  t.ok(warned.vms[0]!.bootToHeartbeatSeconds !== null, 'a heartbeat warning still timed the boot');
  t.equal(warned.vms[0]!.toFirstAnswerSeconds, null, 'a failed answer is no answer');
});

t.test('a heartbeat that failed skips the network tests, with the reason; console and chunks still run', async (t) => {
  const run = tests({ web: { heartbeat: 'failed' } });
  const r = await runJob(
    job({
      verify: {
        vms: ['web'],
        tests: [
          { kind: 'heartbeat' },
          { kind: 'ping' },
          { kind: 'dns', name: 'x.test' },
          { kind: 'script', path: '/bin/true' },
          { kind: 'screenshot' },
          { kind: 'integrity' },
        ],
      },
    }),
    lab().backend,
    run,
  );
  t.same(
    r.vms[0]!.tests.map((x) => [x.kind, x.result, x.detail]),
    [
      ['heartbeat', 'failed', 'heartbeat failed'],
      ['ping', 'skipped', 'not run: heartbeat failed'],
      ['dns', 'skipped', 'not run: heartbeat failed'],
      ['script', 'skipped', 'not run: heartbeat failed'],
      ['screenshot', 'passed', 'screenshot passed'],
      ['integrity', 'passed', 'integrity passed'],
    ],
  );
  t.same(run.calls, ['web:heartbeat', 'web:screenshot', 'web:integrity']);
  const warn = tests({ web: { heartbeat: 'warning' } });
  await runJob(job(), lab().backend, warn);
  t.same(warn.calls, ['web:heartbeat', 'web:tcp'], 'a heartbeat warning (no agent, no ICMP) still runs them');
  const failedTcp = tests({ web: { tcp: 'failed' } });
  await runJob(job({ verify: { vms: ['web'], tests: [{ kind: 'tcp', port: 1 }, { kind: 'http' }] } }), lab().backend, failedTcp);
  t.same(failedTcp.calls, ['web:tcp', 'web:http'], 'only the heartbeat decides that the VM is down');
});

t.test("a failed VM keeps its console log and its last screen; a screenshot test's own screen wins", async (t) => {
  const l = lab({ evidence: true });
  const r = await runJob(
    job({ verify: { vms: ['a', 'b'], tests: [{ kind: 'heartbeat' }] } }),
    l.backend,
    tests({ a: { heartbeat: 'failed' } }),
  );
  t.same(l.stops, { a: { screenshot: true }, b: { screenshot: false } });
  t.same([r.vms[0]!.console, r.vms[0]!.screenshot], ['/ev/a.console.log', '/ev/a.png']);
  t.same([r.vms[1]!.console, r.vms[1]!.screenshot], ['/ev/b.console.log', null]);
  const l2 = lab({ evidence: true });
  const r2 = await runJob(
    job({ verify: { vms: ['a'], tests: [{ kind: 'screenshot' }] } }),
    l2.backend,
    tests({ a: { screenshot: 'failed' } }),
  );
  t.same(l2.stops, { a: { screenshot: false } }, 'it has a screen already');
  t.equal(r2.vms[0]!.screenshot, '/shots/a.png');
  const l3 = lab();
  const r3 = await runJob(
    job({ verify: { vms: ['a'], tests: [{ kind: 'heartbeat' }] } }),
    l3.backend,
    tests({ a: { heartbeat: 'failed' } }),
  );
  t.same([r3.vms[0]!.console, r3.vms[0]!.screenshot], [null, null], 'no evidence kept: none claimed');
});

t.test('a VM that cannot be recovered fails with the reason; the others go on', async (t) => {
  const l = lab({ recoverFails: ['a'] });
  const r = await runJob(job({ verify: { vms: ['a', 'b'], tests: [{ kind: 'heartbeat' }] } }), l.backend, tests());
  t.same(
    r.vms[0]!.tests.map((x) => [x.name, x.kind, x.result, x.detail]),
    [['recover', 'recover', 'failed', 'cannot boot a']],
  );
  t.same([r.vms[0]!.result, r.vms[1]!.result, r.result], ['failed', 'success', 'failed']);
  const thrown = await runJob(job({ verify: { vms: ['a'], tests: [{ kind: 'heartbeat' }] } }), lab().backend, (async () => {
    throw 'not an Error';
  }) as TestRunner);
  t.equal(thrown.vms[0]!.tests[0]!.detail, 'not an Error');
});

t.test('application group: a failure fails the later group VMs and every VM under test as a dependency', async (t) => {
  const l = lab();
  const run = tests({ dns: { tcp: 'failed' } });
  const r = await runJob(
    job({
      applicationGroup: [
        { name: 'dns', tests: [{ kind: 'tcp', port: 53 }] },
        { name: 'db', tests: [{ kind: 'tcp', port: 5432 }] },
      ],
    }),
    l.backend,
    run,
  );
  t.same(
    r.vms.map((v) => [v.name, v.group, v.result]),
    [
      ['dns', true, 'failed'],
      ['db', true, 'dependency-failed'],
      ['web', false, 'dependency-failed'],
    ],
  );
  const dep = r.vms[1]!;
  t.same(dep.tests, [{ name: 'dependency', kind: 'dependency', result: 'skipped', seconds: 0, detail: 'application group VM dns failed' }]);
  t.same(
    [dep.point, dep.screenshot, dep.console, dep.bootToHeartbeatSeconds, dep.toFirstAnswerSeconds, dep.recoverySeconds],
    ['db-p1', null, null, null, null, 0],
  );
  t.same(run.calls, ['dns:tcp'], 'nothing after the failed group VM booted');
  t.equal(r.result, 'failed');
  t.same(l.live, new Set(), 'the group VM is stopped at the end');
  // A group VM that warns is no dependency failure.
  const w = await runJob(
    job({ applicationGroup: [{ name: 'dns', tests: [{ kind: 'tcp', port: 53 }] }] }),
    lab().backend,
    tests({ dns: { tcp: 'warning' } }),
  );
  t.same(
    w.vms.map((v) => v.result),
    ['warning', 'success'],
  );
});

t.test('application group: VMs run in order and stay up; waitForPrevious: false starts one with the previous', async (t) => {
  let release!: () => void;
  const held = new Promise<void>((r) => {
    release = r;
  });
  const l = lab();
  const run = tests({}, { a: held });
  const p = runJob(
    job({
      applicationGroup: [
        { name: 'a', tests: [{ kind: 'ping' }] },
        { name: 'b', tests: [{ kind: 'ping' }], waitForPrevious: false },
        { name: 'c', tests: [{ kind: 'ping' }] },
      ],
    }),
    l.backend,
    run,
  );
  for (let i = 0; i < 50 && run.calls.length < 2; i++) await new Promise((r) => setImmediate(r));
  t.same(run.calls, ['a:ping', 'b:ping'], 'b did not wait for a');
  release();
  const r = await p;
  t.same(run.calls.slice(0, 3), ['a:ping', 'b:ping', 'c:ping']);
  t.ok(l.log.indexOf('recover c') > l.log.indexOf('recover b'), 'c waited for both');
  t.ok(l.log.indexOf('stop a') > l.log.indexOf('recover web'), 'group VMs run until the end');
  t.same(
    r.vms.map((v) => v.name),
    ['a', 'b', 'c', 'web'],
  );
  // A failure in a VM that did not wait is still a dependency failure for the rest.
  const f = await runJob(
    job({
      applicationGroup: [
        { name: 'a', tests: [{ kind: 'ping' }] },
        { name: 'b', tests: [{ kind: 'ping' }], waitForPrevious: false },
        { name: 'c', tests: [{ kind: 'ping' }] },
      ],
    }),
    lab().backend,
    tests({ b: { ping: 'failed' } }),
  );
  t.same(
    f.vms.map((v) => [v.name, v.result]),
    [
      ['a', 'success'],
      ['b', 'failed'],
      ['c', 'dependency-failed'],
      ['web', 'dependency-failed'],
    ],
  );
  t.equal(f.vms[3]!.tests[0]!.detail, 'application group VM b failed');
});

t.test('keepLabOnFailure keeps the lab and its VMs of a failed run only', async (t) => {
  const l = lab();
  const r = await runJob(
    job({ keepLabOnFailure: true, applicationGroup: [{ name: 'g', tests: [{ kind: 'ping' }] }] }),
    l.backend,
    tests({ web: { tcp: 'failed' } }),
  );
  t.equal(r.result, 'failed');
  t.equal(r.labKept, true);
  t.notOk(l.log.includes('lab-down'), 'the lab stays');
  t.same(l.live, new Set(['g']), 'the group VM stays up for a person to look at');
  const ok = lab();
  const passed = await runJob(job({ keepLabOnFailure: true }), ok.backend, tests());
  t.same([passed.labKept, ok.log.at(-1)], [false, 'lab-down'], 'a run that passed is torn down');
  const no = lab();
  const failedNoKeep = await runJob(
    job({ applicationGroup: [{ name: 'g', tests: [{ kind: 'ping' }] }] }),
    no.backend,
    tests({ web: { tcp: 'failed' } }),
  );
  t.same([failedNoKeep.labKept, no.log.at(-1), no.live.size], [false, 'lab-down', 0]);
  const dep = lab();
  const depFailed = await runJob(
    job({ keepLabOnFailure: true, applicationGroup: [{ name: 'g', tests: [{ kind: 'ping' }] }] }),
    dep.backend,
    tests({ g: { ping: 'failed' } }),
  );
  t.same([depFailed.labKept, dep.log.includes('lab-down')], [true, false], 'a dependency failure is a failure too');
  // Cancelled: never kept, whatever the job says.
  const c = lab();
  const ac = new AbortController();
  const cancelling: TestRunner = async () => {
    ac.abort(new Error('cancelled'));
    throw ac.signal.reason;
  };
  await t.rejects(
    runJob(job({ keepLabOnFailure: true, applicationGroup: [{ name: 'g', tests: [{ kind: 'ping' }] }] }), c.backend, cancelling, {
      signal: ac.signal,
    }),
    /cancelled/,
  );
  t.same([c.live.size, c.log.at(-1)], [0, 'lab-down']);
});

t.test('a lab that never came up is not taken down; the limiter slot and memory are given back', async (t) => {
  const l = lab();
  l.backend.labUp = async () => {
    throw new Error('no bridge');
  };
  await t.rejects(runJob(job(), l.backend, tests()), /no bridge/);
  t.notOk(l.log.includes('lab-down'));
  const lim = new Limiter(1, 2048);
  await runJob(job({ verify: { vms: ['a', 'b'], tests: [{ kind: 'ping' }] } }), lab().backend, tests(), { limiter: lim });
  const release = await lim.acquire(2048);
  release();
  t.pass('both slots and all memory are free again');
});

// Unit test of the runner with a fake LabBackend (the real end-to-end test is the lead's).
import t from 'tap';
import { planJob, runJob, type Job, type LabBackend } from '../../src/surebackup/runner.js';
import type { RecoveredVm, TestRunner } from '../../src/verify/contract.js';
import { Limiter } from '../../src/surebackup/limiter.js';

function fake(opts: { failing?: string[]; delayMs?: number } = {}) {
  const log: string[] = [];
  const live = new Set<string>();
  let labUp = false;
  const backend: LabBackend = {
    labUp: async () => {
      labUp = true;
      log.push('lab-up');
      return { netns: 'fake' };
    },
    labDown: async () => {
      labUp = false;
      log.push('lab-down');
    },
    listPoints: async (vm) => (vm === 'nopoint' ? [] : [{ id: `${vm}-p1`, time: '2026-01-01T00:00:00Z' }]),
    listVms: async () => ['a', 'b', 'c', 'd', 'e'],
    recover: async (vm) => {
      log.push(`recover ${vm}`);
      live.add(vm);
      const h: RecoveredVm = {
        ip: '192.168.77.10',
        masqIp: '10.0.0.10',
        netns: 'fake',
        screendump: async () => '/dev/null',
        stop: async () => {
          live.delete(vm);
          log.push(`stop ${vm}`);
        },
      };
      return h;
    },
  };
  const runTest: TestRunner = async (spec, vm, signal) => {
    await new Promise<void>((r, j) => {
      const onAbort = () => {
        clearTimeout(tm);
        j(signal.reason);
      };
      const tm = setTimeout(() => {
        signal.removeEventListener('abort', onAbort);
        r();
      }, opts.delayMs ?? 5);
      signal.addEventListener('abort', onAbort, { once: true });
    });
    const bad = opts.failing?.includes(vm.name) && (spec.kind === 'tcp' || spec.kind === 'dns');
    return { name: spec.kind, kind: spec.kind, result: bad ? 'failed' : 'passed', seconds: 0.005, detail: '' };
  };
  return { backend, runTest, log, live, isLabUp: () => labUp };
}

const job = (over: Partial<Job> = {}): Job => ({
  name: 'j',
  lab: {},
  point: 'latest',
  concurrency: 3,
  applicationGroup: [
    { name: 'dns', role: 'dns', dns: { name: 'web.lab.test', expect: '192.168.77.10' } },
    { name: 'db', role: 'postgresql' },
  ],
  verify: { vms: ['web'], role: 'web' },
  ...over,
});

t.test('application group boots in order, then VMs under test; lab torn down', async (t) => {
  const f = fake();
  const r = await runJob(job(), f.backend, f.runTest);
  t.equal(r.result, 'success');
  t.same(
    f.log.filter((l) => l.startsWith('recover')),
    ['recover dns', 'recover db', 'recover web'],
  );
  t.equal(f.log.at(-1), 'lab-down');
  t.equal(f.live.size, 0);
  t.ok(r.vms.every((v) => v.bootToHeartbeatSeconds !== null && v.toFirstAnswerSeconds !== null));
});

t.test('a failed group VM is a dependency failure for the rest', async (t) => {
  const f = fake({ failing: ['dns'] });
  const r = await runJob(job(), f.backend, f.runTest);
  t.equal(r.result, 'failed');
  t.same(
    r.vms.map((v) => [v.name, v.result]),
    [
      ['dns', 'failed'],
      ['db', 'dependency-failed'],
      ['web', 'dependency-failed'],
    ],
  );
  t.equal(f.live.size, 0);
});

t.test('cap of 2 with 5 VMs is never exceeded (from recorded timings)', async (t) => {
  const f = fake({ delayMs: 20 });
  const r = await runJob(job({ applicationGroup: [], verify: { vms: 'all', role: 'ssh' }, concurrency: 2 }), f.backend, f.runTest, {
    limiter: new Limiter(10, 1e6),
  });
  t.equal(r.vms.length, 5);
  const edges = r.vms
    .flatMap(
      (v) =>
        [
          [v.startedAt, 1],
          [v.endedAt, -1],
        ] as const,
    )
    .sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let cur = 0;
  let peak = 0;
  for (const [, d] of edges) {
    cur += d;
    peak = Math.max(peak, cur);
  }
  t.ok(peak <= 2, `peak concurrency ${peak}`);
  t.ok(peak === 2, 'cap actually used');
});

t.test('global limiter caps across two jobs', async (t) => {
  const f = fake({ delayMs: 15 });
  const lim = new Limiter(1, 1e6);
  const [a, b] = await Promise.all([
    runJob(job({ applicationGroup: [], verify: { vms: ['a', 'b'], role: 'ssh' } }), f.backend, f.runTest, { limiter: lim }),
    runJob(job({ applicationGroup: [], verify: { vms: ['c', 'd'], role: 'ssh' } }), f.backend, f.runTest, { limiter: lim }),
  ]);
  const all = [...a.vms, ...b.vms].sort((x, y) => x.startedAt - y.startedAt);
  for (let i = 1; i < all.length; i++) t.ok(all[i]!.startedAt >= all[i - 1]!.endedAt, 'no overlap');
});

t.test('cancel mid-run tears everything down', async (t) => {
  const f = fake({ delayMs: 50 });
  const ac = new AbortController();
  // Cancelled at a known point mid-run: the group is up and web is booted, its first test starting.
  const cancelling: TestRunner = async (spec, vm, signal) => {
    if (vm.name === 'web') ac.abort(new Error('cancelled'));
    return f.runTest(spec, vm, signal);
  };
  await t.rejects(runJob(job({ keepLabOnFailure: true }), f.backend, cancelling, { signal: ac.signal }));
  t.same(
    f.log.filter((l) => l.startsWith('recover')),
    ['recover dns', 'recover db', 'recover web'],
    'cancelled with three VMs up',
  );
  t.equal(f.live.size, 0, 'no VM left');
  t.equal(f.isLabUp(), false, 'lab down');
});

t.test('bad input before anything boots', async (t) => {
  const f = fake();
  await t.rejects(runJob(job({ verify: { vms: ['nopoint'], role: 'web' } }), f.backend, f.runTest), { code: 'NO_RESTORE_POINT' });
  await t.rejects(runJob(job({ verify: { vms: ['x'], tests: [] } }), f.backend, f.runTest), { code: 'ROLE_WITHOUT_TESTS' });
  await t.rejects(runJob(job({ applicationGroup: [], verify: { vms: ['x'] } }), f.backend, f.runTest), {
    code: 'ROLE_WITHOUT_TESTS',
    message: /VM x has no role and no tests/,
  });
  t.same(f.log, [], 'nothing booted');
});

t.test("a job that names neither role nor tests verifies each VM by its definition's role, stored with its point", async (t) => {
  const f = fake();
  const backend: LabBackend = {
    ...f.backend,
    listPoints: async (vm) => [
      { id: `${vm}-p1`, time: '2026-01-01T00:00:00Z', ...(vm === 'db' ? { role: 'postgresql' } : { role: 'web' }) },
    ],
  };
  const { testPlan } = await planJob(job({ applicationGroup: [], verify: { vms: ['db', 'web'] } }), backend);
  t.same(
    testPlan.map((p) => [p.vm.name, p.role.name, p.role.tests.map((x) => x.kind)]),
    [
      ['db', 'postgresql', ['heartbeat', 'ping', 'tcp', 'screenshot', 'integrity']],
      ['web', 'web', ['heartbeat', 'ping', 'tcp', 'http', 'screenshot', 'integrity']],
    ],
  );
  const own = await planJob(job({ applicationGroup: [], verify: { vms: ['db'], role: 'web' } }), backend);
  t.equal(own.testPlan[0]?.role.name, 'web', "the job's role wins over the definition's");
});

t.test('a VM whose heartbeat fails skips its network tests but keeps screenshot and integrity', async (t) => {
  const f = fake();
  const runTest: TestRunner = async (spec) => ({
    name: spec.kind,
    kind: spec.kind,
    result: spec.kind === 'heartbeat' || spec.kind === 'screenshot' ? 'failed' : 'passed',
    seconds: 0,
    detail: '',
    ...(spec.kind === 'screenshot' ? { artifact: '/tmp/x.png' } : {}),
  });
  const r = await runJob(job({ applicationGroup: [] }), f.backend, runTest);
  const web = r.vms[0]!;
  t.same(
    web.tests.map((x) => [x.kind, x.result]),
    [
      ['heartbeat', 'failed'],
      ['ping', 'skipped'],
      ['tcp', 'skipped'],
      ['http', 'skipped'],
      ['screenshot', 'failed'],
      ['integrity', 'passed'],
    ],
  );
  t.equal(web.screenshot, '/tmp/x.png');
  t.equal(r.result, 'failed');
});

t.test('a missing script is bad input before anything boots', async (t) => {
  const f = fake();
  await t.rejects(
    runJob(job({ verify: { vms: ['web'], tests: [{ kind: 'script', path: '/nonexistent/check.sh' }] } }), f.backend, f.runTest),
    { code: 'SCRIPT_NOT_FOUND' },
  );
  t.same(f.log, [], 'nothing booted');
});

t.test('vmDone: what watched a VM the whole time reports after its tests, before it stops', async (t) => {
  const f = fake();
  const calls: string[] = [];
  const runTest: TestRunner = Object.assign(f.runTest, {
    vmDone: async (vm: { name: string }) => {
      calls.push(`done ${vm.name} (live: ${f.live.has(vm.name)})`);
      return vm.name === 'web'
        ? [
            {
              name: 'console',
              kind: 'console',
              result: 'failed' as const,
              seconds: 0,
              detail: 'kernel panic on the VGA console: "Kernel panic"',
            },
          ]
        : [];
    },
  });
  const r = await runJob(job(), f.backend, runTest);
  t.same(calls, ['done dns (live: true)', 'done db (live: true)', 'done web (live: true)'], 'once per VM, while it still runs');
  t.equal(r.result, 'failed');
  const web = r.vms.find((v) => v.name === 'web')!;
  t.equal(web.result, 'failed');
  t.same(web.tests.at(-1), {
    name: 'console',
    kind: 'console',
    result: 'failed',
    seconds: 0,
    detail: 'kernel panic on the VGA console: "Kernel panic"',
  });
  t.equal(r.vms.find((v) => v.name === 'dns')?.result, 'success');
});

t.test("the dns role asks the job's question, and without one it is bad input before anything boots", async (t) => {
  const f = fake();
  const asked: unknown[] = [];
  const runTest: TestRunner = async (spec, vm, signal) => {
    if (spec.kind === 'dns') asked.push([vm.name, spec]);
    return f.runTest(spec, vm, signal);
  };
  t.equal((await runJob(job(), f.backend, runTest)).result, 'success');
  t.same(
    asked,
    [['dns', { kind: 'dns', name: 'web.lab.test', expect: '192.168.77.10' }]],
    'an A query for the configured name, expecting its address',
  );
  const g = fake();
  await t.rejects(runJob(job({ applicationGroup: [{ name: 'dns', role: 'dns' }] }), g.backend, g.runTest), {
    code: 'DNS_QUERY_MISSING',
    message: /VM dns has role "dns" but no DNS query/,
  });
  await t.rejects(runJob(job({ applicationGroup: [], verify: { vms: ['ns1'], role: 'dns' } }), g.backend, g.runTest), {
    code: 'DNS_QUERY_MISSING',
  });
  t.same(g.log, [], 'nothing booted');
  // Per-VM override of the question.
  const h = fake();
  asked.length = 0;
  const viaOverride: TestRunner = async (spec, vm, signal) => {
    if (spec.kind === 'dns') asked.push([vm.name, spec]);
    return h.runTest(spec, vm, signal);
  };
  await runJob(
    job({
      applicationGroup: [],
      verify: {
        vms: ['ns1'],
        role: 'dns',
        dns: { name: 'a.test', expect: '10.0.0.1' },
        overrides: { ns1: { dns: { name: 'b.test', expect: '10.0.0.2' } } },
      },
    }),
    h.backend,
    viaOverride,
  );
  t.same(asked, [['ns1', { kind: 'dns', name: 'b.test', expect: '10.0.0.2' }]]);
});

t.test("a watching test gives its final verdict at the end of the VM's test window, before the VM stops", async (t) => {
  for (const held of [true, false]) {
    const f = fake();
    const order: string[] = [];
    const runTest: TestRunner = async (spec) => {
      order.push(spec.kind);
      const r = { name: spec.kind, kind: spec.kind, result: 'passed' as const, seconds: 0, detail: 'up' };
      if (spec.kind !== 'heartbeat') return r;
      return {
        ...r,
        settle: async () => {
          order.push(`settle ${f.live.size}`);
          return { ...r, result: held ? 'passed' : 'failed', detail: held ? 'up; held' : 'up; lost' };
        },
      };
    };
    const r = await runJob(job({ applicationGroup: [] }), f.backend, runTest);
    const web = r.vms[0]!;
    t.same(
      order,
      ['heartbeat', 'ping', 'tcp', 'http', 'screenshot', 'integrity', 'settle 1'],
      'settled after every other test, while the VM still ran',
    );
    t.equal(web.tests[0]!.result, held ? 'passed' : 'failed');
    t.equal(web.tests[0]!.detail, held ? 'up; held' : 'up; lost');
    t.notOk('settle' in web.tests[0]!, 'no function left in the recorded result');
    t.equal(web.result, held ? 'success' : 'failed');
    t.equal(r.result, held ? 'success' : 'failed');
  }
});

t.test('a watch is abandoned when a later test throws, and the VM still stops', async (t) => {
  const f = fake();
  let abandoned: boolean | undefined;
  const runTest: TestRunner = async (spec) => {
    if (spec.kind === 'tcp') throw new Error('probe exploded');
    const r = { name: spec.kind, kind: spec.kind, result: 'passed' as const, seconds: 0, detail: '' };
    return spec.kind === 'heartbeat'
      ? {
          ...r,
          settle: async (o) => {
            abandoned = o?.abandon;
            return r;
          },
        }
      : r;
  };
  const r = await runJob(job({ applicationGroup: [] }), f.backend, runTest);
  t.equal(abandoned, true);
  t.equal(r.vms[0]!.result, 'failed');
  t.equal(f.live.size, 0);
});

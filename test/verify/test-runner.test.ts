// The TestRunner's own decisions, without a lab: the retry of application
// tests through the VM's app init time (on a virtual clock), test names, the
// heartbeat's watch after a pass, the screenshot with and without a console
// watch, and the dispatch of the network kinds into a namespace that does not
// exist (they must fail, fast). One of the tests the mutation run uses
// (docs/testing.md); the kinds against real servers are in lab-tests.test.ts.
import t from 'tap';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { createTestRunner, testName, untilPassed } from '../../src/verify/tests.js';
import type { RecoveredVm, TestResult } from '../../src/verify/contract.js';
import type { Role, TestSpec } from '../../src/verify/contract.js';
import { FileRepo } from './fixtures/file-repo.js';
import { virtualClock } from './fixtures/virtual-clock.js';
import { address } from '../helpers/subnets.js';

const res = (result: TestResult['result'], detail = 'd'): TestResult => ({ name: 'tcp', kind: 'tcp', result, seconds: 0.5, detail });

t.test('application tests are retried until they pass or the app init time is used up', async (t) => {
  const signal = new AbortController().signal;
  const clock = virtualClock();
  const first = await untilPassed(async () => res('passed', 'connected'), { windowMs: 10_000, retryMs: 2000, signal, clock });
  t.same(first, { name: 'tcp', kind: 'tcp', result: 'passed', seconds: 0, detail: 'connected' }, 'one try: no attempt count');

  const c2 = virtualClock();
  let n = 0;
  const third = await untilPassed(async () => (++n === 3 ? res('passed', 'connected') : res('failed', 'refused')), {
    windowMs: 10_000,
    retryMs: 2000,
    signal,
    clock: c2,
  });
  t.same(third, { name: 'tcp', kind: 'tcp', result: 'passed', seconds: 4, detail: 'connected (attempt 3)' });

  const c3 = virtualClock();
  let tries = 0;
  const never = await untilPassed(
    async () => {
      tries++;
      c3.advance(500);
      return res('failed', 'refused');
    },
    { windowMs: 5000, retryMs: 2000, signal, clock: c3 },
  );
  t.same(
    never,
    { name: 'tcp', kind: 'tcp', result: 'failed', seconds: 5.5, detail: 'refused (attempt 3)' },
    'tries at 0, 2.5 and 5 s; the one ending at the window is the last',
  );
  t.equal(tries, 3);
  const c4 = virtualClock();
  t.same(
    await untilPassed(async () => res('warning', 'w'), { windowMs: 0, retryMs: 2000, signal, clock: c4 }),
    { ...res('warning', 'w'), seconds: 0 },
    'no window: one try, and a warning is not retried into a pass',
  );
  const c5 = virtualClock();
  const exact = await untilPassed(
    async () => {
      c5.advance(1000);
      return res('failed', 'x');
    },
    { windowMs: 1000, retryMs: 2000, signal, clock: c5 },
  );
  t.equal(exact.detail, 'x', 'a try that ends exactly at the window is the last');

  const ac = new AbortController();
  await t.rejects(
    untilPassed(
      async () => {
        ac.abort(new Error('cancelled'));
        return res('failed');
      },
      { windowMs: 60_000, retryMs: 2000, signal: ac.signal, clock: virtualClock() },
    ),
    /cancelled/,
  );
  const t0 = Date.now();
  t.equal(
    (await untilPassed(async () => res('failed'), { windowMs: 60, retryMs: 20, signal })).result,
    'failed',
    'the real clock by default',
  );
  t.ok(Date.now() - t0 >= 55);
});

t.test('test names carry their target', async (t) => {
  const cases: [TestSpec, string][] = [
    [{ kind: 'tcp', port: 5432 }, 'tcp:5432'],
    [{ kind: 'http' }, 'http:80/'],
    [{ kind: 'http', port: 8080, path: '/health' }, 'http:8080/health'],
    [{ kind: 'dns', name: 'web.lab.test' }, 'dns:web.lab.test'],
    [{ kind: 'script', path: '/opt/checks/db.sh' }, 'script:db.sh'],
    [{ kind: 'script', path: 'db.sh' }, 'script:db.sh'],
    [{ kind: 'heartbeat' }, 'heartbeat'],
    [{ kind: 'ping' }, 'ping'],
    [{ kind: 'screenshot' }, 'screenshot'],
    [{ kind: 'integrity' }, 'integrity'],
  ];
  for (const [spec, name] of cases) t.equal(testName(spec), name);
});

const role = (tests: TestSpec[], o: Partial<Role> = {}): Role => ({ name: 'custom', tests, maxBootSeconds: 5, appInitSeconds: 0, ...o });
/** A handle in a namespace that does not exist: every probe into it fails at once. */
function handle(dir: string, o: Partial<RecoveredVm> = {}): RecoveredVm {
  let n = 0;
  return {
    ip: '10.0.0.2',
    masqIp: address('mutation:fake-vm', 2),
    netns: `rl-mut-none-${randomBytes(3).toString('hex')}`,
    screendump: async () => {
      const p = join(dir, `dump-${n++}.ppm`);
      const px = Buffer.alloc(16 * 8 * 3);
      for (let i = 0; i < px.length; i += 7) px[i] = 200;
      writeFileSync(p, Buffer.concat([Buffer.from('P6\n16 8\n255\n'), px]));
      return p;
    },
    stop: async () => undefined,
    ...o,
  };
}
const vgaMem = (row: string): Uint8Array => {
  const b = new Uint8Array(80 * 25 * 2);
  for (let i = 0; i < b.length; i += 2) {
    b[i] = 0x20;
    b[i + 1] = 0x07;
  }
  [...row].forEach((c, x) => {
    b[x * 2] = c.charCodeAt(0);
  });
  return b;
};

t.test('heartbeat: a pass is watched on the path it passed on, and the watch gives the final verdict', async (t) => {
  const dir = t.testdir();
  let alive = true;
  let pings = 0;
  const h = handle(dir, {
    agentPing: async () => {
      pings++;
      return alive;
    },
  });
  const run = createTestRunner({
    repo: async () => new FileRepo(dir),
    screenshotDir: dir,
    heartbeatWatch: { intervalMs: 10, loss: { pings: 2, seconds: 0.02 } },
  });
  const vm = { name: 'web', pointId: 'p', role: role([{ kind: 'heartbeat' }]), handle: h };
  const ac = new AbortController();
  const r = await run({ kind: 'heartbeat', stablePings: 2, stableSeconds: 0.05 }, vm, ac.signal);
  t.equal(r.name, 'heartbeat');
  t.equal(r.result, 'passed', r.detail);
  t.match(r.detail, /^via guest agent: 2 consecutive answers over ≥0\.05 s/);
  t.ok(r.settle, 'watching');
  const held = await r.settle!();
  t.equal(held.result, 'passed');
  t.equal(held.seconds, r.seconds, "the time is the heartbeat's, not the window's");
  t.match(held.detail, /^via guest agent: .*; the guest agent kept answering through the test window/);
  const again = await run({ kind: 'heartbeat', stablePings: 2, stableSeconds: 0.05 }, vm, ac.signal);
  alive = false;
  const before = pings;
  // The agent stops answering during the window: let the watch see a miss before the window ends.
  for (let i = 0; i < 500 && pings < before + 1; i++) await new Promise((r) => setTimeout(r, 5));
  t.ok(pings > before, 'the agent was asked again');
  const lost = await again.settle!();
  t.same([lost.name, lost.kind, lost.result], ['heartbeat', 'heartbeat', 'failed']);
  t.match(lost.detail, /; lost during the test window: the guest agent stopped answering \(2 consecutive misses over ≥0\.02 s\)/);
  const silent = await run(
    { kind: 'heartbeat', stablePings: 2, stableSeconds: 0.05 },
    { ...vm, role: role([{ kind: 'heartbeat' }], { maxBootSeconds: 0.2 }) },
    ac.signal,
  );
  t.same([silent.result, silent.settle], ['failed', undefined], 'a failed heartbeat has nothing to watch');
  t.match(silent.detail, /^the guest agent never answered within the maximum boot time \(0\.2 s\)/);
  // Its default stability, three answers over 4 s, in the role's boot time.
  alive = true;
  const unstable = await run({ kind: 'heartbeat' }, { ...vm, role: role([{ kind: 'heartbeat' }], { maxBootSeconds: 0.2 }) }, ac.signal);
  t.match(
    unstable.detail,
    /^the guest agent answered \(first after [\d.]+ s\) but never 3 consecutive answers over ≥4 s within the maximum boot time \(0\.2 s\)/,
  );
  // Only one of the two stability fields given: the other keeps its default.
  const half = await run(
    { kind: 'heartbeat', stableSeconds: 0.05 },
    { ...vm, role: role([{ kind: 'heartbeat' }], { maxBootSeconds: 0.3 }) },
    ac.signal,
  );
  t.match(half.detail, /3 consecutive answers over ≥0\.05 s/);
  await half.settle?.({ abandon: true });
  const half2 = await run(
    { kind: 'heartbeat', stablePings: 1 },
    { ...vm, role: role([{ kind: 'heartbeat' }], { maxBootSeconds: 0.2 }) },
    ac.signal,
  );
  t.match(half2.detail, /1 consecutive answers over ≥4 s/);
  await half2.settle?.({ abandon: true });
  // No agent: the address is the heartbeat, and here it never answers (no such namespace).
  const noAgent = await run(
    { kind: 'heartbeat', stablePings: 1, stableSeconds: 0 },
    { ...vm, handle: handle(dir), role: role([{ kind: 'heartbeat' }], { maxBootSeconds: 0.3 }) },
    ac.signal,
  );
  t.same([noAgent.result, noAgent.settle], ['warning', undefined]);
  t.match(noAgent.detail, /^no guest agent and no ICMP answer/);
});

t.test('network kinds run inside the lab namespace: with none there, each fails, named after its target', async (t) => {
  const dir = t.testdir();
  const run = createTestRunner({ repo: async () => new FileRepo(dir), screenshotDir: dir, appRetryMs: 10 });
  const h = handle(dir);
  const ac = new AbortController();
  const specs: [TestSpec, string][] = [
    [{ kind: 'ping' }, 'ping'],
    [{ kind: 'tcp', port: 22, banner: '^SSH-' }, 'tcp:22'],
    [{ kind: 'http', port: 80 }, 'http:80/'],
    [{ kind: 'dns', name: 'web.lab.test', expect: '10.0.0.9' }, 'dns:web.lab.test'],
    [{ kind: 'script', path: '/bin/true' }, 'script:true'],
  ];
  for (const [spec, name] of specs) {
    const r = await run(spec, { name: 'web', pointId: 'p', role: role([spec]), handle: h }, ac.signal);
    t.same([r.name, r.kind, r.result], [name, spec.kind, 'failed'], `${name}: ${r.detail}`);
  }
  const appRole = role([{ kind: 'tcp', port: 1 }], { appInitSeconds: 1 });
  const retried = await run({ kind: 'tcp', port: 1 }, { name: 'web', pointId: 'p', role: appRole, handle: h }, ac.signal);
  t.ok(Number(/\(attempt (\d+)\)$/.exec(retried.detail)?.[1]) >= 2, `tried again through the app init time: ${retried.detail}`);
});

t.test("screenshot: judged with what the console watch saw; without a watch, the screen's own text", async (t) => {
  const dir = t.testdir();
  const shots = join(dir, 'shots');
  const ac = new AbortController();
  let screen = 'web login:';
  const h = handle(dir, { consoleText: async () => vgaMem(screen) });
  const run = createTestRunner({
    repo: async () => new FileRepo(dir),
    screenshotDir: shots,
    ocr: false,
    consoleIntervalMs: 10,
    baseline: (vm) => (vm === 'changed' ? { path: join(dir, 'none.png'), run: 'r0' } : undefined),
  });
  const watched = { name: 'web', pointId: 'p', role: role([{ kind: 'screenshot' }]), handle: h };
  const ok = await run({ kind: 'screenshot' }, watched, ac.signal);
  t.same([ok.name, ok.result, ok.artifact, ok.detail], ['screenshot', 'passed', join(shots, 'web.png'), join(shots, 'web.png')]);
  t.ok(existsSync(join(shots, 'web.png')), 'the PNG is kept');
  t.notOk(existsSync(join(dir, 'dump-0.ppm')), 'the raw dump is not');
  screen = 'Kernel panic - not syncing: Attempted to kill init!';
  const panic = await run({ kind: 'screenshot' }, watched, ac.signal);
  t.equal(panic.result, 'failed');
  t.match(panic.detail, /^kernel panic on the VGA console: "Kernel panic - not syncing: Attempted to kill init!"/);
  t.same(await run.vmDone!({ name: 'web', handle: h }, ac.signal), [], 'reported by the screenshot test, not again at the end');
  // A VM with no screenshot test in its role has no watch: the screen's text is read at the test.
  const unwatched = {
    name: 'other',
    pointId: 'p',
    role: role([{ kind: 'integrity' }]),
    handle: handle(dir, { consoleText: async () => vgaMem('BUG: kernel NULL pointer dereference, address: 0') }),
  };
  const direct = await run({ kind: 'screenshot' }, unwatched, ac.signal);
  t.equal(direct.result, 'failed');
  t.match(direct.detail, /^oops on the VGA console/);
  t.same(await run.vmDone!({ name: 'other', handle: unwatched.handle }, ac.signal), [], 'no watch, nothing at the end');
  const broken = {
    ...unwatched,
    handle: handle(dir, {
      consoleText: async () => {
        throw new Error('VM gone');
      },
    }),
  };
  t.equal((await run({ kind: 'screenshot' }, broken, ac.signal)).result, 'passed', 'an unreadable console is no finding');
  const plain = { ...unwatched, handle: handle(dir) };
  t.equal((await run({ kind: 'screenshot' }, plain, ac.signal)).result, 'passed', 'no console readers at all');
  // The VM's last passing screen is asked for by name (here a pruned one: no warning).
  t.equal((await run({ kind: 'screenshot' }, { ...plain, name: 'changed' }, ac.signal)).result, 'passed');
});

t.test('vmDone: a finding after the screenshot test is a failed console test; an aborted run reports nothing', async (t) => {
  const dir = t.testdir();
  let serial = 'boot ok\n';
  const h = handle(dir, { serialLog: async () => serial });
  const run = createTestRunner({ repo: async () => new FileRepo(dir), screenshotDir: dir, ocr: false, consoleIntervalMs: 10 });
  const vm = { name: 'web', pointId: 'p', role: role([{ kind: 'ping' }, { kind: 'screenshot' }]), handle: h };
  const ac = new AbortController();
  t.equal((await run({ kind: 'screenshot' }, vm, ac.signal)).result, 'passed');
  serial += 'You are in emergency mode. After logging in, type "journalctl -xb"\n';
  const late = await run.vmDone!({ name: 'web', handle: h }, ac.signal);
  t.equal(late.length, 1);
  t.same([late[0]!.name, late[0]!.kind, late[0]!.result], ['console', 'console', 'failed']);
  t.match(
    late[0]!.detail,
    /^emergency mode on the serial console: "You are in emergency mode\. .*" \(seen after the screenshot test, or with no screenshot taken\)$/,
  );
  t.ok(late[0]!.seconds >= 0);
  const h2 = handle(dir, { serialLog: async () => 'Kernel panic - not syncing: x\n' });
  const aborted = new AbortController();
  await run({ kind: 'ping' }, { ...vm, handle: h2 }, aborted.signal);
  aborted.abort();
  t.same(await run.vmDone!({ name: 'web', handle: h2 }, aborted.signal), [], 'a cancelled run reports nothing more');
  // A VM that is not watched (no screenshot test) has no console verdict at the end.
  const h3 = handle(dir, { serialLog: async () => 'Kernel panic - not syncing: x\n' });
  await run({ kind: 'ping' }, { ...vm, role: role([{ kind: 'ping' }]), handle: h3 }, ac.signal);
  t.same(await run.vmDone!({ name: 'web', handle: h3 }, ac.signal), []);
});

t.test("integrity: the chunks of the VM's point", async (t) => {
  const dir = t.testdir();
  const repo = new FileRepo(join(dir, 'repo'));
  repo.addPoint('p1', 'web', { sda: randomBytes(4096 * 2) });
  const run = createTestRunner({ repo: async () => repo, screenshotDir: dir });
  const r = await run(
    { kind: 'integrity' },
    { name: 'web', pointId: 'p1', role: role([{ kind: 'integrity' }]), handle: handle(dir) },
    new AbortController().signal,
  );
  t.same([r.name, r.kind, r.result, r.detail], ['integrity', 'integrity', 'passed', '2 chunks of 1 disk(s) verified']);
  t.notOk('corrupt' in r || 'chunks' in r, 'only the TestResult fields');
});

// The heartbeat decision on a virtual clock: every path and every number in
// its verdict, exactly, in milliseconds of real time. Probes are scripts; the
// real agent and ICMP probes run in test/verify/lab-tests.test.ts and the
// guest tests, and test/verify/heartbeat.test.ts runs the same decision on
// the wall clock. One of the tests the mutation run uses (docs/testing.md).
import t from 'tap';
import { DEFAULT_LOSS, DEFAULT_STABILITY, heartbeat, realClock, watchHeartbeat } from '../../src/verify/heartbeat.js';
import { virtualClock, type VirtualClock } from './fixtures/virtual-clock.js';

/** A probe answering from a script, then `rest`; it records when it was asked. */
function scripted(clock: VirtualClock, answers: boolean[], rest = false) {
  const at: number[] = [];
  const fn = async (): Promise<boolean> => {
    at.push(clock.elapsed());
    return at.length <= answers.length ? answers[at.length - 1]! : rest;
  };
  return Object.assign(fn, { at });
}
const AGENT_HINT = ' (the VM definition expects an agent; a guest without one needs "agent": false)';

t.test('defaults: three answers over four seconds; a loss is three misses over ten', async (t) => {
  t.same(DEFAULT_STABILITY, { pings: 3, seconds: 4 });
  t.same(DEFAULT_LOSS, { pings: 3, seconds: 10 });
});

t.test('agent path: three answers two seconds apart pass after 4 s; the address does not matter', async (t) => {
  const clock = virtualClock();
  const agent = scripted(clock, [], true);
  const ip = scripted(clock, [], false);
  const r = await heartbeat({ agentPing: agent, ipAnswer: ip }, { maxBootSeconds: 600, clock });
  t.same(r, {
    name: 'heartbeat',
    kind: 'heartbeat',
    result: 'passed',
    seconds: 4,
    path: 'agent',
    detail: 'via guest agent: 3 consecutive answers over ≥4 s, after 4.0 s',
  });
  t.same(agent.at, [0, 2000, 4000], 'one probe every 2 s');
  t.same(ip.at, [0, 2000, 4000], 'the address is probed alongside, for the failure detail');
});

t.test('a miss restarts the count', async (t) => {
  const clock = virtualClock();
  const agent = scripted(clock, [true, true, false, true, true], true);
  const r = await heartbeat({ agentPing: agent, ipAnswer: async () => true }, { maxBootSeconds: 600, clock });
  t.equal(r.result, 'passed');
  t.same(agent.at, [0, 2000, 4000, 6000, 8000, 10000], 'ok, ok, miss, then three in a row');
  t.equal(r.detail, 'via guest agent: 3 consecutive answers over ≥4 s, after 10.0 s');
  t.equal(r.seconds, 10);
});

t.test('stable means both: the count and the span', async (t) => {
  // Five answers in a row are not stable before they span 8 s.
  const clock = virtualClock();
  const agent = scripted(clock, [], true);
  const r = await heartbeat(
    { agentPing: agent, ipAnswer: async () => false },
    { maxBootSeconds: 600, stability: { pings: 5, seconds: 8 }, clock },
  );
  t.same(agent.at, [0, 2000, 4000, 6000, 8000]);
  t.equal(r.detail, 'via guest agent: 5 consecutive answers over ≥8 s, after 8.0 s');
  // Two pings over 0 s: the first two answers, one second apart (the probe interval floor is not used for spacing).
  const c2 = virtualClock();
  const a2 = scripted(c2, [], true);
  const r2 = await heartbeat(
    { agentPing: a2, ipAnswer: async () => false },
    { maxBootSeconds: 600, stability: { pings: 2, seconds: 0 }, clock: c2 },
  );
  t.same(a2.at, [0, 0], 'no wait between rounds when the span is 0');
  t.equal(r2.detail, 'via guest agent: 2 consecutive answers over ≥0 s, after 0.0 s');
  // One ping: an answer is enough, and a VM that is silent at first is asked again a second later.
  const c3 = virtualClock();
  const ip3 = scripted(c3, [false], true);
  const r3 = await heartbeat({ ipAnswer: ip3 }, { maxBootSeconds: 600, stability: { pings: 1, seconds: 0 }, clock: c3 });
  t.same(ip3.at, [0, 1000]);
  t.same([r3.result, r3.path, r3.seconds], ['passed', 'ip', 1]);
});

t.test('no agent: the address answering stably passes via ICMP', async (t) => {
  const clock = virtualClock();
  const ip = scripted(clock, [false, true, true, true]);
  const r = await heartbeat({ ipAnswer: ip }, { maxBootSeconds: 600, clock });
  t.same(r, {
    name: 'heartbeat',
    kind: 'heartbeat',
    result: 'passed',
    seconds: 6,
    path: 'ip',
    detail: 'via ICMP on the lab bridge (VM has no guest agent): 3 consecutive answers over ≥4 s, after 6.0 s',
  });
});

t.test('no agent and no answer: a warning at the maximum boot time, never a pass', async (t) => {
  const clock = virtualClock();
  const ip = scripted(clock, [], false);
  const r = await heartbeat({ ipAnswer: ip }, { maxBootSeconds: 10, clock });
  t.same(r, {
    name: 'heartbeat',
    kind: 'heartbeat',
    result: 'warning',
    seconds: 10,
    path: 'boot-time',
    detail: 'no guest agent and no ICMP answer on the lab bridge; waited out the maximum boot time (10 s)',
  });
  t.same(ip.at, [0, 2000, 4000, 6000, 8000, 10000]);
  const c2 = virtualClock();
  const flaky = await heartbeat({ ipAnswer: scripted(c2, [true, false, true, false, true, false]) }, { maxBootSeconds: 10, clock: c2 });
  t.same([flaky.result, flaky.path], ['warning', 'boot-time']);
  t.equal(flaky.detail, 'no guest agent and no stable ICMP answer on the lab bridge; waited out the maximum boot time (10 s)');
});

t.test('the last round lands on the deadline, not an interval past it', async (t) => {
  const clock = virtualClock();
  const ip = scripted(clock, [], false);
  const r = await heartbeat({ ipAnswer: ip }, { maxBootSeconds: 3, clock });
  t.same(ip.at, [0, 2000, 3000]);
  t.equal(r.seconds, 3);
  // A slow probe shortens the wait before the next round: rounds stay 2 s apart.
  const c2 = virtualClock();
  const slow = scripted(c2, [], false);
  const timed = async (): Promise<boolean> => {
    const v = await slow();
    c2.advance(1500);
    return v;
  };
  await heartbeat({ ipAnswer: timed }, { maxBootSeconds: 6, clock: c2 });
  t.same(slow.at, [0, 2000, 4000, 6000]);
});

t.test('an agent VM whose agent stays silent fails, even when its address answers stably', async (t) => {
  const clock = virtualClock();
  const ip = scripted(clock, [false], true);
  const r = await heartbeat({ agentPing: async () => false, ipAnswer: ip }, { maxBootSeconds: 20, clock });
  t.same(r, {
    name: 'heartbeat',
    kind: 'heartbeat',
    result: 'failed',
    seconds: 20,
    path: 'none',
    detail:
      'the guest agent never answered within the maximum boot time (20 s); its address answered ICMP stably after 6.0 s, so the guest runs but is not healthy' +
      AGENT_HINT,
  });
  t.same(ip.at, [0, 2000, 4000, 6000], 'once stable, the address is not asked again');
});

t.test('an agent that answers now and then fails and says when it first answered; so does the address', async (t) => {
  const clock = virtualClock();
  const r = await heartbeat(
    { agentPing: scripted(clock, [false, true, false, true, false]), ipAnswer: scripted(clock, [false, false, true, false]) },
    { maxBootSeconds: 10, clock },
  );
  t.equal(r.result, 'failed');
  t.equal(
    r.detail,
    'the guest agent answered (first after 2.0 s) but never 3 consecutive answers over ≥4 s within the maximum boot time (10 s); ' +
      'its address answered ICMP (first after 4.0 s) but not stably' +
      AGENT_HINT,
  );
  const c2 = virtualClock();
  const none = await heartbeat({ agentPing: async () => false, ipAnswer: async () => false }, { maxBootSeconds: 4, clock: c2 });
  t.equal(
    none.detail,
    'the guest agent never answered within the maximum boot time (4 s); its address did not answer ICMP either' + AGENT_HINT,
  );
  t.equal(none.seconds, 4);
});

t.test('a hung or failing probe is a miss after the probe time, and does not hold the loop', async (t) => {
  const clock = virtualClock();
  const hung = await heartbeat(
    { agentPing: () => new Promise<boolean>(() => undefined), ipAnswer: () => Promise.reject(new Error('ping died')) },
    { maxBootSeconds: 6, clock },
  );
  t.equal(hung.result, 'failed');
  t.equal(
    hung.detail,
    'the guest agent never answered within the maximum boot time (6 s); its address did not answer ICMP either' + AGENT_HINT,
  );
  t.equal(hung.seconds, 6, 'each hung round takes its 2 s probe time, no more');
  // The probe time is at least a second, even with answers wanted every half second.
  const c2 = virtualClock();
  const r = await heartbeat(
    { agentPing: () => new Promise<boolean>(() => undefined), ipAnswer: async () => false },
    { maxBootSeconds: 1.5, stability: { pings: 3, seconds: 1 }, clock: c2 },
  );
  t.equal(r.seconds, 2, 'rounds at 0 and 1 s (each hung for 1 s), then the deadline');
});

t.test("a cancel ends the wait with the signal's reason", async (t) => {
  const clock = virtualClock();
  const ac = new AbortController();
  let n = 0;
  const p = heartbeat(
    {
      ipAnswer: async () => {
        if (++n === 3) ac.abort(new Error('cancelled'));
        return false;
      },
    },
    { maxBootSeconds: 600, clock, signal: ac.signal },
  );
  await t.rejects(p, /cancelled/);
  t.equal(n, 3);
  const done = new AbortController();
  done.abort(new Error('already'));
  await t.rejects(
    heartbeat({ ipAnswer: async () => false }, { maxBootSeconds: 600, clock: virtualClock(), signal: done.signal }),
    /already/,
  );
});

/** Lets a watch run until `cond`; a virtual-clock loop yields at every sleep. */
async function until(cond: () => boolean): Promise<void> {
  for (let i = 0; i < 10_000 && !cond(); i++) await new Promise((r) => setImmediate(r));
  if (!cond()) throw new Error('watch did not get there');
}

t.test('watch: answering through the window holds, and says for how long', async (t) => {
  const clock = virtualClock();
  const probe = scripted(clock, [true, false, true, true, false, true], true);
  const w = watchHeartbeat(probe, 'the guest agent', { clock });
  await until(() => probe.at.length >= 8);
  const r = await w.settle();
  t.ok(probe.at.length >= 8);
  t.same(r, {
    held: true,
    detail: `the guest agent kept answering through the test window (${(clock.elapsed() / 1000).toFixed(1)} s, ${probe.at.length} probes)`,
  });
  t.same(probe.at.slice(0, 4), [0, 2000, 4000, 6000], 'every 2 s by default');
  const n = probe.at.length;
  await new Promise((r) => setTimeout(r, 20));
  t.equal(probe.at.length, n, 'no probe after settle');
});

t.test('watch: three misses over ten seconds are a loss; fewer, or shorter, are not', async (t) => {
  const clock = virtualClock();
  const probe = scripted(clock, [true, true, true], false);
  const w = watchHeartbeat(probe, '10.0.0.2 (ICMP)', { clock });
  await until(() => probe.at.length >= 9);
  await new Promise((r) => setTimeout(r, 20));
  t.same(probe.at, [0, 2000, 4000, 6000, 8000, 10000, 12000, 14000, 16000], 'misses from 6 s, lost at 16 s: the watch stops there');
  t.same(await w.settle(), {
    held: false,
    detail:
      'lost during the test window: 10.0.0.2 (ICMP) stopped answering (3 consecutive misses over ≥10 s), 16.0 s after the heartbeat passed',
  });
  // A custom loss: two misses over one second, probed every half second.
  const c2 = virtualClock();
  const p2 = scripted(c2, [true], false);
  const w2 = watchHeartbeat(p2, 'x', { clock: c2, loss: { pings: 2, seconds: 1 }, intervalMs: 500 });
  await until(() => p2.at.length >= 4);
  t.same(await w2.settle(), {
    held: false,
    detail: 'lost during the test window: x stopped answering (2 consecutive misses over ≥1 s), 1.5 s after the heartbeat passed',
  });
  t.same(p2.at, [0, 500, 1000, 1500]);
});

t.test('watch: settling in a miss streak decides it first, either way; settling without one stops at once', async (t) => {
  const clock = virtualClock();
  const dying = scripted(clock, [true, false], false);
  const w = watchHeartbeat(dying, 'x', { clock });
  await until(() => dying.at.length >= 2);
  const r = await w.settle();
  t.equal(r.held, false, 'the streak that began before the end counts');
  t.same(dying.at, [0, 2000, 4000, 6000, 8000, 10000, 12000]);
  const c2 = virtualClock();
  const blip = scripted(c2, [true, false, true], true);
  const w2 = watchHeartbeat(blip, 'x', { clock: c2 });
  await until(() => blip.at.length >= 2);
  const r2 = await w2.settle();
  t.equal(r2.held, true, 'one miss, then an answer: held');
  t.same(blip.at, [0, 2000, 4000], 'probed on until the streak was decided, then stopped');
  const c3 = virtualClock();
  const fine = scripted(c3, [], true);
  const w3 = watchHeartbeat(fine, 'x', { clock: c3 });
  await until(() => fine.at.length >= 3);
  await w3.settle();
  t.ok(fine.at.length <= 4, 'no streak: done at the next round');
});

t.test("watch: hung and failing probes are misses; abandon and the run's signal end it at once", async (t) => {
  const clock = virtualClock();
  const hung = watchHeartbeat(() => new Promise<boolean>(() => undefined), 'x', { clock, probeTimeoutMs: 3000 });
  const r = await hung.settle();
  t.same(
    r,
    {
      held: false,
      detail: 'lost during the test window: x stopped answering (3 consecutive misses over ≥10 s), 15.0 s after the heartbeat passed',
    },
    'hung probes of 3 s each, back to back: misses at 3, 6, 9, 12 and 15 s',
  );
  const c2 = virtualClock();
  const failing = watchHeartbeat(() => Promise.reject(new Error('agent socket closed')), 'x', { clock: c2 });
  t.equal((await failing.settle()).held, false);
  const c3 = virtualClock();
  const quiet = scripted(c3, [], false);
  const w = watchHeartbeat(quiet, 'x', { clock: c3 });
  await until(() => quiet.at.length >= 2);
  const abandoned = await w.settle({ abandon: true });
  t.equal(abandoned.held, true, 'abandoned before a loss was decided');
  t.ok(quiet.at.length <= 3, 'no waiting for the streak');
  const c4 = virtualClock();
  const ac = new AbortController();
  const p4 = scripted(c4, [], true);
  const w4 = watchHeartbeat(p4, 'x', { clock: c4, signal: ac.signal });
  await until(() => p4.at.length >= 2);
  ac.abort(new Error('run cancelled'));
  await new Promise((r) => setTimeout(r, 20));
  const n = p4.at.length;
  await new Promise((r) => setTimeout(r, 20));
  t.equal(p4.at.length, n, "the run's cancel stops the probing");
  t.equal((await w4.settle()).held, true);
});

t.test('the real clock sleeps and can be cancelled', async (t) => {
  const t0 = realClock.now();
  await realClock.sleep(30);
  t.ok(realClock.now() - t0 >= 25);
  const ac = new AbortController();
  setTimeout(() => ac.abort(new Error('stop')), 10);
  await t.rejects(realClock.sleep(10_000, ac.signal), /stop/);
  const gone = new AbortController();
  gone.abort(new Error('gone'));
  await t.rejects(realClock.sleep(10, gone.signal), /gone/);
});

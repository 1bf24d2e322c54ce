// The heartbeat's decision logic with scripted probes; the real agent and
// ICMP probes run in test/verify/lab-tests.test.ts and the guest tests
// (test/surebackup/verdicts.test.ts: a guest whose agent cannot start).
import t from 'tap';
import { heartbeat, watchHeartbeat } from '../../src/verify/heartbeat.js';

const quick = { pings: 3, seconds: 0.2 };
const seq = (answers: boolean[], rest = answers.at(-1) ?? false) => {
  let i = 0;
  return async () => (i < answers.length ? answers[i++]! : rest);
};

t.test('agent path: stable after N consecutive answers, a miss restarts the count', async (t) => {
  let calls = 0;
  const agentPing = async () => {
    calls++;
    return calls !== 2;
  };
  const r = await heartbeat({ agentPing, ipAnswer: async () => true }, { maxBootSeconds: 10, stability: quick });
  t.equal(r.result, 'passed');
  t.equal(r.path, 'agent');
  t.equal(calls, 5, 'ok, miss, then three in a row');
  t.match(r.detail, /via guest agent: 3 consecutive answers/);
});

t.test('no agent: a stable ICMP answer passes via the ip path', async (t) => {
  const r = await heartbeat({ ipAnswer: seq([false, true, true, true]) }, { maxBootSeconds: 10, stability: quick });
  t.equal(r.result, 'passed');
  t.equal(r.path, 'ip');
  t.match(r.detail, /via ICMP on the lab bridge \(VM has no guest agent\)/);
});

t.test('no agent: answers that never become stable do not pass', async (t) => {
  let n = 0;
  const r = await heartbeat({ ipAnswer: async () => n++ % 2 === 0 }, { maxBootSeconds: 1, stability: quick });
  t.equal(r.result, 'warning', r.detail);
  t.equal(r.path, 'boot-time');
});

// The case issue #14 is about: the guest runs (its address answers, maybe its
// static services too) but its agent cannot start. Before, this passed "via IP".
t.test('agent expected but silent: failed, never passed via the address', async (t) => {
  const t0 = Date.now();
  const r = await heartbeat({ agentPing: async () => false, ipAnswer: async () => true }, { maxBootSeconds: 1.5, stability: quick });
  t.equal(r.result, 'failed');
  t.equal(r.path, 'none');
  t.ok(Date.now() - t0 >= 1400, 'the guest had its whole boot time');
  t.match(r.detail, /the guest agent never answered within the maximum boot time \(1\.5 s\)/);
  t.match(r.detail, /its address answered ICMP stably after [\d.]+ s, so the guest runs but is not healthy/);
  t.match(r.detail, /"agent": false/, 'says how to declare a guest without an agent');
});

t.test('agent answers now and then but never stably: failed, and says so', async (t) => {
  let n = 0;
  const r = await heartbeat({ agentPing: async () => n++ % 2 === 0, ipAnswer: async () => false }, { maxBootSeconds: 1, stability: quick });
  t.equal(r.result, 'failed');
  t.match(r.detail, /the guest agent answered \(first after [\d.]+ s\) but never 3 consecutive answers/);
  t.match(r.detail, /its address did not answer ICMP either/);
});

t.test('no agent and no address answer: waits out the boot time, warning', async (t) => {
  const t0 = Date.now();
  const r = await heartbeat({ ipAnswer: async () => false }, { maxBootSeconds: 1, stability: quick });
  t.equal(r.result, 'warning');
  t.equal(r.path, 'boot-time');
  t.ok(Date.now() - t0 >= 950);
});

t.test('an agent VM that answers nothing fails at its boot timeout', async (t) => {
  const t0 = Date.now();
  const r = await heartbeat({ agentPing: async () => false, ipAnswer: async () => false }, { maxBootSeconds: 1, stability: quick });
  t.equal(r.result, 'failed');
  t.match(r.detail, /maximum boot time \(1 s\)/);
  const el = Date.now() - t0;
  t.ok(el >= 950 && el < 4000, `failed after ${el} ms`);
});

t.test('a hung agent ping does not hold the heartbeat past its deadline', async (t) => {
  const t0 = Date.now();
  const r = await heartbeat(
    { agentPing: () => new Promise<boolean>(() => undefined), ipAnswer: async () => false },
    { maxBootSeconds: 1, stability: quick },
  );
  t.equal(r.result, 'failed');
  t.ok(Date.now() - t0 < 5000);
});

t.test('cancel stops it', async (t) => {
  const ac = new AbortController();
  setTimeout(() => ac.abort(new Error('cancelled')), 200);
  await t.rejects(heartbeat({ ipAnswer: async () => false }, { maxBootSeconds: 30, stability: quick, signal: ac.signal }), /cancelled/);
});

const fastWatch = { loss: { pings: 3, seconds: 0.3 }, intervalMs: 100, probeTimeoutMs: 300 };
const until = async (cond: () => boolean, ms: number): Promise<void> => {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
};

t.test('watch: a heartbeat that keeps answering holds through the window', async (t) => {
  let probes = 0;
  const w = watchHeartbeat(
    async () => {
      probes++;
      return probes % 4 !== 0;
    },
    'the guest agent',
    fastWatch,
  );
  await until(() => probes >= 12, 5000);
  const r = await w.settle();
  t.equal(r.held, true, r.detail);
  t.match(r.detail, /the guest agent kept answering through the test window \([\d.]+ s, \d+ probes\)/);
  const at = probes;
  await new Promise((r) => setTimeout(r, 300));
  t.equal(probes, at, 'no probe after settle');
});

t.test('watch: an answer that stops is a lost heartbeat', async (t) => {
  let alive = true;
  let probes = 0;
  const w = watchHeartbeat(
    async () => {
      probes++;
      return alive;
    },
    '10.0.0.2 (ICMP)',
    fastWatch,
  );
  await until(() => probes >= 3, 5000);
  alive = false;
  await until(() => probes >= 7, 5000); // three alive, then misses until the loss (the watch stops there)
  const r = await w.settle();
  t.equal(r.held, false);
  t.match(r.detail, /lost during the test window: 10\.0\.0\.2 \(ICMP\) stopped answering \(3 consecutive misses over ≥0\.3 s\)/);
});

t.test('watch: settling during a miss streak decides it first, either way', async (t) => {
  // Dead at the end of the window: the streak runs on to a loss.
  let alive = true;
  let probes = 0;
  const dying = watchHeartbeat(
    async () => {
      probes++;
      return alive;
    },
    'x',
    fastWatch,
  );
  await until(() => probes >= 2, 5000);
  alive = false;
  await until(() => probes >= 3, 5000);
  t.equal((await dying.settle()).held, false, 'the streak that began before the end counts');
  // One lost probe, then answers again: held.
  let n = 0;
  const blip = watchHeartbeat(
    async () => {
      n++;
      return n !== 3;
    },
    'x',
    fastWatch,
  );
  await until(() => n >= 3, 5000);
  t.equal((await blip.settle()).held, true, 'one miss is not a loss');
});

t.test('watch: a hung probe is a miss, and abandon answers at once', async (t) => {
  const hung = watchHeartbeat(() => new Promise<boolean>(() => undefined), 'x', fastWatch);
  const t0 = Date.now();
  const r = await hung.settle();
  t.equal(r.held, false, 'hung probes are misses, and three of them are a loss');
  t.ok(Date.now() - t0 < 3000, `decided in ${Date.now() - t0} ms`);
  const quiet = watchHeartbeat(async () => false, 'x', { ...fastWatch, loss: { pings: 3, seconds: 60 } });
  const t1 = Date.now();
  await quiet.settle({ abandon: true });
  t.ok(Date.now() - t1 < 1000, 'abandon does not wait for the streak');
});

// The heartbeat's decision logic with scripted probes; the real agent and
// bridge probes run in test/verify/lab-tests.test.ts and the guest tests.
import t from 'tap';
import { heartbeat } from '../../src/verify/heartbeat.js';

const quick = { pings: 3, seconds: 0.2 };
const seq = (answers: boolean[], rest = answers.at(-1) ?? false) => { let i = 0; return async () => (i < answers.length ? answers[i++]! : rest); };

t.test('agent path: stable after N consecutive answers, a miss restarts the count', async (t) => {
  let calls = 0;
  const agentPing = async () => { calls++; return calls !== 2; };
  const r = await heartbeat({ agentPing, ipAnswer: async () => true }, { maxBootSeconds: 10, stability: quick, agentGraceSeconds: 5 });
  t.equal(r.result, 'passed'); t.equal(r.path, 'agent');
  t.equal(calls, 5, 'ok, miss, then three in a row');
  t.match(r.detail, /via guest agent: 3 consecutive answers/);
});

t.test('no agent: a stable IP answer passes via the ip path', async (t) => {
  const r = await heartbeat({ ipAnswer: seq([false, true, true, true]) }, { maxBootSeconds: 10, stability: quick });
  t.equal(r.result, 'passed'); t.equal(r.path, 'ip'); t.match(r.detail, /no guest agent/);
});

t.test('agent expected but silent: the IP path after the agent grace', async (t) => {
  const t0 = Date.now();
  const r = await heartbeat({ agentPing: async () => false, ipAnswer: async () => true }, { maxBootSeconds: 10, stability: quick, agentGraceSeconds: 0.5 });
  t.equal(r.path, 'ip'); t.equal(r.result, 'passed');
  t.ok(Date.now() - t0 >= 450, 'waited for the agent grace');
  t.match(r.detail, /guest agent silent/);
});

t.test('no agent and no address answer: waits out the boot time, warning', async (t) => {
  const t0 = Date.now();
  const r = await heartbeat({ ipAnswer: async () => false }, { maxBootSeconds: 1, stability: quick });
  t.equal(r.result, 'warning'); t.equal(r.path, 'boot-time');
  t.ok(Date.now() - t0 >= 950);
});

t.test('an agent VM that answers nothing fails at its boot timeout', async (t) => {
  const t0 = Date.now();
  const r = await heartbeat({ agentPing: async () => false, ipAnswer: async () => false }, { maxBootSeconds: 1, stability: quick });
  t.equal(r.result, 'failed'); t.match(r.detail, /maximum boot time \(1 s\)/);
  const el = Date.now() - t0;
  t.ok(el >= 950 && el < 4000, `failed after ${el} ms`);
});

t.test('a hung agent ping does not hold the heartbeat past its deadline', async (t) => {
  const t0 = Date.now();
  const r = await heartbeat({ agentPing: () => new Promise<boolean>(() => undefined), ipAnswer: async () => false }, { maxBootSeconds: 1, stability: quick });
  t.equal(r.result, 'failed');
  t.ok(Date.now() - t0 < 5000);
});

t.test('cancel stops it', async (t) => {
  const ac = new AbortController();
  setTimeout(() => ac.abort(new Error('cancelled')), 200);
  await t.rejects(heartbeat({ ipAnswer: async () => false }, { maxBootSeconds: 30, stability: quick, signal: ac.signal }), /cancelled/);
});

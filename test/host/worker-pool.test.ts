/**
 * WorkerPool with real worker threads: replies are matched to requests,
 * requests spread over the least busy workers, a worker that dies rejects
 * what is pending and everything after, and a closed pool refuses requests.
 */
import t from 'tap';
import { WorkerPool } from '../../src/host/worker-pool.js';
import type { EchoReply, EchoRequest } from './fixtures/echo-worker.js';

const script = new URL('./fixtures/echo-worker.js', import.meta.url);

t.test('replies match requests, spread over the workers', async (t) => {
  const pool = new WorkerPool<EchoRequest, EchoReply>({ script, workerData: null, size: 2, name: 'echo' });
  t.teardown(() => pool.close());
  t.equal(pool.size, 2);
  // The slow first request keeps its worker busy: the next ones go to the other, least busy, one first.
  const replies = await Promise.all(
    ['a', 'b', 'c', 'd'].map((value, i) => pool.request({ op: 'echo', value, delayMs: i === 0 ? 200 : 10 })),
  );
  t.same(
    replies.map((r) => r.value),
    ['a', 'b', 'c', 'd'],
    'each reply answers its own request',
  );
  t.equal(new Set(replies.map((r) => r.thread)).size, 2, 'both workers served');
  t.not(replies[0]?.thread, replies[1]?.thread, 'the second request went to the idle worker');
});

t.test('a worker that dies fails the pool', async (t) => {
  let seen: Error | undefined;
  const pool = new WorkerPool<EchoRequest, EchoReply>({
    script,
    workerData: null,
    size: 2,
    name: 'echo',
    onFailure: (e) => {
      seen = e;
    },
  });
  t.teardown(() => pool.close());
  const slow = pool.request({ op: 'echo', value: 'x', delayMs: 2000 });
  await t.rejects(Promise.all([slow, pool.request({ op: 'exit', code: 3 })]), /echo worker exited with code 3/, 'pending requests reject');
  t.match(pool.failure?.message, /exited with code 3/, 'the pool records why');
  t.match(seen?.message, /exited with code 3/, 'onFailure heard it once');
  await t.rejects(pool.request({ op: 'echo', value: 'y', delayMs: 0 }), /exited with code 3/, 'later requests reject at once');
});

t.test('a closed pool refuses requests', async (t) => {
  const pool = new WorkerPool<EchoRequest, EchoReply>({ script, workerData: null, size: 1, name: 'echo', unrefWhenIdle: true });
  t.equal((await pool.request({ op: 'echo', value: 'ok', delayMs: 0 })).value, 'ok');
  const closing = pool.close();
  await t.rejects(pool.request({ op: 'echo', value: 'late', delayMs: 0 }), /echo pool closed/, 'while closing');
  await closing;
  await t.rejects(pool.request({ op: 'echo', value: 'later', delayMs: 0 }), /echo pool closed/, 'after closing');
  t.equal(pool.size, 0, 'no workers left');
});

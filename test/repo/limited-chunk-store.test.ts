/**
 * LimitedChunkStore's bound, with a counting fake store (the wrapper's real
 * integration runs the shared suite on the RADOS Gateway in s3-chunk-store.test.ts).
 */
import t from 'tap';
import type { ChunkStore } from '../../src/repo/api.js';
import { LimitedChunkStore, Semaphore } from '../../src/repo/limited-chunk-store.js';

function fakeStore(): { store: ChunkStore; peak: () => number; release: () => void } {
  let inFlight = 0;
  let peak = 0;
  const waiting: (() => void)[] = [];
  const slow = async <T>(v: T): Promise<T> => {
    inFlight++;
    peak = Math.max(peak, inFlight);
    await new Promise<void>((r) => waiting.push(r));
    inFlight--;
    return v;
  };
  const store = {
    path: 'fake://store',
    has: () => slow(true),
    touch: () => slow(true),
    insert: (_d: string, b: Buffer) => slow({ existed: false, size: b.length }),
    replace: () => slow(undefined),
    sync: async () => undefined,
    get: () => slow(Buffer.from('x')),
    list: async function* () {},
    listQuarantined: async function* () {},
    quarantine: () => slow(undefined),
    remove: () => slow(1),
    removeIfUnused: () => slow(1),
  } satisfies ChunkStore;
  return {
    store,
    peak: () => peak,
    // Lets every operation waiting now finish.
    release: () => waiting.splice(0).forEach((go) => go()),
  };
}

t.test('at most `limit` operations reach the store at once; all complete', async (t) => {
  const f = fakeStore();
  const limited = new LimitedChunkStore(f.store, 3);
  const ops = Array.from({ length: 10 }, (_, i) => (i % 2 ? limited.get('a'.repeat(64)) : limited.insert('b'.repeat(64), Buffer.alloc(4))));
  let done = 0;
  ops.forEach((p) => void p.then(() => done++));
  while (done < 10) {
    await new Promise((r) => setImmediate(r));
    t.ok(limited.inFlight <= 3);
    f.release();
  }
  t.equal(f.peak(), 3, 'the bound was reached and never passed');
  t.equal(limited.fileOf, undefined, 'a store without files gets no fileOf from the wrapper');
  t.equal(limited.insertPlaced, undefined, 'nor insertPlaced');
});

t.test('insertPlaced of a store with files goes through the wrapper, within the bound', async (t) => {
  const f = fakeStore();
  const placed: string[] = [];
  const inner: ChunkStore = {
    ...f.store,
    insertPlaced: async (digest, place) => {
      placed.push(digest);
      return { existed: false, size: await place({ tmp: '/x/.tmp', target: `/x/${digest}`, fsync: false, mode: 0o600 }) };
    },
  };
  const limited = new LimitedChunkStore(inner, 1);
  const hold = limited.get('a'.repeat(64));
  const ins = limited.insertPlaced?.('c'.repeat(64), async () => 42);
  await new Promise((r) => setImmediate(r));
  t.same(placed, [], 'waits for the slot the get holds');
  f.release();
  await hold;
  t.same(await ins, { existed: false, size: 42 });
  t.same(placed, ['c'.repeat(64)]);
});

t.test('a failing operation frees its slot', async (t) => {
  const sema = new Semaphore(1);
  await t.rejects(
    sema.run(async () => Promise.reject(new Error('boom'))),
    /boom/,
  );
  t.equal(await sema.run(async () => 42), 42);
  t.equal(sema.inFlight, 0);
  t.throws(() => new Semaphore(0), RangeError);
});

/** ChunkCache slots: decoded chunks live in reused shared memory, within the byte bound. */
import t from 'tap';
import { ChunkCache, type ChunkFill } from '../../src/disk/chunk-cache.js';

const SLOT = 1024;

/** A fill that writes `byte` into the slot it asks for, as a decode worker does, after `delayMs`. */
function slotFill(byte: number, delayMs = 0, log?: Buffer[]): ChunkFill {
  return async (slot) => {
    const into = slot(SLOT);
    log?.push(into);
    if (delayMs) await new Promise((r) => setTimeout(r, delayMs));
    return into.fill(byte).subarray(0, SLOT - 24);
  };
}

const copy = (b: Buffer): Buffer => Buffer.from(b);

t.test('a chunk lives in a shared slot, and the slot of an evicted chunk is reused', async (t) => {
  const cache = new ChunkCache(SLOT * 2);
  const slots: Buffer[] = [];
  const a = await cache.withChunk('a', slotFill(1, 0, slots), copy);
  t.ok(a.equals(Buffer.alloc(SLOT - 24, 1)), 'the bytes the fill wrote, as long as it said');
  t.ok(slots[0]!.buffer instanceof SharedArrayBuffer, 'the slot is shared memory a worker can write');
  await cache.withChunk('b', slotFill(2, 0, slots), copy);
  await cache.withChunk('c', slotFill(3, 0, slots), copy); // evicts a
  t.equal(cache.count, 2);
  t.ok(cache.size <= SLOT * 2, `within the bound (${cache.size})`);
  t.equal(slots[2]!.buffer, slots[0]!.buffer, "c was decoded into a's slot");
  t.ok((await cache.withChunk('b', slotFill(9), copy)).equals(Buffer.alloc(SLOT - 24, 2)), 'b is still cached and intact');
  t.ok((await cache.withChunk('c', slotFill(9), copy)).equals(Buffer.alloc(SLOT - 24, 3)), 'c is intact');
});

t.test('use() runs with the bytes of its own chunk even when fills race for slots', async (t) => {
  // Four slots, twenty chunks in flight, fills finishing in any order: every
  // reader must see its own chunk. A waiter's chunk stays pinned until it has
  // read it; without that, fills evicted each other's chunks forever.
  const cache = new ChunkCache(SLOT * 4);
  const reads = Array.from({ length: 60 }, (_, i) =>
    cache.withChunk(`k${i % 20}`, slotFill(i % 20, (i * 7) % 5), (b) => b.every((x) => x === i % 20)),
  );
  t.same(await Promise.all(reads), Array(60).fill(true));
  t.ok(cache.size <= SLOT * 4, `within the bound once the fills are done (${cache.size})`);
});

t.test('concurrent readers share one fill; a failed fill is not cached and its slot is not reused', async (t) => {
  const cache = new ChunkCache(SLOT * 2);
  let fills = 0;
  const counting: ChunkFill = async (slot) => {
    fills++;
    return slotFill(5, 10)(slot);
  };
  await Promise.all(Array.from({ length: 5 }, () => cache.withChunk('x', counting, copy)));
  t.equal(fills, 1, 'one fill for five readers');

  const given: Buffer[] = [];
  const failing: ChunkFill = async (slot) => {
    given.push(slot(SLOT));
    throw new Error('decode failed');
  };
  await t.rejects(cache.withChunk('y', failing, copy), /decode failed/);
  t.notOk(cache.has('y'), 'the failure is not cached');
  const slots: Buffer[] = [];
  await cache.withChunk('y', slotFill(6, 0, slots), copy);
  t.not(slots[0]!.buffer, given[0]!.buffer, 'a slot a failed decode may still be writing is dropped');
});

t.test('a fill may return memory of its own (an in-process source); the slot goes back', async (t) => {
  const cache = new ChunkCache(SLOT * 2);
  const own = Buffer.alloc(100, 7);
  const got = await cache.withChunk(
    'p',
    async (slot) => {
      slot(SLOT);
      return own;
    },
    copy,
  );
  t.ok(got.equals(own));
  t.equal(cache.size, 100, 'charged for its own buffer, not the slot');
  const slots: Buffer[] = [];
  await cache.withChunk('q', slotFill(1, 0, slots), copy);
  t.ok(cache.size <= SLOT * 2, `within the bound (${cache.size})`);
});

t.test('streamed chunks are evicted first: a pass larger than the cache keeps what random readers use', async (t) => {
  const cache = new ChunkCache(SLOT * 3);
  await cache.withChunk('hot', slotFill(1), copy);
  for (let i = 0; i < 10; i++) await cache.withChunk(`s${i}`, slotFill(2), copy, { streaming: true });
  t.ok(cache.has('hot'), 'the chunk a random reader used is still cached');
  t.ok(cache.has('s9') && cache.has('s8') && !cache.has('s7'), 'the pass keeps its latest chunks in the rest');
  t.equal(cache.count, 3);

  const lru = new ChunkCache(SLOT * 3);
  await lru.withChunk('hot', slotFill(1), copy);
  for (let i = 0; i < 10; i++) await lru.withChunk(`s${i}`, slotFill(2), copy);
  t.notOk(lru.has('hot'), 'the same pass by random readers evicts it (plain LRU)');

  const promoted = new ChunkCache(SLOT * 2);
  await promoted.withChunk('x', slotFill(1), copy, { streaming: true });
  await promoted.withChunk('x', slotFill(9), copy);
  await promoted.withChunk('y', slotFill(2), copy, { streaming: true });
  await promoted.withChunk('z', slotFill(3), copy, { streaming: true });
  t.ok(promoted.has('x'), 'a streamed chunk a random reader then used is an ordinary one');
  t.notOk(promoted.has('y'), 'the streamed one went instead, though more recent');

  const joined = new ChunkCache(SLOT * 2);
  const fills = [joined.withChunk('j', slotFill(4, 5), copy, { streaming: true }), joined.withChunk('j', slotFill(9), copy)];
  await Promise.all(fills);
  await joined.withChunk('k', slotFill(5), copy, { streaming: true });
  await joined.withChunk('l', slotFill(6), copy, { streaming: true });
  t.ok(joined.has('j'), 'a random reader that waited for a streamed fill makes it ordinary too');
});

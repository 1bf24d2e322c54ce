/**
 * A backup or restore through a slow store without files (object storage's
 * shape) keeps a bounded number of requests, and of blob bytes, in flight:
 * a gateway that answers slowly makes the run slower, never its memory
 * bigger. The bound is in bytes, so bigger chunks mean fewer requests.
 */
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { backupVm } from '../../src/backup/engine.js';
import { restoreDisk } from '../../src/backup/restore.js';
import type { ChunkStore, Repository, StoredChunk } from '../../src/repo/api.js';
import { initRepository } from '../../src/repo/index.js';
import type { VmDefinition } from '../../src/vm/definition.js';

const MiB = 1024 * 1024;
/** What the engine and restore may hold in blobs at once (engine.ts, restore.ts). */
const WRITE_BYTES_BOUND = 64 * MiB;
const FETCH_BYTES_BOUND = 32 * MiB;

const work = await mkdtemp(join(tmpdir(), 'rl-remote-bounds-'));
t.teardown(() => rm(work, { recursive: true, force: true }));

/**
 * A store without files that answers every write and read after `delayMs`, counting what is in flight.
 * Lookups (touch, has) answer at once: a backup holds a pool slot across its touch, so a slow one would
 * throttle the reads before any write could pile up.
 */
class SlowGateway implements ChunkStore {
  readonly path: string;
  inFlight = 0;
  bytesInFlight = 0;
  peak = { requests: 0, bytes: 0 };
  constructor(
    private readonly inner: ChunkStore,
    private readonly delayMs: number,
  ) {
    this.path = inner.path;
  }
  /** `bytes`: the blob a write holds while it waits. */
  private async slow<T>(bytes: number, fn: () => Promise<T>): Promise<T> {
    this.inFlight++;
    this.bytesInFlight += bytes;
    this.peak.requests = Math.max(this.peak.requests, this.inFlight);
    this.peak.bytes = Math.max(this.peak.bytes, this.bytesInFlight);
    try {
      await new Promise((r) => setTimeout(r, this.delayMs));
      return await fn();
    } finally {
      this.inFlight--;
      this.bytesInFlight -= bytes;
    }
  }
  has = (d: string): Promise<boolean> => this.inner.has(d);
  touch = (d: string): Promise<boolean> => this.inner.touch(d);
  insert = (d: string, blob: Buffer): Promise<{ existed: boolean; size: number }> =>
    this.slow(blob.length, () => this.inner.insert(d, blob));
  replace = (d: string, blob: Buffer, o: { keepDamaged: boolean }): Promise<void> =>
    this.slow(blob.length, () => this.inner.replace(d, blob, o));
  sync = (): Promise<void> => this.inner.sync();
  get = (d: string): Promise<Buffer> => this.slow(0, () => this.inner.get(d));
  list = (): AsyncIterable<StoredChunk> => this.inner.list();
  listQuarantined = (): AsyncIterable<StoredChunk> => this.inner.listQuarantined();
  quarantine = (d: string): Promise<void> => this.inner.quarantine(d);
  remove = (d: string): Promise<number> => this.inner.remove(d);
  removeIfUnused = (d: string, c: number): Promise<number> => this.inner.removeIfUnused(d, c);
}

const vm: VmDefinition = { name: 'slow', memoryMiB: 256, vcpus: 1, disks: [{ name: 'root' }], nics: [] };

for (const chunkMiB of [1, 4]) {
  t.test(`${chunkMiB} MiB chunks: a slow gateway keeps requests and blob bytes in flight bounded`, async (t) => {
    const chunkSize = chunkMiB * MiB;
    const local = await initRepository(join(work, `repo-${chunkMiB}`), { chunkSize });
    const gateway = new SlowGateway(local.chunks, 300);
    // The repository with its chunks behind the slow gateway: every other method stays the local one.
    const repo = Object.create(local, { chunks: { value: gateway } }) as Repository;
    // More chunks than any bound lets into flight, incompressible so that a blob is as big as its chunk.
    const count = 48;
    const image = randomBytes(count * chunkSize);
    const file = join(work, `disk-${chunkMiB}.raw`);
    await writeFile(file, image);

    const point = await backupVm({ repo, vm, disks: { root: file }, workers: 1 });
    const writes = gateway.peak;
    t.ok(writes.requests > 2, `writes overlap (${writes.requests} at once)`);
    t.ok(writes.requests < count, `not every chunk at once (${writes.requests} of ${count})`);
    // An incompressible blob is its chunk plus a header of a few bytes: 1% is room enough for those.
    t.ok(
      writes.bytes <= WRITE_BYTES_BOUND * 1.01,
      `blob bytes in flight ${(writes.bytes / MiB).toFixed(1)} MiB, about ${WRITE_BYTES_BOUND / MiB} MiB at most`,
    );
    t.ok(writes.requests * chunkSize <= WRITE_BYTES_BOUND, 'the bound is in bytes: bigger chunks, fewer writes at once');

    gateway.peak = { requests: 0, bytes: 0 };
    const to = join(work, `restored-${chunkMiB}.raw`);
    await restoreDisk({ repo, point: point.id, disk: 'root', to, parallel: 1 });
    const reads = gateway.peak;
    t.ok(reads.requests > 2, `fetches overlap (${reads.requests} at once)`);
    // Each fetch ends in one blob held until a restore thread took it.
    t.ok(
      reads.requests * chunkSize <= FETCH_BYTES_BOUND,
      `${reads.requests} fetches at once, at most ${FETCH_BYTES_BOUND / MiB} MiB of blobs`,
    );
    const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
    t.equal(sha(await readFile(to)), sha(image), 'the restored bytes match');
  });
}

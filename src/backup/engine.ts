/**
 * The backup engine: disk images of one VM in, one restore point out.
 *
 * Words:
 * - *hole chunk*: a chunk whose every byte lies in zero extents of the image;
 *   it is never read and is recorded as null in the fixed index.
 * - *reused*: a chunk the repository already holds (recognised by digest, so
 *   reuse works across disks, VMs and points, not only against the parent),
 *   and whose stored blob decodes to the bytes just read: once per digest and
 *   backup, a damaged blob is replaced by a good copy instead of reused.
 *
 * Memory stays bounded: the pool's slots hold the chunks being read, hashed
 * or compressed, and at most as many blobs wait on the store, whatever the
 * image size. Nothing becomes visible until commitPoint writes the manifest,
 * after the chunk store's sync (SyncLevel) and the indexes;
 * a failure before that rolls back the chunks it added when it safely can
 * (see rollBack), and leaves the rest, unreferenced, to gc.
 */
import { availableParallelism } from 'node:os';
import { performance } from 'node:perf_hooks';
import type { ImageSource } from '../ingest/contract.js';
import { openImage } from '../ingest/open.js';
import type { FixedIndex, NewRestorePoint, RepoLock, Repository } from '../repo/api.js';
import { SweptChunksError } from '../repo/api.js';
import type { BackupStats, Consistency, RestorePoint, RestorePointDisk } from '../repo/contract.js';
import type { VmDefinition } from '../vm/definition.js';
import { badInput, RestorelabError } from '../errors.js';
import { blobSourceOf, type BlobSource } from '../repo/chunk-store.js';
import { CorruptChunkError } from '../repo/contract.js';
import { ChunkPool, type CodecInit, type PlacedChunk, type Slot, type StoredDamage } from './chunk-pool.js';
import { judgeSignals, parentDisk, SignalsRecorder } from './signals.js';
import { tracePhase } from '../host/trace.js';
import { EarlyFlush } from './early-flush.js';

export interface BackupProgress {
  disk: string;
  /** Bytes of this disk's virtual size dealt with so far. */
  done: number;
  total: number;
  stats: Omit<BackupStats, 'seconds'>;
}

export interface BackupOptions {
  repo: Repository;
  vm: VmDefinition;
  /** Disk name → image path; a disk not given here is read from its `image` in the definition. */
  disks?: Record<string, string>;
  consistency?: Consistency;
  /** Where the data came from, recorded in the manifest. */
  source?: string;
  /** The point this one follows; default: the latest point of the same VM. Null: none. */
  parent?: string | null;
  /**
   * How worker threads rebuild the codec. Default: the repository's config,
   * and its master key when it exposes one (LocalRepository does).
   */
  codecInit?: CodecInit;
  workers?: number;
  onProgress?: (p: BackupProgress) => void;
  /** Things a person should know that do not fail the backup (stale locks removed). */
  onWarning?: (message: string) => void;
  /**
   * The point's time; default now. Backup jobs pass their clock, so tests of
   * retention over days and weeks need not wait for them.
   */
  time?: Date;
  /** New blob bytes between the syncs started while reading (EarlyFlush); default EARLY_FLUSH_BYTES. */
  earlyFlushBytes?: number;
}

interface DiskPlan {
  name: string;
  path: string;
  format?: string;
}

/** Matches the definition's disks with the images given; throws before anything is opened or written. */
export function planDisks(vm: VmDefinition, given: Record<string, string> = {}): DiskPlan[] {
  const names = new Set(vm.disks.map((d) => d.name));
  for (const name of Object.keys(given)) {
    if (!names.has(name)) {
      throw badInput(
        'BACKUP_DISK_UNKNOWN',
        `disk "${name}" is not in the definition of VM ${vm.name} (it has: ${[...names].join(', ')})`,
        'name one of the disks of the VM definition: --disk NAME=PATH',
      );
    }
  }
  return vm.disks.map((d) => {
    const path = given[d.name] ?? d.image;
    if (!path) {
      throw badInput(
        'BACKUP_DISK_MISSING',
        `disk "${d.name}" of VM ${vm.name} has no image: it is not given and the definition has no "image" for it`,
        `give it: --disk ${d.name}=<image path>, or add "image" to the disk in the VM definition`,
      );
    }
    return { name: d.name, path, ...(d.format ? { format: d.format } : {}) };
  });
}

export async function backupVm(opts: BackupOptions): Promise<RestorePoint> {
  const time = (opts.time ?? new Date()).toISOString();
  const plan = planDisks(opts.vm, opts.disks);
  const sources: ImageSource[] = [];
  try {
    // Open every image first: a bad one fails the backup before the repository is touched.
    for (const d of plan) sources.push(await openImage(d.path, d.format ? { format: d.format } : {}));
    return await backupImages({
      ...opts,
      time,
      images: plan.map((d, i) => ({ name: d.name, source: sources[i] as ImageSource })),
      source: opts.source ?? plan.map((d) => `${d.name}=${d.path}`).join(' '),
    });
  } finally {
    await Promise.allSettled(sources.map((s) => s.close()));
  }
}

/**
 * What an earlier point lets a backup skip: chunks outside `changed` are taken
 * from `index` (the previous point's index of the same disk) without reading.
 * The live backup builds it from a dirty bitmap (src/backup/live/).
 */
export interface ReusePlan {
  index: FixedIndex;
  /** One byte per chunk: 1 when the chunk may differ from `index` and must be read. */
  changed: Uint8Array;
}

export interface ImageToBackUp {
  name: string;
  source: ImageSource;
  reuse?: ReusePlan;
}

export interface BackupImagesOptions extends Omit<BackupOptions, 'disks' | 'source' | 'time'> {
  images: ImageToBackUp[];
  source: string;
  /** ISO 8601 time of the point: when its data was taken. */
  time: string;
  /** How a live backup captured the VM, recorded in the manifest. */
  capture?: RestorePoint['capture'];
  signal?: AbortSignal;
  /**
   * Hashing and compression workers the caller started (startChunkPool) and
   * closes itself: a live backup starts them before it talks to QEMU, so
   * their threads boot while it waits on the monitor and the guest freeze.
   */
  pool?: ChunkPool;
}

/** The pool backupImages would start, for a caller that wants its workers booting early (BackupImagesOptions.pool). */
export function startChunkPool(repo: Repository, codecInit?: CodecInit, workers?: number): ChunkPool {
  return new ChunkPool(codecInit ?? defaultCodecInit(repo), workers ?? Math.min(availableParallelism(), 8));
}

/** Already-open sources of one VM's disks in, one restore point out (backupVm and the live backup share it). */
export async function backupImages(opts: BackupImagesOptions): Promise<RestorePoint> {
  const { repo, vm } = opts;
  const started = performance.now();
  // The workers boot and the store prepares its writes (an object store lists its chunks) while the
  // lock is taken: on object storage that is a few round trips the first chunk no longer waits for.
  const pool = opts.pool ?? startChunkPool(repo, opts.codecInit, opts.workers);
  repo.chunks.prepareWrites?.();
  let lock: RepoLock;
  try {
    lock = await repo.lock('shared', `backup of ${vm.name}`);
  } catch (err) {
    if (!opts.pool) await pool.close();
    throw err;
  }
  for (const h of lock.staleRemoved) {
    opts.onWarning?.(
      `removed a stale ${h.kind} lock of dead process ${h.pid} on ${h.hostname} ("${h.purpose}", since ${new Date(h.since).toISOString()})`,
    );
  }
  try {
    tracePhase('engine: locked');
    repo.chunks.prepareSync?.();
    let listed: RestorePoint[] | undefined;
    const parent = await chooseParent(repo, vm.name, opts.parent, (points) => (listed = points));
    const stats = { bytesRead: 0, bytesNew: 0, bytesReused: 0, bytesZero: 0 };
    const inserted: { digest: string; at: number }[] = [];
    const signals = new SignalsRecorder(parent?.id ?? null);
    const early = new EarlyFlush(repo.chunks, opts.earlyFlushBytes);
    try {
      const indexes: FixedIndex[] = [];
      try {
        for (const img of opts.images) {
          const index = await backupDisk(repo, pool, img, stats, signals, inserted, early, opts);
          // Change against the parent from the two indexes: metadata only, the disk is not read again.
          signals.disk(index.size, index.chunkSize, index.digests, await parentDisk(repo, parent, img.name, opts.onWarning));
          indexes.push(index);
        }
      } finally {
        if (!opts.pool) await pool.close();
      }
      // Every chunk the indexes name is made durable first: at sync level filesystem this one syncfs
      // replaces an fsync per chunk. It runs before any index exists, so when it fails nothing is committed.
      tracePhase('engine: disks read');
      await early.settle();
      await repo.chunks.sync();
      tracePhase('engine: chunks synced');
      // Indexes are written only once every disk is read, so a failed read leaves no index behind.
      const disks: RestorePointDisk[] = [];
      for (let i = 0; i < opts.images.length; i++) {
        const index = indexes[i] as FixedIndex;
        disks.push({ name: (opts.images[i] as ImageToBackUp).name, size: index.size, indexDigest: await repo.writeIndex(index) });
      }
      tracePhase('engine: indexes written');
      opts.signal?.throwIfAborted();
      const point: NewRestorePoint = {
        vm,
        disks,
        consistency: opts.consistency ?? 'crash',
        time: opts.time,
        source: opts.source,
        ...(parent ? { parent: parent.id } : {}),
        stats: {
          ...stats,
          seconds: Math.round((performance.now() - started) / 10) / 100,
          // The listing the parent came from, when there was one: the earlier points of this VM as they were at
          // the start, rather than a second listing (a round trip before the commit on object storage).
          signals: await judgeSignals(
            listed ? { listPoints: async () => listed as RestorePoint[] } : repo,
            vm.name,
            opts.time,
            signals.figures(),
            opts.onWarning,
          ),
        },
        ...(opts.capture ? { capture: opts.capture } : {}),
      };
      // With the lock, commitPoint checks that no gc on object storage deleted what this backup reused.
      // What one did delete is still in the open sources: stored again, and the commit tried again.
      for (let attempt = 1; ; attempt++) {
        try {
          const written = new Map(disks.map((d, i) => [d.indexDigest, indexes[i] as FixedIndex]));
          return await repo.commitPoint(point, { lock, written });
        } catch (err) {
          if (!(err instanceof SweptChunksError) || attempt >= SWEPT_REPAIRS) throw err;
          await storeAgain(repo, opts.images, indexes, disks, err, inserted);
          opts.onWarning?.(
            `a gc deleted ${err.missingChunks.length} chunk(s) and ${err.missingIndexes.length} index(es) this backup reused ` +
              'while it ran; they were stored again from the source',
          );
        }
      }
    } catch (err) {
      await early.stop();
      await rollBack(repo, lock, inserted);
      throw err;
    }
  } finally {
    await lock.release();
  }
}

/** Commits tried after a sweep deleted what the point needs: each first stores it again; a third sweep in a row fails the backup. */
const SWEPT_REPAIRS = 3;

/**
 * Stores again what a sweep deleted under this backup (SweptChunksError):
 * each missing chunk is read from its place in the sources, which are still
 * open, and must hash to its digest (a source that changed since cannot
 * give it back: the error stands); each missing index is written again.
 */
async function storeAgain(
  repo: Repository,
  images: ImageToBackUp[],
  indexes: FixedIndex[],
  disks: RestorePointDisk[],
  swept: SweptChunksError,
  inserted: { digest: string; at: number }[],
): Promise<void> {
  const missing = new Set(swept.missingChunks);
  for (const [k, index] of indexes.entries()) {
    const src = (images[k] as ImageToBackUp).source;
    for (const [i, digest] of index.digests.entries()) {
      if (digest === null || !missing.has(digest)) continue;
      const offset = i * index.chunkSize;
      const plain = Buffer.alloc(Math.min(index.chunkSize, index.size - offset));
      if (src.readInto) await src.readInto(plain, offset);
      else plain.set(await src.read(offset, plain.length));
      if (repo.codec.digest(plain) !== digest) throw swept;
      const r = await repo.chunks.insert(digest, repo.codec.encode(plain));
      if (!r.existed) inserted.push({ digest, at: Date.now() + 1 });
      missing.delete(digest);
    }
  }
  if (missing.size > 0) throw swept;
  await repo.chunks.sync();
  for (const [k, d] of disks.entries()) if (swept.missingIndexes.includes(d.indexDigest)) await repo.writeIndex(indexes[k] as FixedIndex);
}

/**
 * Removes the chunks this backup added, so a failed backup (a full disk, a
 * bad read) leaves the repository as it found it. Only when no other writer
 * is live: another backup may have found one of these chunks and referenced
 * it. And only chunks not touched since we wrote them (removeIfUnused), for
 * the same reason. Otherwise they stay for gc, which removes them safely.
 */
async function rollBack(repo: Repository, lock: RepoLock, inserted: { digest: string; at: number }[]): Promise<void> {
  if (inserted.length === 0) return;
  try {
    const others = (await repo.liveHolders()).filter((h) => !(h.pid === process.pid && h.kind === lock.kind && h.since === lock.since));
    if (others.length > 0) return;
    // A backup that starts now may touch one of these: the sweep tells it to check again (object storage).
    const sweep = await repo.beginSweep('roll-back of a failed backup');
    try {
      for (const c of inserted) {
        await repo.chunks.removeIfUnused(c.digest, c.at);
        await sweep.checkpoint();
      }
    } finally {
      await sweep.end();
    }
  } catch {
    // Best effort: what is left is unreferenced, and gc removes it.
  }
}

/** The reuse plan when it matches this disk (same size and chunking), else none: then every chunk is read. */
function usableReuse(reuse: ReusePlan | undefined, size: number, chunkSize: number, count: number): ReusePlan | undefined {
  if (!reuse) return undefined;
  const ok =
    reuse.index.size === size &&
    reuse.index.chunkSize === chunkSize &&
    reuse.index.digests.length === count &&
    reuse.changed.length === count;
  return ok ? reuse : undefined;
}

/** Unchanged chunks of a reuse plan are touched this many at a time (one at a time they cost more than the reads). */
const REUSE_BATCH = 256;
const TOUCH_CONCURRENCY = 32;

/**
 * Touches the stored chunks a reuse plan takes from the previous index (gc
 * honours the new mtime). True per digest when the store still holds it (a
 * hole, null, always); false when the store lost it: the caller reads it.
 */
async function touchReused(repo: Repository, digests: (string | null)[]): Promise<boolean[]> {
  const held = new Array<boolean>(digests.length).fill(true);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < digests.length) {
      const k = next++;
      const digest = digests[k] ?? null;
      if (digest !== null) held[k] = await repo.chunks.touch(digest);
    }
  };
  await Promise.all(Array.from({ length: Math.min(TOUCH_CONCURRENCY, digests.length) }, worker));
  return held;
}

/**
 * ChunkPool.checkStored for any store: a store with files lets the worker
 * read the blob itself; from one without (object storage) the blob is
 * fetched here. A blob gone since touch() (gc, verify's quarantine) is
 * damage like any other: the caller writes a good copy.
 */
async function checkStored(repo: Repository, pool: ChunkPool, slot: Slot, length: number, digest: string): Promise<StoredDamage | null> {
  let source: BlobSource;
  try {
    source = await blobSourceOf(repo.chunks, digest);
  } catch (err) {
    if (err instanceof CorruptChunkError) return { reason: err.reason, dataOk: false };
    if (err instanceof RestorelabError && (err.code === 'CHUNK_NOT_FOUND' || err.code === 'CHUNK_QUARANTINED'))
      return { reason: 'missing from the store', dataOk: false };
    throw err;
  }
  return pool.checkStored(slot, length, digest, source);
}

function defaultCodecInit(repo: Repository): CodecInit {
  return { config: repo.config, ...(repo.masterKey ? { key: repo.masterKey } : {}) };
}

async function chooseParent(
  repo: Repository,
  vmName: string,
  wanted: string | null | undefined,
  onListed: (points: RestorePoint[]) => void,
): Promise<RestorePoint | undefined> {
  if (wanted === null) return undefined;
  if (wanted !== undefined) return repo.getPoint(wanted);
  const points = await repo.listPoints({ vm: vmName });
  onListed(points);
  return points
    .filter((p) => !p.damaged)
    .sort((a, b) => a.time.localeCompare(b.time))
    .at(-1);
}

/**
 * Which chunks hold data: a chunk lying entirely in zero extents is never read.
 * With `only` (the chunks that must be read) and none of them set, nothing is asked.
 */
async function dataChunks(src: ImageSource, chunkSize: number, count: number, only?: Uint8Array): Promise<Uint8Array> {
  const data = new Uint8Array(count);
  if (only && !only.includes(1)) return data;
  for await (const e of src.extents()) {
    if (e.zero || e.length === 0) continue;
    const first = Math.floor(e.offset / chunkSize);
    const last = Math.min(count - 1, Math.floor((e.offset + e.length - 1) / chunkSize));
    data.fill(1, first, last + 1);
  }
  return data;
}

/** Chunk writes in flight to a remote store (below: why) at most; the S3 client's socket bound (S3_MAX_SOCKETS) is the same. */
const REMOTE_WRITES_IN_FLIGHT = 32;
/** Blob bytes those writes may hold at once: 32 writes of 1 MiB chunks, 16 of 4 MiB ones (a request per chunk, so bigger chunks need fewer). */
const REMOTE_WRITE_BYTES_IN_FLIGHT = 64 * 1024 * 1024;

async function backupDisk(
  repo: Repository,
  pool: ChunkPool,
  img: ImageToBackUp,
  stats: Omit<BackupStats, 'seconds'>,
  signals: SignalsRecorder,
  inserted: { digest: string; at: number }[],
  early: EarlyFlush,
  opts: Pick<BackupImagesOptions, 'onProgress' | 'onWarning' | 'signal'>,
): Promise<FixedIndex> {
  const { source: src, name } = img;
  const { onProgress, onWarning } = opts;
  const chunkSize = repo.config.chunkSize;
  const count = Math.ceil(src.size / chunkSize);
  const digests: (string | null)[] = new Array<string | null>(count).fill(null);
  const reuse = usableReuse(img.reuse, src.size, chunkSize, count);
  const hasData = await dataChunks(src, chunkSize, count, reuse?.changed);
  tracePhase(`engine: ${name}: extents listed`);
  const written = new Set<string>();
  // Chunks in flight: those in slots (read, hashed, compressed) plus as many blobs waiting on the store's write.
  // A store without files is remote (object storage): each request waits a network round trip, and only more
  // of them in flight keep the slots busy (memory: one blob per request, at most REMOTE_WRITE_BYTES_IN_FLIGHT).
  const remote = Math.min(REMOTE_WRITES_IN_FLIGHT, Math.floor(REMOTE_WRITE_BYTES_IN_FLIGHT / chunkSize));
  const inFlight = repo.chunks.fileOf ? pool.slots * 2 : Math.max(pool.slots * 2, remote);
  let done = 0;
  let failure: unknown;
  const running = new Set<Promise<void>>();
  const report = (): void => onProgress?.({ disk: name, done, total: src.size, stats: { ...stats } });

  const one = async (i: number): Promise<void> => {
    const offset = i * chunkSize;
    const length = Math.min(chunkSize, src.size - offset);
    const slot = await pool.acquire();
    let held = true;
    // The slot is free again as soon as its bytes are hashed (and compressed), before the store writes the blob.
    const free = (): void => {
      if (held) {
        held = false;
        pool.release(slot);
      }
    };
    try {
      const plain = slot.buffer.subarray(0, length);
      if (src.readInto) await src.readInto(plain, offset);
      else plain.set(await src.read(offset, length));
      stats.bytesRead += length;
      const digest = await pool.digest(slot, length);
      if (!digest || written.has(digest)) free();
      if (!digest) {
        stats.bytesZero += length;
      } else if (written.has(digest)) {
        stats.bytesReused += length;
        digests[i] = digest;
      } else {
        // Claim the digest before awaiting, so an identical chunk in flight counts as reused.
        written.add(digest);
        try {
          // touch() both finds the chunk stored and refreshes its mtime, which a concurrent gc honours.
          // A store with files does it inside insertPlaced, which otherwise has a worker write the blob
          // (it never crosses threads): one file-system call for a new chunk, not two.
          // A stored blob is reused only once it proves sound (see checkStored): a damaged one would
          // make this point damaged from birth. Only chunks the store lacks or holds damaged are compressed.
          let placed: PlacedChunk | undefined;
          const found = repo.chunks.insertPlaced
            ? (
                await repo.chunks.insertPlaced(digest, async (where) => {
                  placed = await pool.place(slot, length, where);
                  return placed.size;
                })
              ).existed
            : await repo.chunks.touch(digest);
          const damage = found ? await checkStored(repo, pool, slot, length, digest) : undefined;
          if (damage === null) {
            free();
            stats.bytesReused += length;
          } else if (damage) {
            const blob = await pool.encode(slot, length);
            free();
            // Not recorded in `inserted`: older points need this chunk, so a failed backup must not roll it back.
            await repo.chunks.replace(digest, blob, { keepDamaged: !damage.dataOk });
            stats.bytesNew += length;
            signals.newChunk(length, blob);
            onWarning?.(
              `chunk ${digest} was damaged in the repository (${damage.reason}); this backup wrote a good copy` +
                (damage.dataOk ? '' : ` and kept the damaged one as ${digest}.bad`),
            );
          } else if (placed) {
            free();
            stats.bytesNew += length;
            signals.newPayload(length, placed);
            inserted.push({ digest, at: Date.now() + 1 });
            early.stored(placed.size);
          } else {
            const blob = await pool.encode(slot, length);
            free();
            const r = await repo.chunks.insert(digest, blob);
            if (r.existed) stats.bytesReused += length;
            else {
              stats.bytesNew += length;
              signals.newChunk(length, blob);
              inserted.push({ digest, at: Date.now() + 1 });
              early.stored(blob.length);
            }
          }
        } catch (err) {
          written.delete(digest);
          throw err;
        }
        digests[i] = digest;
      }
    } finally {
      free();
    }
    done += length;
    report();
  };

  const schedule = async (i: number): Promise<void> => {
    while (running.size >= inFlight) await Promise.race(running);
    if (failure !== undefined) return;
    const p: Promise<void> = one(i)
      .catch((err: unknown) => {
        failure ??= err;
      })
      .finally(() => running.delete(p));
    running.add(p);
  };
  // Chunks the reuse plan takes unread. Their touches (gc must see them in use) run in one chain beside the
  // reads, a batch at a time, and never hold a read up; a chunk the store lost is read once the chain is done.
  let unchanged: number[] = [];
  let touched: Promise<void> = Promise.resolve();
  const lost: number[] = [];
  const takeUnchanged = (): void => {
    const batch = unchanged;
    unchanged = [];
    const index = (reuse as ReusePlan).index;
    touched = touched
      .then(async () => {
        if (failure !== undefined) return;
        const held = await touchReused(
          repo,
          batch.map((i) => index.digests[i] ?? null),
        );
        for (const [k, i] of batch.entries()) {
          const length = Math.min(chunkSize, src.size - i * chunkSize);
          if (held[k]) {
            digests[i] = index.digests[i] ?? null;
            if (digests[i] === null) stats.bytesZero += length;
            else stats.bytesReused += length;
            done += length;
          } else {
            lost.push(i);
          }
        }
      })
      .catch((err: unknown) => {
        failure ??= err;
      });
  };

  for (let i = 0; i < count && failure === undefined; i++) {
    if (opts.signal?.aborted) {
      failure ??= opts.signal.reason;
      break;
    }
    if (reuse && !reuse.changed[i]) {
      unchanged.push(i);
      if (unchanged.length >= REUSE_BATCH) takeUnchanged();
      continue;
    }
    if (!hasData[i]) {
      const length = Math.min(chunkSize, src.size - i * chunkSize);
      stats.bytesZero += length;
      done += length;
      continue;
    }
    await schedule(i);
  }
  if (unchanged.length > 0) takeUnchanged();
  tracePhase(`engine: ${name}: every chunk scheduled`);
  await touched;
  tracePhase(`engine: ${name}: reused chunks touched`);
  // The store lost these since the previous point: read them, whatever the extent map said (it was only asked about changed chunks).
  for (const i of lost) {
    if (failure !== undefined) break;
    await schedule(i);
  }
  await Promise.all(running);
  tracePhase(`engine: ${name}: every chunk read and stored`);
  if (failure !== undefined) throw failure;
  report();
  return { size: src.size, chunkSize, digests };
}

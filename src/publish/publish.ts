/**
 * Publishing a restore point: its disks become live files (overlay over a
 * PublishedDisk) in a PublicationDatastore, mounted with FUSE and/or
 * exported over NFS by this process when asked.
 *
 * State, below `<stateDir>/publications/<id>/`: `publication.json` (the
 * record: point, repository, number, overlay place and limit, owner, serving
 * pid), the datastore's scratch metadata and content (scratch-store.ts), and
 * `publisher.log` of a background publisher. Overlays live in
 * `<overlayDir>/<id>/` (default `<stateDir>/overlays`). The record outlives
 * the process, so `resume` finds the overlay again after a stop or a crash,
 * and `unpublish` finds the process to signal.
 *
 * Ownership: only a publication's owner reuses, resets or removes it. A
 * second publisher of a point that someone else holds gets an id of its own
 * (`<vm>-<point>.<n>`), so its overlay and state never touch the first's:
 * a SureBackup run verifying a point the server exports over NFS used to
 * reset, and at its end delete, the overlay the NFS clients were writing to.
 */
import fs from 'node:fs';
import { availableParallelism } from 'node:os';
import path from 'node:path';
import { RestorelabError, badInput, notFound } from '../errors.js';
import { tracePhase } from '../host/trace.js';
import { processAlive as pidAlive } from '../host/process.js';
import { writeFileAtomicSync } from '../host/atomic-file.js';
import { openRepository } from '../repo/repository.js';
import type { RepositoryReader } from '../repo/contract.js';
import type { VmDefinition } from '../vm/definition.js';
import { ChunkCache } from '../disk/chunk-cache.js';
import { PublishedDisk } from '../disk/published-disk.js';
import { DecodePool } from '../disk/decode-pool.js';
import { Overlay, OverlayBudget, discardOverlay } from '../overlay/overlay.js';
import { PublicationDatastore, type DatastorePublication } from '../datastore/publication-datastore.js';
import { discardScratch } from '../datastore/scratch-store.js';
import { FuseFrontend, assertFuseAvailable } from '../fuse/fuse-frontend.js';
import type { NfsExport } from '../nfs/export.js';
import { removeNbdSocket, startNbd, type NbdServing } from './nbd.js';
import { requestPublisher } from './publisher-wire.js';
import { detachMount, isStaleFuseMount } from '../fuse/mounts.js';
import { mountEntry } from '../host/mounts.js';
import type { PublicationInfo, PublicationOwner, PublishOptions, RunningPublication } from './contract.js';
import { DEFAULT_OBJECT_CACHE_MIB, isObjectStorage, resolveRepository } from '../repo/open.js';

const DEFAULT_CACHE_MIB = 128;
const STOP_WAIT_MS = 30_000;
/**
 * Decode threads per publication: twice the cores (at most 8), because a
 * worker reads its chunk file with a blocking read before it hashes it. On
 * this 2-core host, two workers left the cores idle while both waited for
 * the disk (nbdcopy cold: 424 MiB/s); with four, two hash while two wait
 * (about 650 MiB/s on a quiet host).
 */
export const DECODE_WORKERS = Math.min(8, 2 * availableParallelism());
/** Publications of one point at a time (`<vm>-<point>`, then `.2` …): bounds the search and the state. */
export const MAX_PUBLICATIONS_PER_POINT = 16;
/** A background publisher's stdout and stderr, in the publication's state directory. */
export const PUBLISHER_LOG = 'publisher.log';
/** The local user of the CLI (root on this host): the default owner. */
export const LOCAL_USER: PublicationOwner = { kind: 'user', id: 'cli' };
/** Records written before publications had owners were all made by users. */
const LEGACY_OWNER: PublicationOwner = { kind: 'user', id: 'unknown' };

/** What `publication.json` holds. */
export interface PublicationRecord {
  id: string;
  name: string;
  number: number;
  point: string;
  vm: string;
  repo: string;
  overlayDir: string;
  overlayLimitBytes?: number;
  readOnly: boolean;
  fuseDir?: string;
  path?: string;
  disks: Record<string, string>;
  /** Who may reuse, reset and remove it (absent in records of older versions: a user's). */
  owner?: PublicationOwner;
  /** The serving process while it runs. */
  pid?: number;
  /** Its NBD socket and URLs while it runs: the socket is removed by whoever finds the process gone. */
  nbdSocket?: string;
  nbd?: Record<string, string>;
  /**
   * The control socket of the shared publisher (shared-publisher.ts) serving
   * it, while it does: that process serves other sessions too, so a stop
   * asks it to close this one publication rather than signalling it.
   */
  sharedPublisher?: string;
  created: string;
}

export interface PublicationStatus extends PublicationInfo {
  running: boolean;
  pid?: number;
  overlayDir: string;
  overlayLimitBytes?: number;
  /** Bytes held by the overlays (allocated blocks of the data files). */
  overlayBytes: number;
  /** Its serving process is gone without a clean stop (killed, crashed). */
  crashed: boolean;
  /** The background publisher's log, while the publication is kept. */
  log?: string;
}

export interface PublishHooks {
  /** Human-readable warnings: a discarded overlay, a cleared stale mount, overlay usage thresholds. */
  onWarning?: (message: string) => void;
  /** Key file of an encrypted repository. */
  keyFile?: string;
  /** An already open repository (tests, the daemon); `opts.repo` is then only recorded. */
  repository?: RepositoryReader;
  /** Bound of the on-disk cache of chunks read from an s3:// repository (limits.objectCacheMiB; default DEFAULT_OBJECT_CACHE_MIB). */
  objectCacheMiB?: number;
  /**
   * Reading shared with other publications of this process (the shared
   * publisher, shared-publisher.ts): the repository, its chunk cache and its
   * decode pool. The publication uses them and never closes them.
   */
  shared?: SharedReading;
  /** The control socket of the shared publisher serving this publication, recorded so a stop asks it instead of signalling it. */
  servedBy?: string;
}

/** One repository's reading, as publications of one process share it: one index reader, one cache, one decode pool. */
export interface SharedReading {
  repository: RepositoryReader;
  cache: ChunkCache;
  /** Absent for object storage (decoded in-process, through `cache`). */
  pool?: DecodePool;
}

/**
 * Opens a repository for serving reads. Chunks of an object-storage one go
 * through the bounded on-disk cache under the state directory, so a VM that
 * runs from it does not fetch a chunk twice (open.ts).
 */
export function openForReading(spec: string, stateDir: string, hooks: PublishHooks): Promise<RepositoryReader> {
  const cache = isObjectStorage(spec)
    ? { chunkCache: { stateDir, maxBytes: (hooks.objectCacheMiB ?? DEFAULT_OBJECT_CACHE_MIB) * 1024 * 1024 } }
    : {};
  return openRepository(spec, { keyFile: hooks.keyFile, ...cache });
}

function publicationsDir(stateDir: string): string {
  return path.join(stateDir, 'publications');
}

function recordFile(stateDir: string, id: string): string {
  return path.join(publicationsDir(stateDir), id, 'publication.json');
}

/** Same owner: the same session or run; any two users (they share, see PublicationOwner). */
export function sameOwner(a: PublicationOwner, b: PublicationOwner): boolean {
  return a.kind === b.kind && (a.kind === 'user' || a.id === b.id);
}

function ownerOf(rec: PublicationRecord): PublicationOwner {
  return rec.owner ?? LEGACY_OWNER;
}

export function describeOwner(o: PublicationOwner): string {
  switch (o.kind) {
    case 'user':
      return `user ${o.id}`;
    case 'session':
      return `recovery session ${o.id}`;
    case 'surebackup':
      return `SureBackup run ${o.id}`;
    case 'flr':
      return `file-level restore session ${o.id}`;
  }
}

function ownerHint(o: PublicationOwner): string {
  switch (o.kind) {
    case 'user':
      return 'stop it as a user: restorelab unpublish, or DELETE /api/v1/publications/<id>';
    case 'session':
      return `stop the session instead: restorelab stop ${o.id}`;
    case 'surebackup':
      return 'it goes when its run ends (cancel the run to end it sooner)';
    case 'flr':
      return `unmount the session instead: restorelab umount ${o.id}`;
  }
}

/**
 * Record directories of the publications this process serves. A record
 * alone cannot say so: the API and `restorelab server` serve many
 * publications from one process, whose pid every one of them records.
 */
const servedHere = new Set<string>();

function recordDir(stateDir: string, id: string): string {
  return path.resolve(publicationsDir(stateDir), id);
}

/** Served right now, by this process or another live one. */
function isLive(stateDir: string, rec: PublicationRecord): boolean {
  return servedHere.has(recordDir(stateDir, rec.id)) || (rec.pid !== undefined && rec.pid !== process.pid && pidAlive(rec.pid));
}

function readRecord(file: string): PublicationRecord | undefined {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8')) as PublicationRecord;
  } catch {
    return undefined;
  }
}

function writeRecord(stateDir: string, rec: PublicationRecord): void {
  const file = recordFile(stateDir, rec.id);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  writeFileAtomicSync(path.dirname(file), path.basename(file), JSON.stringify(rec, null, 2) + '\n');
}

function allRecords(stateDir: string): PublicationRecord[] {
  const dir = publicationsDir(stateDir);
  if (!fs.existsSync(dir)) return [];
  return fs
    .readdirSync(dir)
    .sort()
    .map((id) => readRecord(recordFile(stateDir, id)))
    .filter((r): r is PublicationRecord => r !== undefined);
}

/**
 * Publication numbers are the high bits of file ids: never reused, so a file
 * handle of a discarded publication cannot name a file of a new one.
 */
function allocateNumber(stateDir: string): number {
  const file = path.join(publicationsDir(stateDir), '.next-number');
  let next = Number.parseInt(fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '1', 10) || 1;
  next = Math.max(next, ...allRecords(stateDir).map((r) => r.number + 1));
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, String(next + 1));
  return next;
}

/** Directory names are `<vm>-<point>`; anything a filesystem or NFS would choke on becomes '_'. */
function publicationName(vm: string, point: string): string {
  return `${vm}-${point}`.replace(/[^A-Za-z0-9._-]/g, '_');
}

function overlayBytes(dir: string): number {
  if (!fs.existsSync(dir)) return 0;
  let total = 0;
  for (const f of fs.readdirSync(dir)) {
    if (f.endsWith('.data')) total += fs.statSync(path.join(dir, f)).blocks * 512;
  }
  return total;
}

function statusOf(stateDir: string, rec: PublicationRecord): PublicationStatus {
  const running = rec.pid !== undefined && pidAlive(rec.pid);
  // A clean stop rewrites the record without a pid: one left behind names a process that died.
  const crashed = rec.pid !== undefined && !running;
  const log = path.join(recordDir(stateDir, rec.id), PUBLISHER_LOG);
  return {
    id: rec.id,
    name: rec.name,
    owner: ownerOf(rec),
    point: rec.point,
    vm: rec.vm,
    ...(rec.path ? { path: rec.path } : {}),
    disks: rec.disks,
    ...(running && rec.nbd ? { nbd: rec.nbd, ...(rec.nbdSocket !== undefined ? { nbdSocket: rec.nbdSocket } : {}) } : {}),
    running,
    ...(running ? { pid: rec.pid } : {}),
    overlayDir: rec.overlayDir,
    ...(rec.overlayLimitBytes !== undefined ? { overlayLimitBytes: rec.overlayLimitBytes } : {}),
    overlayBytes: overlayBytes(path.join(rec.overlayDir, rec.id)),
    crashed,
    ...(fs.existsSync(log) ? { log } : {}),
  };
}

/** Every publication recorded in `stateDir`, running or stopped (and resumable). */
export function listPublications(stateDir: string): PublicationStatus[] {
  return allRecords(stateDir).map((r) => statusOf(stateDir, r));
}

function findRecord(stateDir: string, idOrName: string): PublicationRecord {
  const rec = allRecords(stateDir).find((r) => r.id === idOrName || r.name === idOrName);
  if (!rec) {
    throw notFound('PUBLICATION_NOT_FOUND', `no publication ${idOrName} in ${stateDir}`, 'list them with: restorelab publications');
  }
  return rec;
}

/**
 * Throws PUBLICATION_NOT_OWNER unless `as` may stop publication `rec`: its
 * owner may; so may anyone once a SureBackup run's process is gone (a run
 * lives only in its process, so nobody else is left to remove it).
 */
function assertOwner(stateDir: string, rec: PublicationRecord, as: PublicationOwner): void {
  const owner = ownerOf(rec);
  if (sameOwner(owner, as)) return;
  if (owner.kind === 'surebackup' && !isLive(stateDir, rec)) return;
  throw new RestorelabError(
    'PUBLICATION_NOT_OWNER',
    `publication ${rec.id} belongs to ${describeOwner(owner)}, not to ${describeOwner(as)}; only its owner may stop it`,
    {
      hint: ownerHint(owner),
    },
  );
}

/** Throws (PUBLICATION_NOT_FOUND, PUBLICATION_NOT_OWNER) unless `as` may remove the publication; checks before a caller acts. */
export function checkPublicationOwner(stateDir: string, idOrName: string, as: PublicationOwner): void {
  assertOwner(stateDir, findRecord(stateDir, idOrName), as);
}

/**
 * Stops a publication on behalf of `as`, who must own it: signals its
 * serving process (SIGTERM, which unmounts cleanly) and waits for it to exit;
 * a stale FUSE mount of a crashed server is removed. With `discard`, its
 * overlay and scratch files are deleted too.
 */
export async function removePublication(
  stateDir: string,
  idOrName: string,
  opts: { discard?: boolean; as: PublicationOwner },
): Promise<PublicationStatus> {
  const rec = findRecord(stateDir, idOrName);
  assertOwner(stateDir, rec, opts.as);
  if (rec.sharedPublisher !== undefined && rec.pid !== undefined && pidAlive(rec.pid) && rec.pid !== process.pid) {
    // The shared publisher serves other sessions too: it closes this one publication, and goes on.
    await requestPublisher(
      rec.sharedPublisher,
      { op: 'close', id: rec.id, discard: opts.discard === true, as: opts.as },
      STOP_WAIT_MS,
    ).catch(async (e: unknown) => {
      // Gone meanwhile: nothing serves it any more, which is all a stop needs. A publisher that is
      // exiting has closed its sockets a moment before its pid goes, so that moment is waited out.
      const deadline = Date.now() + STOP_WAIT_MS;
      while (pidAlive(rec.pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      if (pidAlive(rec.pid)) throw e;
    });
  } else if (rec.pid !== undefined && pidAlive(rec.pid) && rec.pid !== process.pid) {
    process.kill(rec.pid, 'SIGTERM');
    const deadline = Date.now() + STOP_WAIT_MS;
    while (pidAlive(rec.pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    if (pidAlive(rec.pid)) {
      throw new RestorelabError(
        'PUBLICATION_BUSY',
        `publication ${rec.id}: process ${rec.pid} did not stop within ${STOP_WAIT_MS / 1000} s`,
        {
          hint: `something may hold files open under ${rec.path ?? 'the mount'}; stop it, or kill ${rec.pid}`,
        },
      );
    }
  }
  if (rec.fuseDir && mountEntry(rec.fuseDir) && (await isStaleFuseMount(rec.fuseDir))) await detachMount(rec.fuseDir);
  const fresh = readRecord(recordFile(stateDir, rec.id)) ?? rec;
  // A publisher killed outright leaves its socket file behind; nobody serves it any more.
  if (fresh.nbdSocket !== undefined && !(fresh.pid !== undefined && (fresh.pid === process.pid || pidAlive(fresh.pid)))) {
    removeNbdSocket(fresh.nbdSocket);
    delete fresh.nbdSocket;
    delete fresh.nbd;
  }
  delete fresh.sharedPublisher;
  // Said before the pid goes: a publisher that died is reported as crashed, with its log.
  const status: PublicationStatus = { ...statusOf(stateDir, fresh), running: false };
  delete status.pid;
  delete fresh.pid;
  if (opts.discard) {
    fs.rmSync(path.join(rec.overlayDir, rec.id), { recursive: true, force: true });
    fs.rmSync(recordDir(stateDir, rec.id), { recursive: true, force: true });
    delete status.log;
    // Whoever served it here has let it go (the API detached it from the NFS export first).
    servedHere.delete(recordDir(stateDir, rec.id));
  } else {
    writeRecord(stateDir, fresh);
  }
  return status;
}

/** Opened disks and overlays of one publication, ready for a datastore. */
interface OpenedPublication {
  pub: DatastorePublication;
  close(): Promise<void>;
}

async function openPublication(
  rec: PublicationRecord,
  repo: RepositoryReader,
  point: { vm: VmDefinition; disks: { name: string }[] },
  cache: ChunkCache,
  stateDir: string,
  warn: (m: string) => void,
  pool?: DecodePool,
): Promise<OpenedPublication> {
  const dir = path.join(rec.overlayDir, rec.id);
  const budget = new OverlayBudget(rec.overlayLimitBytes, (pct, used, limit) =>
    warn(`publication ${rec.id}: overlay ${pct} % full (${used} of ${limit} bytes); writes fail with ENOSPC at the limit`),
  );
  // Every disk is opened before any overlay is created: an unknown disk leaves nothing behind.
  const sources = [];
  for (const d of point.disks) {
    const stored = await repo.openDisk(rec.point, d.name);
    sources.push({ name: d.name, source: pool ? pool.wrap(stored, rec.point, d.name) : stored });
  }
  const opened: Overlay[] = [];
  try {
    const disks = [];
    for (const { name, source } of sources) {
      const base = new PublishedDisk(source, { cache, name: `${rec.point}/${name}` });
      const overlay = await Overlay.open({ dir, name, base, budget, readOnly: rec.readOnly });
      opened.push(overlay);
      disks.push({ name, overlay });
    }
    return {
      pub: {
        id: rec.id,
        name: rec.name,
        number: rec.number,
        vm: point.vm,
        created: new Date(rec.created),
        disks,
        stateDir: path.dirname(recordFile(stateDir, rec.id)),
        overlayDir: dir,
        readOnly: rec.readOnly,
      },
      close: async () => {
        for (const o of opened) await o.close();
      },
    };
  } catch (err) {
    for (const o of opened) await o.close().catch(() => undefined);
    throw err;
  }
}

/** Where a new publication goes: an earlier one of the same owner to reuse, or a fresh id. */
interface Slot {
  id: string;
  previous?: PublicationRecord;
}

/**
 * Picks the id of a new publication of a point: `<vm>-<point>`, else
 * `<vm>-<point>.2` …. A stopped publication of the same owner is reused
 * (resumed or reset); anyone else's, live or not, is skipped and never
 * touched. A fresh id is claimed by creating its record directory, which
 * only one process can do.
 */
function chooseSlot(stateDir: string, base: string, point: string, owner: PublicationOwner): Slot {
  fs.mkdirSync(publicationsDir(stateDir), { recursive: true });
  for (let n = 1; n <= MAX_PUBLICATIONS_PER_POINT; n++) {
    const id = n === 1 ? base : `${base}.${n}`;
    const rec = readRecord(recordFile(stateDir, id));
    if (rec) {
      if (!sameOwner(ownerOf(rec), owner)) continue;
      if (!isLive(stateDir, rec)) return { id, previous: rec };
      // Two users publishing one point would share nothing but confusion: one publication, as before.
      if (owner.kind === 'user') {
        throw new RestorelabError(
          'PUBLICATION_BUSY',
          `restore point ${point} is already published as ${id}${rec.pid !== undefined ? ` by process ${rec.pid}` : ''}`,
          {
            hint: `use it (${rec.path ?? 'see restorelab publications'}), or stop it first: restorelab unpublish ${id}`,
          },
        );
      }
      continue;
    }
    try {
      fs.mkdirSync(recordDir(stateDir, id));
    } catch (err) {
      // Being claimed right now, or left by a publisher that died between claiming and recording: not ours either way.
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') continue;
      throw err;
    }
    return { id };
  }
  throw new RestorelabError('PUBLICATION_LIMIT', `restore point ${point} already has ${MAX_PUBLICATIONS_PER_POINT} publications`, {
    hint: 'list them with: restorelab publications; stop the ones no longer needed',
  });
}

/**
 * Publishes `opts.point` for `opts.owner`: opens its disks with overlays,
 * serves them in a datastore, and mounts it with FUSE at `opts.fuseDir` when
 * given. Without `resume`, the owner's earlier overlay of the same point is
 * discarded first; another owner's publication of the point is left alone
 * and this one gets an id of its own (chooseSlot).
 */
export async function startPublication(
  opts: PublishOptions,
  hooks: PublishHooks = {},
): Promise<RunningPublication & { datastore: PublicationDatastore }> {
  const warn = hooks.onWarning ?? (() => undefined);
  tracePhase(`publish ${opts.point}: start`);
  if (opts.overlayLimitBytes !== undefined && !(opts.overlayLimitBytes > 0)) {
    throw badInput('BAD_OVERLAY_LIMIT', `overlay limit must be a positive size, got ${opts.overlayLimitBytes}`, 'e.g. --overlay-limit 10G');
  }
  if (opts.fuseDir) assertFuseAvailable();
  const repo = hooks.shared?.repository ?? hooks.repository ?? (await openForReading(opts.repo, opts.stateDir, hooks));
  const point = await repo.getPoint(opts.point);
  if (point.disks.length === 0) throw notFound('DISK_NOT_FOUND', `restore point ${opts.point} has no disks`);

  const owner = opts.owner ?? LOCAL_USER;
  const { id, previous } = chooseSlot(opts.stateDir, publicationName(point.vm.name, point.id), point.id, owner);
  const name = id;
  const fuseDir = opts.fuseDir ? path.resolve(opts.fuseDir) : undefined;
  const pubPath = fuseDir ? path.join(fuseDir, name) : undefined;
  const overlayRoot = path.resolve(opts.overlayDir ?? previous?.overlayDir ?? path.join(opts.stateDir, 'overlays'));
  // A fresh id's claim (its record directory) and new overlay are given back if the start fails.
  const unclaim = (): void => {
    if (previous) return;
    fs.rmSync(recordDir(opts.stateDir, id), { recursive: true, force: true });
    if (!opts.resume) fs.rmSync(path.join(overlayRoot, id), { recursive: true, force: true });
  };
  let rec: PublicationRecord;
  try {
    // Everything below is this owner's: an earlier publication of its own, or leftovers no record claims.
    if (!opts.resume && fs.existsSync(path.join(overlayRoot, id))) {
      warn(`discarding the overlay of the earlier publication ${id} (pass --resume to keep its writes)`);
      for (const d of point.disks) await discardOverlay(path.join(overlayRoot, id), d.name);
    }
    if (!opts.resume && previous) {
      await discardScratch(recordDir(opts.stateDir, id));
    }
    const number = previous?.number ?? allocateNumber(opts.stateDir);
    rec = {
      id,
      name,
      number,
      point: point.id,
      vm: point.vm.name,
      repo: resolveRepository(opts.repo),
      overlayDir: overlayRoot,
      ...(opts.overlayLimitBytes !== undefined
        ? { overlayLimitBytes: opts.overlayLimitBytes }
        : previous?.overlayLimitBytes !== undefined && opts.resume
          ? { overlayLimitBytes: previous.overlayLimitBytes }
          : {}),
      readOnly: opts.readOnly ?? false,
      ...(fuseDir ? { fuseDir, path: pubPath } : {}),
      disks: Object.fromEntries(point.disks.map((d) => [d.name, pubPath ? path.join(pubPath, `${d.name}.raw`) : `${d.name}.raw`])),
      owner,
      created: previous && opts.resume ? previous.created : new Date().toISOString(),
    };
  } catch (err) {
    unclaim();
    throw err;
  }

  const cache = hooks.shared?.cache ?? new ChunkCache((opts.cacheMiB ?? DEFAULT_CACHE_MIB) * 1024 * 1024);
  // Decoding on worker threads keeps the thread that answers FUSE free; an injected repository decodes in-process.
  // Object storage: decode in-process, through the one chunk cache (a worker would open a client and a cache of its own).
  // Shared reading: the shared publisher's pool, which outlives this publication (ownPool stays unset).
  const ownPool =
    hooks.shared || hooks.repository || isObjectStorage(opts.repo)
      ? undefined
      : new DecodePool(resolveRepository(opts.repo), { ...(hooks.keyFile ? { keyFile: hooks.keyFile } : {}), size: DECODE_WORKERS });
  const pool = hooks.shared?.pool ?? ownPool;
  let opened: OpenedPublication;
  try {
    opened = await openPublication(rec, repo, point, cache, opts.stateDir, warn, pool);
  } catch (err) {
    await ownPool?.close();
    unclaim();
    throw err;
  }
  const datastore = new PublicationDatastore();
  let fuse: FuseFrontend | undefined;
  let nfs: NfsExport | undefined;
  let nbd: NbdServing | undefined;
  try {
    await datastore.attach(opened.pub, { onWarning: warn });
    if (fuseDir) {
      fuse = await FuseFrontend.mount(datastore, {
        mountPoint: fuseDir,
        onStaleCleared: (d) => warn(`cleared a stale FUSE mount at ${d} (a crashed publisher)`),
        ...(opts.fuseGroup !== undefined ? { accessGroup: opts.fuseGroup } : {}),
      });
    }
    if (opts.nfs) {
      const listen = opts.nfs.listen ?? '127.0.0.1';
      // Loaded only when asked for: the NFS server's modules are a good part of a holder's start-up (a scan's publication has no NFS).
      const { startNfsExport } = await import('../nfs/export.js');
      nfs = await startNfsExport({
        datastore,
        stateDir: opts.stateDir,
        port: opts.nfs.port,
        mountPort: opts.nfs.mountPort,
        portmapPort: opts.nfs.portmapPort,
        listen,
        advertise: listen,
        allow: opts.nfs.allow ?? ['127.0.0.0/8'],
        readOnly: opts.readOnly ?? false,
        log: { warn },
      });
    }
    if (opts.nbd) {
      nbd = await startNbd({
        datastore,
        publication: name,
        disks: point.disks.map((d) => d.name),
        readOnly: rec.readOnly,
        recordDir: recordDir(opts.stateDir, id),
        ...(opts.nbd.socket !== undefined ? { socket: opts.nbd.socket } : {}),
        ...(opts.nbd.tcp ? { tcp: opts.nbd.tcp } : {}),
        ...(opts.fuseGroup !== undefined ? { group: opts.fuseGroup } : {}),
      });
    }
  } catch (err) {
    await nfs?.stop();
    await fuse?.unmount();
    await opened.close();
    await ownPool?.close();
    unclaim();
    throw err;
  }
  writeRecord(opts.stateDir, {
    ...rec,
    pid: process.pid,
    ...(nbd ? { nbdSocket: nbd.socket, nbd: nbd.urls } : {}),
    ...(hooks.servedBy !== undefined ? { sharedPublisher: hooks.servedBy } : {}),
  });
  servedHere.add(recordDir(opts.stateDir, id));
  tracePhase(`publish ${id}: served`);

  let closed = false;
  return {
    id,
    name,
    owner,
    point: point.id,
    vm: point.vm.name,
    ...(pubPath ? { path: pubPath } : {}),
    disks: rec.disks,
    datastore,
    ...(nfs ? { urls: Object.fromEntries(point.disks.map((d) => [d.name, nfs!.url(name, `${d.name}.raw`)])) } : {}),
    ...(nbd ? { nbd: nbd.urls, nbdSocket: nbd.socket } : {}),
    close: async (o = {}) => {
      if (closed) return;
      closed = true;
      await nbd?.close();
      await nfs?.stop();
      if (fuse) await fuse.unmount();
      datastore.detach(id);
      await opened.close();
      await ownPool?.close();
      servedHere.delete(recordDir(opts.stateDir, id));
      // Only what is still this publication's own goes: removed and claimed by someone else meanwhile, it is theirs.
      const onDisk = readRecord(recordFile(opts.stateDir, id));
      if (onDisk && !(onDisk.number === rec.number && sameOwner(ownerOf(onDisk), owner))) {
        warn(`publication ${id} now belongs to ${describeOwner(ownerOf(onDisk))}; its overlay and record are left alone`);
        return;
      }
      if (o.discard) {
        fs.rmSync(path.join(overlayRoot, id), { recursive: true, force: true });
        fs.rmSync(recordDir(opts.stateDir, id), { recursive: true, force: true });
      } else {
        writeRecord(opts.stateDir, rec);
      }
    },
  };
}

/**
 * Re-attaches every recorded user publication to `datastore` (a server
 * restart: the NFS server keeps its file handles). Returns a closer for the
 * overlays. A session's, a run's or a file-level restore's publication is
 * its owner's to serve or remove, never the server's.
 * One record that cannot be opened (its point or repository gone) is skipped
 * with its reason, never fatal: the server still serves every other one.
 */
export async function restorePublications(
  stateDir: string,
  datastore: PublicationDatastore,
  hooks: PublishHooks & { cacheMiB?: number; filter?: (rec: PublicationRecord) => boolean } = {},
): Promise<{ restored: string[]; skipped: Array<{ id: string; reason: string }>; close(): Promise<void> }> {
  const cache = new ChunkCache((hooks.cacheMiB ?? DEFAULT_CACHE_MIB) * 1024 * 1024);
  // As a fresh publish does: chunks decode on worker threads, one pool per repository, so the
  // thread that answers NFS only copies bytes. An injected repository decodes in-process.
  const pools = new Map<string, DecodePool>();
  const poolFor = (repo: string): DecodePool | undefined => {
    if (hooks.repository || isObjectStorage(repo)) return undefined;
    let pool = pools.get(repo);
    if (!pool) {
      pool = new DecodePool(repo, { ...(hooks.keyFile ? { keyFile: hooks.keyFile } : {}), size: DECODE_WORKERS });
      pools.set(repo, pool);
    }
    return pool;
  };
  const closers: Array<() => Promise<void>> = [];
  const restored: string[] = [];
  const restoredRepos: string[] = [];
  const skipped: Array<{ id: string; reason: string }> = [];
  for (const rec of allRecords(stateDir)) {
    if (ownerOf(rec).kind !== 'user') continue;
    if (hooks.filter && !hooks.filter(rec)) continue;
    // Two writers on one overlay would corrupt it: a publication another live process serves is left alone.
    if (isLive(stateDir, rec)) {
      hooks.onWarning?.(
        `publication ${rec.id} is served by ${rec.pid !== undefined && rec.pid !== process.pid ? `process ${rec.pid}` : 'this process already'}; not restored here`,
      );
      continue;
    }
    let opened: OpenedPublication | undefined;
    try {
      const repo = hooks.repository ?? (await openForReading(rec.repo, stateDir, hooks));
      const point = await repo.getPoint(rec.point);
      opened = await openPublication(
        rec,
        repo,
        point,
        cache,
        stateDir,
        hooks.onWarning ?? (() => undefined),
        poolFor(resolveRepository(rec.repo)),
      );
      await datastore.attach(opened.pub, { onWarning: hooks.onWarning });
    } catch (err) {
      await opened?.close().catch(() => undefined);
      const reason = err instanceof RestorelabError ? `${err.code}: ${err.message}` : (err as Error).message;
      hooks.onWarning?.(`publication ${rec.id} not restored: ${reason} (restorelab cleanup lists it)`);
      skipped.push({ id: rec.id, reason });
      continue;
    }
    const key = recordDir(stateDir, rec.id);
    servedHere.add(key);
    const served = opened;
    closers.push(async () => {
      servedHere.delete(key);
      await served.close();
    });
    restored.push(rec.id);
    restoredRepos.push(resolveRepository(rec.repo));
  }
  // A pool whose every publication was skipped serves nothing.
  const used = new Set(restoredRepos);
  for (const [repo, pool] of pools) {
    if (used.has(repo)) continue;
    await pool.close();
    pools.delete(repo);
  }
  return {
    restored,
    skipped,
    close: async () => {
      for (const c of closers) await c();
      for (const pool of pools.values()) await pool.close();
    },
  };
}

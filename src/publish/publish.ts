/**
 * Publishing a restore point: its disks become live files (overlay over a
 * PublishedDisk) in a PublicationDatastore, mounted with FUSE and/or
 * exported over NFS by this process when asked.
 *
 * State, below `<stateDir>/publications/<id>/`: `publication.json` (the
 * record: point, repository, number, overlay place and limit, owning pid) and
 * the datastore's scratch files and ids. Overlays live in
 * `<overlayDir>/<id>/` (default `<stateDir>/overlays`). The record outlives
 * the process, so `resume` finds the overlay again after a stop or a crash,
 * and `unpublish` finds the process to signal.
 */
import fs from 'node:fs';
import path from 'node:path';
import { ExitCode, RestorelabError, badInput, notFound } from '../errors.js';
import { processAlive as pidAlive } from '../host/process.js';
import { openRepository } from '../repo/repository.js';
import type { RepositoryReader } from '../repo/contract.js';
import type { VmDefinition } from '../vm/definition.js';
import { ChunkCache } from '../disk/chunk-cache.js';
import { PublishedDisk } from '../disk/published-disk.js';
import { DecodePool } from '../disk/decode-pool.js';
import { Overlay, OverlayBudget, discardOverlay } from '../overlay/overlay.js';
import { PublicationDatastore, type DatastorePublication } from '../datastore/publication-datastore.js';
import { FuseFrontend, assertFuseAvailable } from '../fuse/fuse-frontend.js';
import { startNfsExport, type NfsExport } from '../nfs/export.js';
import { detachMount, isStaleFuseMount, mountEntry } from '../fuse/mounts.js';
import type { PublicationInfo, PublishOptions, RunningPublication } from './contract.js';

const DEFAULT_CACHE_MIB = 128;
const STOP_WAIT_MS = 30_000;
/** Decode threads per publication: two keep a sequential reader fed (readahead is two chunks). */
const DECODE_WORKERS = 2;

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
  /** The serving process while it runs. */
  pid?: number;
  created: string;
}

export interface PublicationStatus extends PublicationInfo {
  running: boolean;
  pid?: number;
  overlayDir: string;
  overlayLimitBytes?: number;
  /** Bytes held by the overlays (allocated blocks of the data files). */
  overlayBytes: number;
}

export interface PublishHooks {
  /** Human-readable warnings: a discarded overlay, a cleared stale mount, overlay usage thresholds. */
  onWarning?: (message: string) => void;
  /** Key file of an encrypted repository. */
  keyFile?: string;
  /** An already open repository (tests, the daemon); `opts.repo` is then only recorded. */
  repository?: RepositoryReader;
}

function publicationsDir(stateDir: string): string {
  return path.join(stateDir, 'publications');
}

function recordFile(stateDir: string, id: string): string {
  return path.join(publicationsDir(stateDir), id, 'publication.json');
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
  fs.writeFileSync(file + '.tmp', JSON.stringify(rec, null, 2) + '\n');
  fs.renameSync(file + '.tmp', file);
}

function allRecords(stateDir: string): PublicationRecord[] {
  const dir = publicationsDir(stateDir);
  if (!fs.existsSync(dir)) return [];
  return fs.readdirSync(dir).sort().map((id) => readRecord(recordFile(stateDir, id))).filter((r): r is PublicationRecord => r !== undefined);
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

function statusOf(rec: PublicationRecord): PublicationStatus {
  const running = rec.pid !== undefined && pidAlive(rec.pid);
  return {
    id: rec.id, name: rec.name, point: rec.point, vm: rec.vm, ...(rec.path ? { path: rec.path } : {}), disks: rec.disks,
    running, ...(running ? { pid: rec.pid } : {}), overlayDir: rec.overlayDir,
    ...(rec.overlayLimitBytes !== undefined ? { overlayLimitBytes: rec.overlayLimitBytes } : {}),
    overlayBytes: overlayBytes(path.join(rec.overlayDir, rec.id)),
  };
}

/** Every publication recorded in `stateDir`, running or stopped (and resumable). */
export function listPublications(stateDir: string): PublicationStatus[] {
  return allRecords(stateDir).map(statusOf);
}

function findRecord(stateDir: string, idOrName: string): PublicationRecord {
  const rec = allRecords(stateDir).find((r) => r.id === idOrName || r.name === idOrName);
  if (!rec) {
    throw notFound('PUBLICATION_NOT_FOUND', `no publication ${idOrName} in ${stateDir}`, 'list them with: restorelab publications');
  }
  return rec;
}

/**
 * Stops a publication: signals its serving process (SIGTERM, which unmounts
 * cleanly) and waits for it to exit; a stale FUSE mount of a crashed server is
 * removed. With `discard`, its overlay and scratch files are deleted too.
 */
export async function removePublication(stateDir: string, idOrName: string, opts: { discard?: boolean } = {}): Promise<PublicationStatus> {
  const rec = findRecord(stateDir, idOrName);
  if (rec.pid !== undefined && pidAlive(rec.pid) && rec.pid !== process.pid) {
    process.kill(rec.pid, 'SIGTERM');
    const deadline = Date.now() + STOP_WAIT_MS;
    while (pidAlive(rec.pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    if (pidAlive(rec.pid)) {
      throw new RestorelabError('PUBLICATION_BUSY', `publication ${rec.id}: process ${rec.pid} did not stop within ${STOP_WAIT_MS / 1000} s`, {
        hint: `something may hold files open under ${rec.path ?? 'the mount'}; stop it, or kill ${rec.pid}`, exitCode: ExitCode.busy,
      });
    }
  }
  if (rec.fuseDir && mountEntry(rec.fuseDir) && (await isStaleFuseMount(rec.fuseDir))) await detachMount(rec.fuseDir);
  const fresh = readRecord(recordFile(stateDir, rec.id)) ?? rec;
  delete fresh.pid;
  const status = statusOf(fresh);
  if (opts.discard) {
    fs.rmSync(path.join(rec.overlayDir, rec.id), { recursive: true, force: true });
    fs.rmSync(path.dirname(recordFile(stateDir, rec.id)), { recursive: true, force: true });
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

async function openPublication(rec: PublicationRecord, repo: RepositoryReader, point: { vm: VmDefinition; disks: { name: string }[] },
  cache: ChunkCache, stateDir: string, warn: (m: string) => void, pool?: DecodePool): Promise<OpenedPublication> {
  const dir = path.join(rec.overlayDir, rec.id);
  const budget = new OverlayBudget(rec.overlayLimitBytes, (pct, used, limit) =>
    warn(`publication ${rec.id}: overlay ${pct} % full (${used} of ${limit} bytes); writes fail with ENOSPC at the limit`));
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
        id: rec.id, name: rec.name, number: rec.number, vm: point.vm, created: new Date(rec.created), disks,
        stateDir: path.dirname(recordFile(stateDir, rec.id)), overlayDir: dir, readOnly: rec.readOnly,
      },
      close: async () => { for (const o of opened) await o.close(); },
    };
  } catch (err) {
    for (const o of opened) await o.close().catch(() => undefined);
    throw err;
  }
}

/**
 * Publishes `opts.point`: opens its disks with overlays, serves them in a
 * datastore, and mounts it with FUSE at `opts.fuseDir` when given. Without
 * `resume`, an earlier overlay of the same point is discarded first.
 */
export async function startPublication(opts: PublishOptions, hooks: PublishHooks = {}): Promise<RunningPublication & { datastore: PublicationDatastore }> {
  const warn = hooks.onWarning ?? (() => undefined);
  if (opts.overlayLimitBytes !== undefined && !(opts.overlayLimitBytes > 0)) {
    throw badInput('BAD_OVERLAY_LIMIT', `overlay limit must be a positive size, got ${opts.overlayLimitBytes}`, 'e.g. --overlay-limit 10G');
  }
  if (opts.fuseDir) assertFuseAvailable();
  const repo = hooks.repository ?? await openRepository(opts.repo, { keyFile: hooks.keyFile });
  const point = await repo.getPoint(opts.point);
  if (point.disks.length === 0) throw notFound('DISK_NOT_FOUND', `restore point ${opts.point} has no disks`);

  const name = publicationName(point.vm.name, point.id);
  const id = name;
  const previous = readRecord(recordFile(opts.stateDir, id));
  if (previous?.pid !== undefined && pidAlive(previous.pid) && previous.pid !== process.pid) {
    throw new RestorelabError('PUBLICATION_BUSY', `restore point ${point.id} is already published as ${id} by process ${previous.pid}`, {
      hint: `use it (${previous.path ?? 'see restorelab publications'}), or stop it first: restorelab unpublish ${id}`, exitCode: ExitCode.busy,
    });
  }
  const overlayRoot = path.resolve(opts.overlayDir ?? previous?.overlayDir ?? path.join(opts.stateDir, 'overlays'));
  const existingOverlay = fs.existsSync(path.join(overlayRoot, id));
  if (!opts.resume && previous) {
    if (existingOverlay) warn(`discarding the overlay of the earlier publication ${id} (pass --resume to keep its writes)`);
    for (const d of point.disks) await discardOverlay(path.join(overlayRoot, id), d.name);
    fs.rmSync(path.join(path.dirname(recordFile(opts.stateDir, id)), 'scratch'), { recursive: true, force: true });
    fs.rmSync(path.join(path.dirname(recordFile(opts.stateDir, id)), 'ids.json'), { force: true });
  }
  const number = previous?.number ?? allocateNumber(opts.stateDir);
  const fuseDir = opts.fuseDir ? path.resolve(opts.fuseDir) : undefined;
  const pubPath = fuseDir ? path.join(fuseDir, name) : undefined;
  const rec: PublicationRecord = {
    id, name, number, point: point.id, vm: point.vm.name, repo: path.resolve(opts.repo), overlayDir: overlayRoot,
    ...(opts.overlayLimitBytes !== undefined ? { overlayLimitBytes: opts.overlayLimitBytes } : previous?.overlayLimitBytes !== undefined && opts.resume ? { overlayLimitBytes: previous.overlayLimitBytes } : {}),
    readOnly: opts.readOnly ?? false, ...(fuseDir ? { fuseDir, path: pubPath } : {}),
    disks: Object.fromEntries(point.disks.map((d) => [d.name, pubPath ? path.join(pubPath, `${d.name}.raw`) : `${d.name}.raw`])),
    created: previous && opts.resume ? previous.created : new Date().toISOString(),
  };

  const cache = new ChunkCache((opts.cacheMiB ?? DEFAULT_CACHE_MIB) * 1024 * 1024);
  // Decoding on worker threads keeps the thread that answers FUSE free; an injected repository decodes in-process.
  const pool = hooks.repository ? undefined : new DecodePool(path.resolve(opts.repo), { ...(hooks.keyFile ? { keyFile: hooks.keyFile } : {}), size: DECODE_WORKERS });
  let opened: OpenedPublication;
  try {
    opened = await openPublication(rec, repo, point, cache, opts.stateDir, warn, pool);
  } catch (err) {
    await pool?.close();
    throw err;
  }
  const datastore = new PublicationDatastore();
  let fuse: FuseFrontend | undefined;
  let nfs: NfsExport | undefined;
  try {
    await datastore.attach(opened.pub);
    if (fuseDir) fuse = await FuseFrontend.mount(datastore, { mountPoint: fuseDir, onStaleCleared: (d) => warn(`cleared a stale FUSE mount at ${d} (a crashed publisher)`) });
    if (opts.nfs) {
      const listen = opts.nfs.listen ?? '127.0.0.1';
      nfs = await startNfsExport({
        datastore, stateDir: opts.stateDir, port: opts.nfs.port, mountPort: opts.nfs.mountPort, portmapPort: opts.nfs.portmapPort,
        listen, advertise: listen, allow: opts.nfs.allow ?? ['127.0.0.0/8'], readOnly: opts.readOnly ?? false, log: { warn },
      });
    }
  } catch (err) {
    await fuse?.unmount();
    await opened.close();
    await pool?.close();
    throw err;
  }
  writeRecord(opts.stateDir, { ...rec, pid: process.pid });

  let closed = false;
  return {
    id, name, point: point.id, vm: point.vm.name, ...(pubPath ? { path: pubPath } : {}), disks: rec.disks, datastore,
    ...(nfs ? { urls: Object.fromEntries(point.disks.map((d) => [d.name, nfs!.url(name, `${d.name}.raw`)])) } : {}),
    close: async (o = {}) => {
      if (closed) return;
      closed = true;
      await nfs?.stop();
      if (fuse) await fuse.unmount();
      datastore.detach(id);
      await opened.close();
      await pool?.close();
      if (o.discard) {
        fs.rmSync(path.join(overlayRoot, id), { recursive: true, force: true });
        fs.rmSync(path.dirname(recordFile(opts.stateDir, id)), { recursive: true, force: true });
      } else {
        writeRecord(opts.stateDir, rec);
      }
    },
  };
}

/**
 * Re-attaches every recorded publication to `datastore` (a server restart:
 * the NFS server keeps its file handles). Returns a closer for the overlays.
 * One record that cannot be opened (its point or repository gone) is skipped
 * with its reason, never fatal: the server still serves every other one.
 */
export async function restorePublications(stateDir: string, datastore: PublicationDatastore,
  hooks: PublishHooks & { cacheMiB?: number; filter?: (rec: PublicationRecord) => boolean } = {}): Promise<{ restored: string[]; skipped: Array<{ id: string; reason: string }>; close(): Promise<void> }> {
  const cache = new ChunkCache((hooks.cacheMiB ?? DEFAULT_CACHE_MIB) * 1024 * 1024);
  const closers: Array<() => Promise<void>> = [];
  const restored: string[] = [];
  const skipped: Array<{ id: string; reason: string }> = [];
  for (const rec of allRecords(stateDir)) {
    if (hooks.filter && !hooks.filter(rec)) continue;
    // Two writers on one overlay would corrupt it: a publication another live process serves is left alone.
    if (rec.pid !== undefined && rec.pid !== process.pid && pidAlive(rec.pid)) {
      hooks.onWarning?.(`publication ${rec.id} is served by process ${rec.pid}; not restored here`);
      continue;
    }
    let opened: OpenedPublication | undefined;
    try {
      const repo = hooks.repository ?? await openRepository(rec.repo, { keyFile: hooks.keyFile });
      const point = await repo.getPoint(rec.point);
      opened = await openPublication(rec, repo, point, cache, stateDir, hooks.onWarning ?? (() => undefined));
      await datastore.attach(opened.pub);
    } catch (err) {
      await opened?.close().catch(() => undefined);
      const reason = err instanceof RestorelabError ? `${err.code}: ${err.message}` : (err as Error).message;
      hooks.onWarning?.(`publication ${rec.id} not restored: ${reason} (restorelab cleanup lists it)`);
      skipped.push({ id: rec.id, reason });
      continue;
    }
    closers.push(opened.close);
    restored.push(rec.id);
  }
  return { restored, skipped, close: async () => { for (const c of closers) await c(); } };
}

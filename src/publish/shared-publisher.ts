/**
 * The shared publisher: one long-lived process (`restorelab publisher-serve`)
 * that serves the NBD exports of every recovery session of a state
 * directory, instead of one publisher inside each session's supervisor.
 *
 * Why: under a boot storm the guests are CPU-bound (TCG on two cores), and
 * every recovery used to pay for its own publisher: four decode threads
 * started, the same chunks read, decompressed and hashed once per session
 * (N VMs of one point read the same boot blocks), a 128 MiB cache each.
 * Here one repository has one reading (index reader, chunk cache, decode
 * pool), so the second VM's cold reads hit the first one's decoded chunks.
 *
 * What stays per session: the publication (its own id, record, overlay and
 * overlay limit: writes never reach the repository), and its own NBD server
 * on its own unix socket, mode 0600 in the owner-only state directory (or
 * the session's access group), exporting only that publication's disks, so
 * a client reaches only its own export, as before.
 *
 * Lifetime: started by the first supervisor that needs it; it holds an
 * abstract unix socket named after the state directory as its lock (the
 * kernel releases it when the process dies, so a crash leaves no stale
 * lock, and two starting at once cannot both win). A supervisor's
 * connection is its lease: publications opened on it are closed when it
 * ends without closing them (the supervisor died; `stop` then discards the
 * overlay). When the publisher itself dies, every supervisor sees its
 * connection end and fails its session (PUBLISHER_GONE). With no
 * publication and no connection left it lingers `idleMs`, then exits.
 */
import fs from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import path from 'node:path';
import { RestorelabError } from '../errors.js';
import { ChunkCache } from '../disk/chunk-cache.js';
import { DecodePool } from '../disk/decode-pool.js';
import { isObjectStorage, resolveRepository } from '../repo/open.js';
import type { PublicationInfo, PublishOptions, RunningPublication } from './contract.js';
import { DECODE_WORKERS, openForReading, sameOwner, startPublication, type SharedReading } from './publish.js';
import {
  holdPublisherLock,
  onLines,
  publisherDir,
  publisherSocket,
  toWireError,
  type PublisherReply,
  type PublisherRequest,
  type PublisherStats,
} from './publisher-wire.js';

/** How long the publisher stays with nothing to serve, so recoveries started one after another still share it. */
export const PUBLISHER_IDLE_MS = 30_000;
/**
 * The chunk cache of one repository's reading: twice a lone publication's,
 * because every session reads through it (a guest's boot reads about 60 MiB
 * of the web guest; six sessions of one point read the same blocks).
 */
export const SHARED_CACHE_MIB = 256;

export interface SharedPublisherOptions {
  stateDir: string;
  /** The lock, when the caller took it (holdPublisherLock) before loading this module. */
  lock?: Server;
  idleMs?: number;
  log?: (message: string) => void;
}

interface Reading extends SharedReading {
  key: string;
  repo: string;
  publications: Set<string>;
}

interface Served {
  publication: RunningPublication;
  lease: Socket;
  reading: Reading;
}

/** What crosses to the supervisor: the contract's PublicationInfo (the datastore and close() stay here). */
function infoOf(p: RunningPublication): PublicationInfo {
  return {
    id: p.id,
    name: p.name,
    owner: p.owner,
    point: p.point,
    vm: p.vm,
    ...(p.path !== undefined ? { path: p.path } : {}),
    disks: p.disks,
    ...(p.urls ? { urls: p.urls } : {}),
    ...(p.nbd ? { nbd: p.nbd } : {}),
    ...(p.nbdSocket !== undefined ? { nbdSocket: p.nbdSocket } : {}),
  };
}

function listen(server: Server, where: string): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(where, () => {
      server.removeListener('error', reject);
      resolve();
    });
  });
}

/**
 * Serves until idle or signalled; resolves with the exit code (0, also when
 * another process already holds the lock and serves this state directory).
 */
export async function serveSharedPublisher(o: SharedPublisherOptions): Promise<number> {
  const log = o.log ?? ((m: string) => process.stdout.write(`${new Date().toISOString()} ${m}\n`));
  const idleMs = o.idleMs ?? PUBLISHER_IDLE_MS;
  const lock = o.lock ?? (await holdPublisherLock(o.stateDir));
  if (!lock) return 0;
  const dir = publisherDir(o.stateDir);
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const socket = publisherSocket(o.stateDir);
  // Holding the lock, any socket file there is a dead publisher's.
  fs.rmSync(socket, { force: true });

  const readings = new Map<string, Promise<Reading>>();
  const served = new Map<string, Served>();
  const leases = new Set<Socket>();
  let idleTimer: NodeJS.Timeout | undefined;
  let stopping = false;
  let finish!: (code: number) => void;
  const finished = new Promise<number>((r) => (finish = r));

  const readingFor = (opts: PublishOptions, keyFile: string | undefined): Promise<Reading> => {
    const repo = resolveRepository(opts.repo);
    const key = `${repo}\0${keyFile ?? ''}`;
    let r = readings.get(key);
    if (!r) {
      r = (async (): Promise<Reading> => {
        const repository = await openForReading(opts.repo, o.stateDir, keyFile !== undefined ? { keyFile } : {});
        const cache = new ChunkCache(SHARED_CACHE_MIB * 1024 * 1024);
        const pool = isObjectStorage(opts.repo)
          ? undefined
          : new DecodePool(repo, { ...(keyFile !== undefined ? { keyFile } : {}), size: DECODE_WORKERS });
        log(`reading ${repo}: one cache of ${SHARED_CACHE_MIB} MiB${pool ? `, ${DECODE_WORKERS} decode threads` : ''}`);
        return { key, repo, repository, cache, ...(pool ? { pool } : {}), publications: new Set() };
      })();
      readings.set(key, r);
      r.catch(() => readings.delete(key));
    }
    return r;
  };

  const checkIdle = (): void => {
    if (idleTimer) clearTimeout(idleTimer);
    idleTimer = undefined;
    if (stopping || served.size > 0 || leases.size > 0) return;
    idleTimer = setTimeout(() => void shutdown(`idle for ${idleMs / 1000} s`), idleMs);
  };

  const closeOne = async (id: string, discard: boolean): Promise<void> => {
    const s = served.get(id);
    if (!s) return;
    served.delete(id);
    s.reading.publications.delete(id);
    await s.publication.close({ discard });
    // What sharing saved shows here: lookups served from the cache versus chunks decoded.
    const c = s.reading.cache;
    log(
      `closed ${id}${discard ? ' (overlay discarded)' : ''}; ${s.reading.repo}: ${c.misses} chunks decoded, ${c.hits} reads from the cache`,
    );
  };

  const handle = async (req: PublisherRequest, lease: Socket): Promise<Omit<PublisherReply & { ok: true }, 'seq'>> => {
    switch (req.op) {
      case 'hello':
        if (stopping) throw new RestorelabError('PUBLISHER_GONE', 'the shared publisher is stopping');
        return { ok: true };
      case 'publish': {
        if (stopping) throw new RestorelabError('PUBLISHER_GONE', 'the shared publisher is stopping');
        const opts = req.opts;
        if (!opts.nbd || opts.fuseDir || opts.nfs || path.resolve(opts.stateDir) !== path.resolve(o.stateDir)) {
          throw new RestorelabError('PUBLISH_FAILED', 'the shared publisher serves NBD publications of its own state directory only');
        }
        const reading = await readingFor(opts, req.keyFile);
        const publication = await startPublication(opts, {
          shared: reading,
          servedBy: socket,
          onWarning: log,
          ...(req.keyFile !== undefined ? { keyFile: req.keyFile } : {}),
        });
        if (lease.destroyed) {
          // Its supervisor went while it was being made: nobody will close it.
          await publication.close({ discard: false });
          throw new RestorelabError('PUBLISHER_GONE', 'the session went while its publication was made');
        }
        served.set(publication.id, { publication, lease, reading });
        reading.publications.add(publication.id);
        log(`serving ${publication.id} for ${publication.owner.kind} ${publication.owner.id} on ${publication.nbdSocket ?? '?'}`);
        return { ok: true, publication: infoOf(publication) };
      }
      case 'close': {
        const s = served.get(req.id);
        if (!s) return { ok: true };
        // The connection that opened it may close it; anyone else must be its owner (`stop` after a supervisor crash).
        if (s.lease !== lease && !(req.as && sameOwner(req.as, s.publication.owner))) {
          throw new RestorelabError(
            'PUBLICATION_NOT_OWNER',
            `publication ${req.id} belongs to ${s.publication.owner.kind} ${s.publication.owner.id}`,
          );
        }
        await closeOne(req.id, req.discard);
        checkIdle();
        return { ok: true };
      }
      case 'stats': {
        const all = await Promise.all([...readings.values()].map((r) => r.catch(() => undefined)));
        const stats: PublisherStats = {
          pid: process.pid,
          publications: [...served.keys()],
          repositories: all
            .filter((r): r is Reading => r !== undefined)
            .map((r) => ({
              repo: r.repo,
              publications: r.publications.size,
              cacheHits: r.cache.hits,
              cacheMisses: r.cache.misses,
              cachedChunks: r.cache.count,
            })),
        };
        return { ok: true, stats };
      }
    }
  };

  const control = createServer((sock) => {
    leases.add(sock);
    checkIdle();
    onLines(sock, (m) => {
      const req = m as PublisherRequest & { seq: number };
      handle(req, sock).then(
        (r) => sock.write(JSON.stringify({ ...r, seq: req.seq }) + '\n'),
        (e: unknown) => sock.write(JSON.stringify({ seq: req.seq, ok: false, error: toWireError(e) } satisfies PublisherReply) + '\n'),
      );
    });
    sock.on('error', () => undefined);
    sock.on('close', () => {
      leases.delete(sock);
      // Its supervisor is gone: what it opened is closed, the overlay kept for `stop` (or cleanup) to discard.
      const orphans = [...served.entries()].filter(([, s]) => s.lease === sock).map(([id]) => id);
      void Promise.allSettled(orphans.map((id) => closeOne(id, false))).then(() => checkIdle());
      if (orphans.length === 0) checkIdle();
    });
  });
  const shutdown = async (why: string): Promise<void> => {
    if (stopping) return;
    stopping = true;
    if (idleTimer) clearTimeout(idleTimer);
    log(`stopping: ${why}`);
    control.close();
    fs.rmSync(socket, { force: true });
    await Promise.allSettled([...served.keys()].map((id) => closeOne(id, false)));
    for (const s of leases) s.destroy();
    for (const r of await Promise.allSettled(readings.values())) if (r.status === 'fulfilled') await r.value.pool?.close();
    lock.close();
    finish(0);
  };

  await listen(control, socket);
  fs.chmodSync(socket, 0o600);
  for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.once(sig, () => void shutdown(`${sig}`));
  log(`shared publisher ${process.pid} serving ${socket}`);
  checkIdle();
  return finished;
}

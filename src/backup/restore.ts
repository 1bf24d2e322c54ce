/**
 * Full restore: one disk of a restore point written back to a file.
 *
 * Raw output is sparse: the file is sized with ftruncate and only chunks that
 * hold non-zero bytes are written, so holes stay holes. qcow2 output is that
 * sparse raw file converted by `qemu-img convert`, which skips holes too.
 * Output goes to a temp name beside the target and is renamed into place only
 * when complete, so a failed restore (a corrupt chunk, a full disk) never
 * leaves a file that looks like a good disk.
 */
import { closeSync, constants, openSync } from 'node:fs';
import { open, unlink } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import { availableParallelism } from 'node:os';
import { CorruptChunkError } from '../repo/contract.js';
import type { Repository } from '../repo/api.js';
import type { RestoreJob, RestoreJobResult } from './restore-worker.js';
import { badInput, notFound, RestorelabError } from '../errors.js';
import { exec } from '../host/exec.js';
import { commitTempFile } from '../host/atomic-file.js';
import { WorkerPool, type WithoutId } from '../host/worker-pool.js';
import { blobSourceOf } from '../repo/chunk-store.js';
import { qemuImg } from '../ingest/qemu-img.js';

export type RestoreFormat = 'raw' | 'qcow2';

export interface RestoreOptions {
  repo: Repository;
  point: string;
  disk: string;
  to: string;
  format?: RestoreFormat;
  /** Decoding threads; default one per core. */
  parallel?: number;
  onProgress?: (done: number, total: number) => void;
}

/** Decoding (decompress, decrypt, re-hash) is the costly part: one thread per core. */
function defaultThreads(): number {
  return Math.max(1, Math.min(availableParallelism(), 8));
}

/** Bytes written between two background flushes of the output. */
const FLUSH_EVERY = 128 * 1024 * 1024;

export interface RestoreResult {
  point: string;
  disk: string;
  to: string;
  format: RestoreFormat;
  size: number;
  bytesWritten: number;
  seconds: number;
}

/** A damaged or quarantined chunk is a user-facing failure with a way out, not a crash. */
function damaged(opts: RestoreOptions, offset: number, err: unknown): RestorelabError {
  return new RestorelabError(
    'RESTORE_CHUNK_CORRUPT',
    `cannot restore ${opts.point}/${opts.disk}: the chunk at offset ${offset} is damaged (${(err as Error).message})`,
    { hint: 'run restorelab verify to list every damaged restore point, and restore from an older or newer point', cause: err },
  );
}

/** Turns a worker's failure into the error the user sees. */
async function failure(
  repo: Repository,
  opts: RestoreOptions,
  job: RestoreJob,
  r: Extract<RestoreJobResult, { error: string }>,
): Promise<Error> {
  if (r.corrupt) return damaged(opts, job.position, new CorruptChunkError(job.digest, r.error));
  if (r.stage === 'read' && r.code === 'ENOENT') {
    // The store knows why a chunk is missing (quarantined by verify, or never stored) and says so.
    try {
      await repo.chunks.get(job.digest);
    } catch (err) {
      if (err instanceof RestorelabError && err.code === 'CHUNK_QUARANTINED') return damaged(opts, job.position, err);
      return err as Error;
    }
  }
  if (r.stage === 'write') {
    return new RestorelabError('RESTORE_WRITE_FAILED', `cannot write the restored disk next to ${opts.to}: ${r.error}`, {
      hint:
        r.code === 'ENOSPC' ? `free space in ${dirname(resolve(opts.to))} or restore elsewhere with --to` : 'check the target directory',
    });
  }
  return new Error(`reading chunk ${job.digest}: ${r.error}`);
}

/**
 * The output opened a second time with O_DIRECT, for the workers' aligned writes (restore-worker.ts says
 * why); undefined where the file system refuses it (tmpfs), and the workers write through the page cache.
 */
function openDirect(path: string): number | undefined {
  if (constants.O_DIRECT === undefined) return undefined;
  try {
    return openSync(path, constants.O_WRONLY | constants.O_DIRECT);
  } catch {
    return undefined;
  }
}

/** Chunk fetches in flight from a remote store (one blob in memory each) at most. */
const REMOTE_FETCHES_IN_FLIGHT = 16;
/** Blob bytes those fetches may hold at once: 16 fetches of 1 MiB chunks, 8 of 4 MiB ones. */
const REMOTE_FETCH_BYTES_IN_FLIGHT = 32 * 1024 * 1024;

/**
 * Writes every non-hole chunk of `digests` into `fd` on `threads` restore
 * workers (restore-worker.ts), two chunks in flight per worker so none waits
 * for the next job. Rejects with the first failure, or with what `onChunk`
 * threw, once in-flight work ended.
 */
async function writeChunks(
  repo: Repository,
  opts: RestoreOptions,
  out: { fd: number; directFd: number | undefined; size: number },
  digests: (string | null)[],
  chunkSize: number,
  threads: number,
  onChunk: (written: number) => void,
): Promise<void> {
  const pool = new WorkerPool<RestoreJob, RestoreJobResult>({
    script: new URL('./restore-worker.js', import.meta.url),
    workerData: {
      config: repo.config,
      fd: out.fd,
      size: out.size,
      ...(out.directFd !== undefined ? { directFd: out.directFd } : {}),
      ...(repo.masterKey ? { key: repo.masterKey } : {}),
    },
    size: threads,
    name: 'restore',
  });
  let next = 0;
  let error: Error | undefined;
  // The progress callback may throw to cancel (an API operation does): that stops the restore like a failure.
  const progress = (written: number): void => {
    try {
      onChunk(written);
    } catch (err) {
      error ??= err as Error;
    }
  };
  // One lane per job in flight: each takes the next chunk when its last one is written.
  const lane = async (): Promise<void> => {
    while (!error && next < digests.length) {
      const digest = digests[next];
      const position = next * chunkSize;
      next++;
      if (!digest) {
        progress(0);
        continue;
      }
      let r: RestoreJobResult;
      let job: WithoutId<RestoreJob>;
      try {
        job = { digest, source: await blobSourceOf(repo.chunks, digest), position };
      } catch (err) {
        // A store without files was asked here: it says why a chunk is missing, as failure() does for files.
        const quarantined = err instanceof RestorelabError && err.code === 'CHUNK_QUARANTINED';
        error ??= quarantined || err instanceof CorruptChunkError ? damaged(opts, position, err) : (err as Error);
        return;
      }
      // A blob fetched into a buffer of its own moves to the worker; copying it would cost the main thread a pass over every byte.
      const owned = 'blob' in job.source && repo.chunks.getGivesOwnedBuffers === true ? [job.source.blob.buffer as ArrayBuffer] : [];
      try {
        r = await pool.request(job, owned);
      } catch (err) {
        error ??= err as Error;
        return;
      }
      if ('error' in r) {
        const e = await failure(repo, opts, { ...job, id: r.id }, r);
        error ??= e;
        return;
      }
      progress(r.written);
    }
  };
  try {
    // A store without files is remote (object storage): a lane waits a round trip per chunk, so more of them fetch ahead.
    const remote = Math.min(REMOTE_FETCHES_IN_FLIGHT, Math.floor(REMOTE_FETCH_BYTES_IN_FLIGHT / chunkSize));
    const lanes = repo.chunks.fileOf ? pool.size * 2 : Math.max(pool.size * 2, remote);
    await Promise.all(Array.from({ length: lanes }, lane));
  } finally {
    await pool.close();
  }
  if (error) throw error;
}

export async function restoreDisk(opts: RestoreOptions): Promise<RestoreResult> {
  const format = opts.format ?? 'raw';
  if (format !== 'raw' && format !== 'qcow2') {
    throw badInput('BAD_FORMAT', `cannot restore to format "${String(format)}"`, 'use --format raw or --format qcow2');
  }
  const started = Date.now();
  const to = resolve(opts.to);
  const { repo } = opts;
  const point = await repo.getPoint(opts.point);
  const entry = point.disks.find((d) => d.name === opts.disk);
  if (!entry) {
    throw notFound(
      'DISK_NOT_FOUND',
      `restore point ${opts.point} has no disk "${opts.disk}" (it has: ${point.disks.map((d) => d.name).join(', ')})`,
      'name one of its disks with --disk',
    );
  }
  const disk = await repo.readIndex(entry.indexDigest);
  const tmpRaw = join(dirname(to), `.${basename(to)}.restore-${randomBytes(4).toString('hex')}`);
  const tmpOut = format === 'qcow2' ? `${tmpRaw}.qcow2` : tmpRaw;
  let bytesWritten = 0;
  try {
    const fh = await open(tmpRaw, 'wx', 0o600);
    let directFd: number | undefined;
    try {
      await fh.truncate(disk.size);
      directFd = openDirect(tmpRaw);
      let done = 0;
      // Flush as we go, one flush at a time, so that the final fsync finds little left to write.
      let flushed = 0;
      let flushing: Promise<void> | undefined;
      await writeChunks(
        repo,
        opts,
        { fd: fh.fd, directFd, size: disk.size },
        disk.digests,
        disk.chunkSize,
        opts.parallel ?? defaultThreads(),
        (written) => {
          bytesWritten += written;
          done++;
          if (!flushing && bytesWritten - flushed >= FLUSH_EVERY) {
            flushed = bytesWritten;
            // A failed flush fails the final sync again, which reports it.
            flushing = fh
              .datasync()
              .catch(() => undefined)
              .finally(() => {
                flushing = undefined;
              });
          }
          opts.onProgress?.(Math.min(done * disk.chunkSize, disk.size), disk.size);
        },
      );
      await flushing;
      await fh.sync();
    } finally {
      if (directFd !== undefined) closeSync(directFd);
      await fh.close();
    }
    if (format === 'qcow2') {
      const r = await exec(qemuImg(), ['convert', '-f', 'raw', '-O', 'qcow2', tmpRaw, tmpOut]);
      if (r.code !== 0) {
        throw new RestorelabError('RESTORE_CONVERT_FAILED', `qemu-img convert to qcow2 failed: ${r.stderr.trim()}`, {
          hint: `check free space in ${dirname(to)}, or restore with --format raw`,
        });
      }
      await unlink(tmpRaw);
    }
    await commitTempFile(tmpOut, to);
  } catch (err) {
    await Promise.allSettled([unlink(tmpRaw), unlink(tmpOut)]);
    throw err;
  }
  return { point: opts.point, disk: opts.disk, to, format, size: disk.size, bytesWritten, seconds: (Date.now() - started) / 1000 };
}

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
import { open, rename, unlink } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import { CorruptChunkError } from '../repo/contract.js';
import type { Repository } from '../repo/api.js';
import { ChunkPool } from './chunk-pool.js';
import { badInput, notFound, RestorelabError } from '../errors.js';
import { exec } from '../host/exec.js';
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
async function readChecked(repo: Repository, pool: ChunkPool, digest: string, offset: number, opts: RestoreOptions): Promise<Buffer> {
  try {
    return await pool.decode(digest, await repo.chunks.get(digest));
  } catch (err) {
    const quarantined = err instanceof RestorelabError && err.code === 'CHUNK_QUARANTINED';
    if (!(err instanceof CorruptChunkError) && !quarantined) throw err;
    throw new RestorelabError('RESTORE_CHUNK_CORRUPT',
      `cannot restore ${opts.point}/${opts.disk}: the chunk at offset ${offset} is damaged (${(err as Error).message})`,
      { hint: 'run restorelab verify to list every damaged restore point, and restore from an older or newer point', cause: err });
  }
}

function keyOf(repo: Repository): Buffer | undefined {
  return (repo as Partial<{ masterKey: Buffer | undefined }>).masterKey;
}

export async function restoreDisk(opts: RestoreOptions): Promise<RestoreResult> {
  const format = opts.format ?? 'raw';
  if (format !== 'raw' && format !== 'qcow2') {
    throw badInput('RESTORE_FORMAT', `cannot restore to format "${String(format)}"`, 'use --format raw or --format qcow2');
  }
  const started = Date.now();
  const to = resolve(opts.to);
  const { repo } = opts;
  const point = await repo.getPoint(opts.point);
  const entry = point.disks.find((d) => d.name === opts.disk);
  if (!entry) {
    throw notFound('DISK_NOT_FOUND', `restore point ${opts.point} has no disk "${opts.disk}" (it has: ${point.disks.map((d) => d.name).join(', ')})`,
      'name one of its disks with --disk');
  }
  const disk = await repo.readIndex(entry.indexDigest);
  const chunkCount = disk.digests.length;
  const tmpRaw = join(dirname(to), `.${basename(to)}.restore-${randomBytes(4).toString('hex')}`);
  const tmpOut = format === 'qcow2' ? `${tmpRaw}.qcow2` : tmpRaw;
  let bytesWritten = 0;
  // Decoding (decompress, decrypt, re-hash) is the costly part: it runs on every core.
  const pool = new ChunkPool({ config: repo.config, ...(keyOf(repo) ? { key: keyOf(repo) as Buffer } : {}) }, opts.parallel, 0);
  try {
    const fh = await open(tmpRaw, 'wx', 0o600);
    try {
      await fh.truncate(disk.size);
      const parallel = pool.size * 2;
      let next = 0;
      let done = 0;
      const zero = Buffer.alloc(disk.chunkSize);
      const worker = async (): Promise<void> => {
        for (let i = next++; i < chunkCount; i = next++) {
          const digest = disk.digests[i];
          const data = digest ? await readChecked(repo, pool, digest, i * disk.chunkSize, opts) : null;
          if (data && !data.equals(zero.subarray(0, data.length))) {
            let off = 0;
            while (off < data.length) {
              const { bytesWritten: n } = await fh.write(data, off, data.length - off, i * disk.chunkSize + off);
              off += n;
            }
            bytesWritten += data.length;
          }
          done++;
          opts.onProgress?.(Math.min(done * disk.chunkSize, disk.size), disk.size);
        }
      };
      await Promise.all(Array.from({ length: Math.max(1, parallel) }, () => worker()));
      await fh.sync();
    } finally {
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
    await rename(tmpOut, to);
  } catch (err) {
    await Promise.allSettled([unlink(tmpRaw), unlink(tmpOut)]);
    throw err;
  } finally {
    await pool.close();
  }
  return { point: opts.point, disk: opts.disk, to, format, size: disk.size, bytesWritten, seconds: (Date.now() - started) / 1000 };
}

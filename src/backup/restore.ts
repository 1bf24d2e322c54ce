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
import { CorruptChunkError, type DiskSource, type RepositoryReader } from '../repo/contract.js';
import { badInput, RestorelabError } from '../errors.js';
import { exec } from '../host/exec.js';
import { qemuImg } from '../ingest/qemu-img.js';

export type RestoreFormat = 'raw' | 'qcow2';

export interface RestoreOptions {
  repo: RepositoryReader;
  point: string;
  disk: string;
  to: string;
  format?: RestoreFormat;
  /** Chunks decoded at once. */
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

/** A corrupt chunk is a user-facing failure with a way out, not a crash. */
async function readChecked(disk: DiskSource, i: number, opts: RestoreOptions): Promise<Buffer | null> {
  try {
    return await disk.readChunk(i);
  } catch (err) {
    if (!(err instanceof CorruptChunkError)) throw err;
    throw new RestorelabError('RESTORE_CHUNK_CORRUPT',
      `cannot restore ${opts.point}/${opts.disk}: the chunk at offset ${i * disk.chunkSize} is damaged (${err.message})`,
      { hint: 'run restorelab verify to list every damaged restore point, and restore from an older or newer point', cause: err });
  }
}

export async function restoreDisk(opts: RestoreOptions): Promise<RestoreResult> {
  const format = opts.format ?? 'raw';
  if (format !== 'raw' && format !== 'qcow2') {
    throw badInput('RESTORE_FORMAT', `cannot restore to format "${String(format)}"`, 'use --format raw or --format qcow2');
  }
  const started = Date.now();
  const to = resolve(opts.to);
  const disk = await opts.repo.openDisk(opts.point, opts.disk);
  const tmpRaw = join(dirname(to), `.${basename(to)}.restore-${randomBytes(4).toString('hex')}`);
  const tmpOut = format === 'qcow2' ? `${tmpRaw}.qcow2` : tmpRaw;
  let bytesWritten = 0;
  try {
    const fh = await open(tmpRaw, 'wx', 0o600);
    try {
      await fh.truncate(disk.size);
      const parallel = opts.parallel ?? 4;
      let next = 0;
      let done = 0;
      const zero = Buffer.alloc(disk.chunkSize);
      const worker = async (): Promise<void> => {
        for (let i = next++; i < disk.chunkCount; i = next++) {
          const data = disk.chunkId(i) === null ? null : await readChecked(disk, i, opts);
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
  }
  return { point: opts.point, disk: opts.disk, to, format, size: disk.size, bytesWritten, seconds: (Date.now() - started) / 1000 };
}

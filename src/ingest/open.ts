/**
 * Ingest: turning a disk image file into an ImageSource the backup engine
 * reads.
 *
 * Words used in src/ingest/:
 * - image: a file holding a virtual disk, in some format (raw, qcow2, ...).
 * - layer / backing chain: a qcow2 (or vmdk...) image may hold only what
 *   changed since a backing image; the chain is the list from the image the
 *   user named (depth 0) down to the base.
 * - extent: a byte range of the virtual disk that is either data (must be
 *   read) or zero (a hole, or known to read as zeros; never read).
 * - probe: asking qemu-img what format a file is. A raw disk whose guest wrote
 *   a qcow2 header at sector 0 probes as qcow2, so callers that know an image
 *   is raw should say so (`format: 'raw'`).
 *
 * Raw images are read directly (raw.ts); every other format through a
 * private qemu-nbd and our NBD client (nbd-source.ts).
 */
import { constants } from 'node:fs';
import { access, stat } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { badInput, isErrno, notFound } from '../errors.js';
import type { ImageSource, OpenImageOptions } from './contract.js';
import { QemuImageSource } from './nbd-source.js';
import { checkImage, imageInfo, mapImage, type ImageLayer } from './qemu-img.js';
import { RawImageSource } from './raw.js';

export type { ImageSource, OpenImageOptions } from './contract.js';

/** Opens an image for reading; see the module doc for how each format is read. */
export async function openImage(path: string, opts: OpenImageOptions = {}): Promise<ImageSource> {
  const abs = resolve(path);
  await checkReadableFile(abs);
  const chain = await detect(abs, opts.format);
  if (opts.format !== undefined) await checkFormatAsProbed(abs, opts.format);
  const top = chain[0] as ImageLayer;
  if (top.format === 'raw' && chain.length === 1) return RawImageSource.open(abs);
  await checkLayersIntact(chain);
  await checkNotTruncated(abs, top.format, chain);
  return QemuImageSource.open(abs, top.format);
}

async function checkReadableFile(path: string): Promise<void> {
  let st;
  try {
    st = await stat(path);
  } catch (err) {
    if (isErrno(err, 'ENOENT')) throw notFound('IMAGE_NOT_FOUND', `image ${path} does not exist`, 'check the path given with --disk');
    throw badInput(
      'IMAGE_UNREADABLE',
      `cannot stat image ${path}: ${(err as Error).message}`,
      'check the path and the permissions of its directories',
    );
  }
  if (!st.isFile() && !st.isBlockDevice()) {
    throw badInput(
      'IMAGE_NOT_A_FILE',
      `image ${path} is not a regular file or block device`,
      'give the path of the disk image file itself',
    );
  }
  try {
    await access(path, constants.R_OK);
  } catch (err) {
    throw badInput(
      'IMAGE_UNREADABLE',
      `image ${path} is not readable: ${(err as Error).message}`,
      'run restorelab as a user that can read the image, or fix its permissions',
    );
  }
}

/**
 * A format given by the caller (the VM definition) must be what the image
 * is. qemu opens any file as raw, so a qcow2 named raw would otherwise be
 * backed up as its container bytes and boot as garbage. The probe is only
 * used to refuse, never to pick a format: a raw guest disk whose guest wrote
 * a qcow2 header probes as qcow2 and is refused here too, which is the safe
 * side (the definition must then be fixed by someone who knows).
 */
async function checkFormatAsProbed(path: string, format: string): Promise<void> {
  const probed = await imageInfo(path);
  const actual = probed.ok ? probed.chain[0]?.format : undefined;
  if (actual !== undefined && actual !== format) {
    throw badInput(
      'IMAGE_FORMAT_MISMATCH',
      `${path} is a ${actual} image, but the VM definition says ${format}`,
      `set "format": "${actual}" for this disk in the VM definition (or give the right image)`,
    );
  }
}

/** The backing chain, top first, opened the way the user asked (format given or probed). */
async function detect(path: string, format: string | undefined): Promise<ImageLayer[]> {
  const info = await imageInfo(path, format);
  if (info.ok) return info.chain;
  const said = info.stderr.replace(/^qemu-img: /gm, '');
  if (format !== undefined) {
    if (/Unknown driver/.test(info.stderr)) {
      throw badInput(
        'IMAGE_FORMAT_UNKNOWN',
        `qemu does not know the image format "${format}" given for ${path}`,
        'use one of raw, qcow2, vmdk, vdi, vhdx, qed, vpc, or leave the format out to detect it',
      );
    }
    // Tell the user what the file really is, when qemu can tell.
    const probed = await imageInfo(path);
    if (probed.ok && probed.chain[0] && probed.chain[0].format !== format) {
      const actual = probed.chain[0].format;
      throw badInput(
        'IMAGE_FORMAT_MISMATCH',
        `${path} is not a ${format} image (${said}); qemu detects it as ${actual}`,
        `give the right format: --format ${actual}`,
      );
    }
  }
  const backing = [...said.matchAll(/Could not open '([^']+)'/g)]
    .map((m) => m[1] as string)
    .find((f) => resolve(dirname(path), f) !== path);
  if (backing) {
    throw badInput(
      'IMAGE_BACKING_MISSING',
      `qemu cannot open ${path}: its backing image ${backing} cannot be opened (${said})`,
      `put the backing image back at ${backing}, or rebase the image: qemu-img rebase -u -b <new backing> ${path}`,
    );
  }
  throw badInput(
    'IMAGE_UNREADABLE_BY_QEMU',
    `qemu cannot open ${path}${format ? ` as ${format}` : ''}: ${said}`,
    `check that it is a complete disk image in a format qemu reads (raw, qcow2, vmdk, vdi, vhdx); try: qemu-img info ${path}`,
  );
}

/**
 * qcow2 layers get a `qemu-img check`: it reads only metadata, and it is the
 * one test that also sees an L2 table cut off by truncation (qemu then reads
 * the table as zeros, every cluster looks unallocated, and the map below has
 * no offsets left to compare). Leaks (exit 3) are harmless for reading.
 */
async function checkLayersIntact(chain: ImageLayer[]): Promise<void> {
  for (const layer of chain) {
    if (layer.format !== 'qcow2') continue;
    let fileSize: number;
    try {
      fileSize = (await stat(layer.filename)).size;
    } catch {
      continue; // not a local file
    }
    const r = await checkImage(layer.filename, 'qcow2');
    if (r.code === 0 || r.code === 3) continue;
    const truncated = /exceeding the end of the file|beyond the end/i.test(r.stderr) || (r.imageEndOffset ?? 0) > fileSize;
    const firstError = r.stderr.split('\n').find((l) => /error/i.test(l)) ?? r.stderr.split('\n')[0] ?? '';
    if (truncated) {
      throw badInput(
        'IMAGE_TRUNCATED',
        `${layer.filename} is truncated: qemu-img check finds ${r.corruptions} reference(s) past the end of the ${fileSize}-byte file (${firstError.trim()})`,
        'the file is incomplete (an interrupted copy?); copy it again from its source, or salvage a copy with: qemu-img check -r all <copy>',
      );
    }
    throw badInput(
      'IMAGE_CORRUPT',
      `${layer.filename} is damaged: qemu-img check ${r.code === 1 ? 'could not check it' : `found ${r.corruptions} corruption(s)`} (${firstError.trim()})`,
      `inspect it with: qemu-img check ${layer.filename}; repair a copy with: qemu-img check -r all <copy>`,
    );
  }
}

/**
 * Formats whose map offsets point into the layer's own file, so data beyond
 * the file's end is proof of truncation. (A raw backing file shorter than the
 * disk is legal and reads as zeros; split vmdk extents live in other files.)
 */
function offsetsInOwnFile(layer: ImageLayer): boolean {
  // qcow2 is left to checkLayersIntact, which sees strictly more.
  if (['qed', 'vdi', 'vhdx', 'vpc', 'parallels', 'qcow'].includes(layer.format)) return true;
  if (layer.format === 'vmdk') {
    const t = layer['format-specific']?.data?.['create-type'];
    return t === 'monolithicSparse' || t === 'streamOptimized';
  }
  return false;
}

/**
 * qemu reads clusters that lie past the end of a truncated qcow2 as zeros and
 * reports them as zero in block status: a truncated image would back up
 * "successfully" with holes where data was. So before serving it, we walk
 * `qemu-img map` (metadata only, streamed) and check that every mapped range
 * of every layer lies inside that layer's file.
 */
async function checkNotTruncated(path: string, format: string, chain: ImageLayer[]): Promise<void> {
  const sizes: (number | undefined)[] = [];
  for (const layer of chain) {
    let size: number | undefined;
    if (offsetsInOwnFile(layer)) {
      try {
        size = (await stat(layer.filename)).size;
      } catch {
        size = undefined; // not a local file (e.g. an nbd: backing); nothing to compare against
      }
    }
    sizes.push(size);
  }
  if (sizes.every((s) => s === undefined)) return;
  try {
    for await (const m of mapImage(path, format)) {
      const fileSize = sizes[m.depth];
      if (!m.data || m.offset === undefined || fileSize === undefined) continue;
      if (m.offset + m.length > fileSize) {
        const layer = chain[m.depth] as ImageLayer;
        const first = Math.max(m.start, m.start + (fileSize - m.offset));
        throw badInput(
          'IMAGE_TRUNCATED',
          `${layer.filename} is truncated: disk bytes from offset ${first} are stored past the end of the file (it is ${fileSize} bytes, data reaches ${m.offset + m.length})`,
          `the file is incomplete (an interrupted copy?); copy it again from its source, or salvage a copy with: qemu-img check -r all <copy>`,
        );
      }
    }
  } catch (err) {
    if ((err as { code?: string }).code === 'IMAGE_TRUNCATED') throw err;
    throw badInput(
      'IMAGE_UNREADABLE_BY_QEMU',
      `qemu cannot map the extents of ${path}: ${(err as Error).message}`,
      `check the image with: qemu-img check ${path}`,
    );
  }
}

/**
 * A raw image read straight from its file.
 *
 * Where the data lies comes from `qemu-img map -f raw`, not from NBD: Node has
 * no lseek(SEEK_DATA/SEEK_HOLE), and qemu-img map is exactly that loop (qemu's
 * file-posix block status walks the file with SEEK_DATA/SEEK_HOLE). It needs
 * no server, no socket and no process that outlives the call, and its output
 * is streamed one extent per line, so memory stays bounded. Reads then use
 * positional fs reads on one fd: the kernel's page cache and readahead do the
 * rest, and nothing is buffered beyond the caller's request.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { RestorelabError } from '../errors.js';
import type { Extent, ImageSource } from './contract.js';
import { mapImage } from './qemu-img.js';

export class RawImageSource implements ImageSource {
  readonly format = 'raw';
  private closed = false;

  private constructor(
    readonly path: string,
    private readonly fh: FileHandle,
    readonly size: number,
  ) {}

  static async open(path: string): Promise<RawImageSource> {
    const fh = await open(path, 'r');
    const st = await fh.stat();
    return new RawImageSource(path, fh, st.size);
  }

  async *extents(): AsyncIterable<Extent> {
    let at = 0;
    let pending: Extent | undefined;
    try {
      for await (const m of mapImage(this.path, 'raw')) {
        if (m.start !== at) throw new Error(`qemu-img map skipped from ${at} to ${m.start}`);
        const length = Math.min(m.length, this.size - at);
        if (length <= 0) break;
        at += length;
        // qemu-img map already merges, but a layer change can repeat a state; merge so callers see maximal runs.
        if (pending && pending.zero === m.zero) pending.length += length;
        else {
          if (pending) yield pending;
          pending = { offset: m.start, length, zero: m.zero };
        }
      }
    } catch (err) {
      throw new RestorelabError('IMAGE_MAP_FAILED', `cannot list the allocated extents of ${this.path}: ${(err as Error).message}`, {
        hint: 'check that the file is readable and that qemu-img (qemu-utils) works',
        cause: err,
      });
    }
    if (pending) yield pending;
    // The file may grow while we look; never report less than its size at open.
    if (at < this.size) yield { offset: at, length: this.size - at, zero: false };
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const buf = Buffer.allocUnsafe(length);
    await this.readInto(buf, offset);
    return buf;
  }

  async readInto(buf: Buffer, offset: number): Promise<void> {
    const length = buf.length;
    if (offset < 0 || offset + length > this.size) {
      throw new RangeError(`read of ${length} bytes at ${offset} is outside ${this.path} (size ${this.size})`);
    }
    let done = 0;
    while (done < length) {
      const { bytesRead } = await this.fh.read(buf, done, length - done, offset + done);
      if (bytesRead === 0) {
        throw new RestorelabError(
          'IMAGE_SHRANK',
          `${this.path} ended at ${offset + done} while reading; it was ${this.size} bytes at open`,
          {
            hint: 'something truncated the image during the backup; back it up again when nothing writes to it',
          },
        );
      }
      done += bytesRead;
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.fh.close();
  }
}

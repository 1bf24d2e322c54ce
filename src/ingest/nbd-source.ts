/**
 * An image in any format qemu reads, served by a private qemu-nbd and read
 * with our NBD client. Holes come from the base:allocation context: a range
 * flagged NBD_STATE_ZERO reads as zeros and need not be read. A range flagged
 * only NBD_STATE_HOLE has undefined contents by the spec, so it is treated as
 * data (qemu always pairs HOLE with ZERO for what it can vouch for).
 */
import { RestorelabError } from '../errors.js';
import { NBD_STATE_ZERO } from '../nbd/constants.js';
import { NbdServerError } from '../nbd/errors.js';
import type { Extent, ImageSource } from './contract.js';
import { QemuNbd } from './qemu-nbd.js';
import type { NbdClient } from '../nbd/client.js';

/**
 * An ImageSource over an NBD export someone else serves: our own qemu-nbd
 * (QemuImageSource below) or a running VM's QEMU exporting a point-in-time
 * view of its disk (the live backup, src/backup/live/).
 */
export class NbdImageSource implements ImageSource {
  constructor(
    /** What the export is, for messages: an image path or "VM x, disk y". */
    readonly label: string,
    readonly format: string,
    readonly client: NbdClient,
    private readonly onClose: () => Promise<void>,
    private readonly hint = `the image is damaged or incomplete there; run: qemu-img check ${label}`,
  ) {}

  get size(): number {
    return this.client.size;
  }

  async *extents(): AsyncIterable<Extent> {
    let pending: Extent | undefined;
    try {
      for await (const e of this.client.extents('base:allocation')) {
        const zero = (e.flags & NBD_STATE_ZERO) !== 0;
        if (pending && pending.zero === zero) pending.length += e.length;
        else {
          if (pending) yield pending;
          pending = { offset: e.offset, length: e.length, zero };
        }
      }
    } catch (err) {
      throw this.wrap(err, 'listing allocated extents');
    }
    if (pending) yield pending;
  }

  async read(offset: number, length: number): Promise<Buffer> {
    try {
      return await this.client.read(offset, length);
    } catch (err) {
      throw this.wrap(err, `reading ${length} bytes at offset ${offset}`);
    }
  }

  async readInto(target: Buffer, offset: number): Promise<void> {
    try {
      await this.client.readInto(target, offset);
    } catch (err) {
      throw this.wrap(err, `reading ${target.length} bytes at offset ${offset}`);
    }
  }

  close(): Promise<void> {
    return this.onClose();
  }

  private wrap(err: unknown, what: string): unknown {
    if (err instanceof NbdServerError) {
      return new RestorelabError('IMAGE_READ_FAILED', `${what} of ${this.label} (${this.format}) failed: ${err.message}`, {
        hint: this.hint,
        cause: err,
      });
    }
    return err;
  }
}

/** An image in any format qemu reads, served by a private qemu-nbd. */
export class QemuImageSource extends NbdImageSource {
  private constructor(
    readonly path: string,
    format: string,
    private readonly server: QemuNbd,
  ) {
    super(path, format, server.client, () => server.stop());
  }

  static async open(path: string, format: string): Promise<QemuImageSource> {
    const server = await QemuNbd.start({ path, format });
    return new QemuImageSource(path, format, server);
  }

  /** The qemu-nbd process id, for tests and diagnostics. */
  get serverPid(): number | undefined {
    return this.server.pid;
  }
}

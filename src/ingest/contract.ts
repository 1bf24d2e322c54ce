/**
 * An image being backed up, as the backup engine sees it: a size, the extents
 * that hold data (holes and known-zero ranges need not be read), and random
 * reads. Raw files and everything qemu can open (through qemu-nbd and our NBD
 * client) both implement it.
 */
export interface Extent {
  offset: number;
  length: number;
  /** True when the range reads as zeros (a hole, or allocated-but-zero). */
  zero: boolean;
}

export interface ImageSource {
  /** Virtual size in bytes. */
  readonly size: number;
  /** Format as detected or given (raw, qcow2, vmdk, vdi, vhdx). */
  readonly format: string;
  /** Extents covering [0, size) in order, without gaps. */
  extents(): AsyncIterable<Extent>;
  /** Reads exactly `length` bytes at `offset` (within size) into a new buffer. */
  read(offset: number, length: number): Promise<Buffer>;
  /**
   * Fills `target` with the bytes at `offset`, when the source can do so
   * without an intermediate buffer (the backup engine reads into reused
   * shared memory this way).
   */
  readInto?(target: Buffer, offset: number): Promise<void>;
  /** Stops any helper process (qemu-nbd) and closes files. Idempotent. */
  close(): Promise<void>;
}

export interface OpenImageOptions {
  /** Skip format probing; required for raw images to be treated as raw safely. */
  format?: string;
}

/**
 * Reusable buffers for large network messages: the records of NFS WRITEs
 * (a 1 MiB WRITE is assembled from many socket chunks) and the data of NFS
 * and NBD READ replies.
 *
 * Why: a fresh 1 MiB ArrayBuffer per message counts against V8's external
 * memory budget (at a few hundred MiB/s that started a full garbage
 * collection every 50 ms), and a publisher keeps large allocations out of
 * glibc's heap (src/host/malloc.ts), so each one is also mapped, faulted in
 * page by page and unmapped: copying a chunk into a fresh buffer cost more
 * than decoding it. A buffer is given back once its message has gone to the
 * kernel: nothing may keep a view of it after that (a reused buffer would
 * change bytes under it).
 */
export class ReplyBufferPool {
  private readonly free: Buffer[] = [];
  private readonly lent = new WeakSet<ArrayBufferLike>();

  /** `size`: the largest record it serves; `keep`: free buffers kept between calls. */
  constructor(
    readonly size: number,
    private readonly keep: number,
  ) {}

  /** A buffer of exactly `n` bytes, or undefined when `n` is larger than the pool's buffers. */
  acquire(n: number): Buffer | undefined {
    if (n > this.size) return undefined;
    const b = this.free.pop() ?? Buffer.allocUnsafeSlow(this.size);
    this.lent.add(b.buffer);
    return b.subarray(0, n);
  }

  /** Takes back a buffer the pool lent (or a view of one); anything else is left to the garbage collector. */
  release(record: Buffer): void {
    if (!this.lent.has(record.buffer)) return;
    this.lent.delete(record.buffer);
    if (this.free.length < this.keep) this.free.push(Buffer.from(record.buffer, 0, this.size));
  }
}

/**
 * XDR (RFC 4506): big-endian 4-byte units, variable-length data padded to a
 * multiple of four. The reader is a bounds-checked cursor; every malformed
 * input ends in an XdrError, which the RPC dispatcher turns into GARBAGE_ARGS.
 */

export class XdrError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'XdrError';
  }
}

const pad = (n: number): number => (4 - (n & 3)) & 3;

export class XdrReader {
  private pos = 0;
  constructor(private readonly buf: Buffer) {}

  get offset(): number {
    return this.pos;
  }
  get remaining(): number {
    return this.buf.length - this.pos;
  }

  private need(n: number): void {
    if (n > this.buf.length - this.pos) throw new XdrError(`truncated: need ${n} bytes at ${this.pos}, have ${this.buf.length - this.pos}`);
  }

  u32(): number {
    this.need(4);
    const v = this.buf.readUInt32BE(this.pos);
    this.pos += 4;
    return v;
  }

  i32(): number {
    this.need(4);
    const v = this.buf.readInt32BE(this.pos);
    this.pos += 4;
    return v;
  }

  /** Unsigned hyper as a number; values past 2^53 are refused rather than rounded. */
  u64(): number {
    const v = this.u64Big();
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new XdrError(`hyper ${v} exceeds safe integer range`);
    return Number(v);
  }

  u64Big(): bigint {
    this.need(8);
    const v = this.buf.readBigUInt64BE(this.pos);
    this.pos += 8;
    return v;
  }

  bool(): boolean {
    const v = this.u32();
    if (v > 1) throw new XdrError(`bad bool ${v}`);
    return v === 1;
  }

  /** An enum: values outside `allowed` are rejected, never passed on. */
  enum<T extends number>(allowed: readonly T[]): T {
    const v = this.u32();
    if (!(allowed as readonly number[]).includes(v)) throw new XdrError(`bad enum value ${v}`);
    return v as T;
  }

  fixed(n: number): Buffer {
    this.need(n + pad(n));
    const v = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n + pad(n);
    return v;
  }

  opaque(max: number): Buffer {
    const n = this.u32();
    if (n > max) throw new XdrError(`opaque length ${n} exceeds ${max}`);
    return this.fixed(n);
  }

  string(max: number): string {
    return this.opaque(max).toString('utf8');
  }

  array<T>(max: number, item: (r: XdrReader) => T): T[] {
    const n = this.u32();
    if (n > max) throw new XdrError(`array length ${n} exceeds ${max}`);
    const out: T[] = [];
    for (let i = 0; i < n; i++) out.push(item(this));
    return out;
  }

  optional<T>(item: (r: XdrReader) => T): T | undefined {
    return this.bool() ? item(this) : undefined;
  }
}

/**
 * A growable writer that keeps large payloads (READ data) as references
 * instead of copying them, so a 1 MiB read is not copied twice.
 */
export class XdrWriter {
  private chunks: Buffer[] = [];
  private cur: Buffer;
  private used = 0;
  private flushed = 0;

  constructor(initial = 256) {
    this.cur = Buffer.allocUnsafe(initial);
  }

  get length(): number {
    return this.flushed + this.used;
  }

  private room(n: number): void {
    if (this.cur.length - this.used >= n) return;
    this.seal();
    this.cur = Buffer.allocUnsafe(Math.max(n, 4096));
  }

  private seal(): void {
    if (this.used > 0) {
      this.chunks.push(this.cur.subarray(0, this.used));
      this.flushed += this.used;
    }
    this.cur = Buffer.allocUnsafe(0);
    this.used = 0;
  }

  u32(v: number): this {
    if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new RangeError(`u32 out of range: ${v}`);
    this.room(4);
    this.cur.writeUInt32BE(v, this.used);
    this.used += 4;
    return this;
  }

  i32(v: number): this {
    this.room(4);
    this.cur.writeInt32BE(v, this.used);
    this.used += 4;
    return this;
  }

  u64(v: number | bigint): this {
    this.room(8);
    this.cur.writeBigUInt64BE(BigInt(v), this.used);
    this.used += 8;
    return this;
  }

  bool(v: boolean): this {
    return this.u32(v ? 1 : 0);
  }

  /** Fixed-length opaque; large buffers are referenced, not copied. */
  fixed(b: Buffer): this {
    const p = pad(b.length);
    if (b.length >= 4096) {
      this.seal();
      this.chunks.push(b);
      this.flushed += b.length;
    } else {
      this.room(b.length);
      b.copy(this.cur, this.used);
      this.used += b.length;
    }
    if (p) {
      this.room(p);
      this.cur.fill(0, this.used, this.used + p);
      this.used += p;
    }
    return this;
  }

  opaque(b: Buffer): this {
    this.u32(b.length);
    return this.fixed(b);
  }

  string(s: string): this {
    return this.opaque(Buffer.from(s, 'utf8'));
  }

  /** Drops everything written so far (used when a handler fails half way). */
  reset(): this {
    this.chunks = [];
    this.cur = Buffer.allocUnsafe(256);
    this.used = 0;
    this.flushed = 0;
    return this;
  }

  /** The encoded pieces, in order, without concatenating. */
  pieces(): Buffer[] {
    const out = this.chunks.slice();
    if (this.used > 0) out.push(this.cur.subarray(0, this.used));
    return out;
  }

  bytes(): Buffer {
    return Buffer.concat(this.pieces());
  }
}

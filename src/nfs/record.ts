/**
 * ONC RPC record marking over TCP (RFC 5531 section 11): each fragment is
 * preceded by a 4-byte header whose top bit marks the last fragment of a
 * record and whose low 31 bits give the fragment length. TCP may split or
 * merge fragments arbitrarily, so the framer buffers only what it needs.
 */

export class RecordTooLargeError extends Error {
  constructor(readonly length: number, readonly max: number) {
    super(`RPC record of ${length} bytes exceeds the ${max}-byte limit`);
    this.name = 'RecordTooLargeError';
  }
}

export class RecordFramer {
  private pending: Buffer[] = [];
  private pendingLen = 0;
  /** Fragments of the record being assembled. */
  private fragments: Buffer[] = [];
  private recordLen = 0;
  /** Length and last-flag of the fragment whose body we are waiting for, or -1 while reading a header. */
  private fragLen = -1;
  private fragLast = false;

  constructor(private readonly maxRecord: number) {}

  /** Bytes held for incomplete records: bounded by maxRecord plus one socket chunk. */
  get buffered(): number { return this.pendingLen + this.recordLen; }

  /** Feeds one TCP chunk; returns every record it completes. Throws RecordTooLargeError before allocating. */
  push(chunk: Buffer): Buffer[] {
    if (chunk.length) {
      this.pending.push(chunk);
      this.pendingLen += chunk.length;
    }
    const out: Buffer[] = [];
    for (;;) {
      if (this.fragLen < 0) {
        if (this.pendingLen < 4) break;
        const h = this.take(4).readUInt32BE(0);
        this.fragLast = (h & 0x80000000) !== 0;
        this.fragLen = h & 0x7fffffff;
        if (this.recordLen + this.fragLen > this.maxRecord) throw new RecordTooLargeError(this.recordLen + this.fragLen, this.maxRecord);
      }
      if (this.pendingLen < this.fragLen) break;
      const body = this.take(this.fragLen);
      this.fragLen = -1;
      this.fragments.push(body);
      this.recordLen += body.length;
      if (this.fragLast) {
        out.push(this.fragments.length === 1 ? this.fragments[0]! : Buffer.concat(this.fragments, this.recordLen));
        this.fragments = [];
        this.recordLen = 0;
      }
    }
    return out;
  }

  private take(n: number): Buffer {
    if (n === 0) return Buffer.alloc(0);
    const first = this.pending[0]!;
    let result: Buffer;
    if (first.length >= n) {
      result = first.subarray(0, n);
      if (first.length === n) this.pending.shift();
      else this.pending[0] = first.subarray(n);
    } else {
      result = Buffer.allocUnsafe(n);
      let off = 0;
      while (off < n) {
        const c = this.pending[0]!;
        const k = Math.min(c.length, n - off);
        c.copy(result, off, 0, k);
        off += k;
        if (k === c.length) this.pending.shift();
        else this.pending[0] = c.subarray(k);
      }
    }
    this.pendingLen -= n;
    return result;
  }
}

/** The record mark for a single-fragment record of `len` bytes. */
export function recordMark(len: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE((0x80000000 | len) >>> 0, 0);
  return b;
}

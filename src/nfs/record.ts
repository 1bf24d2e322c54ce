/**
 * ONC RPC record marking over TCP (RFC 5531 section 11): each fragment is
 * preceded by a 4-byte header whose top bit marks the last fragment of a
 * record and whose low 31 bits give the fragment length. TCP may split or
 * merge fragments arbitrarily, so the framer buffers only what it needs.
 */

/** The byte stream breaks the framing rules or a limit: nothing more can be read from it, so the connection closes. */
export class FramingError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'FramingError';
  }
}

export class RecordTooLargeError extends FramingError {
  constructor(
    readonly length: number,
    readonly max: number,
  ) {
    super(`RPC record of ${length} bytes exceeds the ${max}-byte limit`);
    this.name = 'RecordTooLargeError';
  }
}

/** More fragments in one record than the limit: each costs an object, so 1-byte fragments must not be free. */
export class TooManyFragmentsError extends FramingError {
  constructor(readonly max: number) {
    super(`RPC record has more than ${max} fragments`);
    this.name = 'TooManyFragmentsError';
  }
}

/**
 * A zero-length fragment that is not the last of its record. It carries
 * nothing and advances nothing, so a stream of them would be kept forever
 * (the size limit counts bytes); no client sends one.
 */
export class EmptyFragmentError extends FramingError {
  constructor() {
    super('RPC record has a zero-length fragment that is not its last');
    this.name = 'EmptyFragmentError';
  }
}

/** Default fragments per record (see WireLimits.maxFragmentsPerRecord in limits.ts). */
export const DEFAULT_MAX_FRAGMENTS = 1024;

// The pool moved to src/host (the NBD server uses it too); NFS keeps its name for it.
import { ReplyBufferPool as RecordBufferPool } from '../host/buffer-pool.js';
export { RecordBufferPool };

/** Records at least this large are assembled in pooled buffers (when the framer has a pool). */
export const POOLED_RECORD_MIN = 128 * 1024;

export class RecordFramer {
  private pending: Buffer[] = [];
  private pendingLen = 0;
  /** Fragments of the record being assembled. */
  private fragments: Buffer[] = [];
  private recordLen = 0;
  /** Length and last-flag of the fragment whose body we are waiting for, or -1 while reading a header. */
  private fragLen = -1;
  private fragLast = false;

  constructor(
    private readonly maxRecord: number,
    private readonly pool?: RecordBufferPool,
    private readonly maxFragments = DEFAULT_MAX_FRAGMENTS,
  ) {}

  /** Bytes held for incomplete records: bounded by maxRecord plus one socket chunk. */
  get buffered(): number {
    return this.pendingLen + this.recordLen;
  }

  /** True between the first byte of a record and its end: the sender owes us the rest. */
  get inRecord(): boolean {
    return this.pendingLen > 0 || this.fragLen >= 0 || this.fragments.length > 0;
  }

  /**
   * Feeds one TCP chunk; returns every record it completes. Throws a
   * FramingError (too large, too many fragments, an empty non-last fragment)
   * as soon as a header shows it, before allocating for it; the framer is
   * unusable afterwards.
   */
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
        if (this.fragLen === 0 && !this.fragLast) throw new EmptyFragmentError();
        if (this.fragments.length >= this.maxFragments) throw new TooManyFragmentsError(this.maxFragments);
      }
      if (this.pendingLen < this.fragLen) break;
      // Only a whole record may live in a pooled buffer: fragments are concatenated and dropped.
      const body = this.take(this.fragLen, this.fragLast && this.fragments.length === 0);
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

  private take(n: number, pooled = false): Buffer {
    if (n === 0) return Buffer.alloc(0);
    const first = this.pending[0]!;
    let result: Buffer;
    if (first.length >= n) {
      result = first.subarray(0, n);
      if (first.length === n) this.pending.shift();
      else this.pending[0] = first.subarray(n);
    } else {
      result = (pooled && n >= POOLED_RECORD_MIN ? this.pool?.acquire(n) : undefined) ?? Buffer.allocUnsafe(n);
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

/**
 * Cuts the transmission-phase byte stream from the server into replies,
 * whatever way TCP or the unix socket split it.
 *
 * Read data is not gathered into one buffer per chunk: it is handed on as the
 * socket delivers it (views of the socket's read buffer), so the client
 * copies every byte exactly once, into the caller's buffer. Everything
 * else (block status, errors, holes) is small and is delivered whole.
 */
import {
  NBD_MAX_SMALL_PAYLOAD,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_SIMPLE_REPLY_SIZE,
  NBD_STRUCTURED_REPLY_HEADER_SIZE,
  NBD_STRUCTURED_REPLY_MAGIC,
} from './constants.js';
import { NbdProtocolError } from './errors.js';
import { toSafeNumber } from './wire.js';

export type ReplyEvent =
  /** A simple reply header. When `payload` > 0, that many bytes follow as simple-data events, then simple-end. */
  | { kind: 'simple'; cookie: bigint; error: number; payload: number }
  | { kind: 'simple-data'; cookie: bigint; at: number; data: Buffer }
  | { kind: 'simple-end'; cookie: bigint }
  /** Part of an NBD_REPLY_TYPE_OFFSET_DATA chunk: bytes of the export starting at `offset`. */
  | { kind: 'chunk-data'; cookie: bigint; offset: number; data: Buffer }
  /** A whole structured chunk. For OFFSET_DATA the payload is empty (its data came as chunk-data events). */
  | { kind: 'chunk'; cookie: bigint; flags: number; type: number; payload: Buffer };

/** Bytes received but not yet consumed, kept as the socket's own buffers. */
export class ByteQueue {
  private bufs: Buffer[] = [];
  private head = 0; // consumed bytes of bufs[0]
  available = 0;

  push(b: Buffer): void {
    if (b.length === 0) return;
    this.bufs.push(b);
    this.available += b.length;
  }

  /** Exactly n bytes (n <= available), copied only when they span socket buffers. */
  take(n: number): Buffer {
    const first = this.bufs[0];
    if (first && first.length - this.head >= n) {
      const out = first.subarray(this.head, this.head + n);
      this.advance(n);
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const b = this.bufs[0] as Buffer;
      const k = Math.min(n - filled, b.length - this.head);
      b.copy(out, filled, this.head, this.head + k);
      filled += k;
      this.advance(k);
    }
    return out;
  }

  /** The next n bytes (n <= available) without consuming them. */
  peek(n: number): Buffer {
    const first = this.bufs[0];
    if (first && first.length - this.head >= n) return first.subarray(this.head, this.head + n);
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    for (let i = 0; filled < n; i++) {
      const b = this.bufs[i] as Buffer;
      const from = i === 0 ? this.head : 0;
      filled += b.copy(out, filled, from, Math.min(b.length, from + n - filled));
    }
    return out;
  }

  /** Up to n bytes from the first buffer, without copying. */
  takeSome(n: number): Buffer {
    const b = this.bufs[0] as Buffer;
    const k = Math.min(n, b.length - this.head);
    const out = b.subarray(this.head, this.head + k);
    this.advance(k);
    return out;
  }

  /**
   * Copies what is left into a buffer of its own, so that the caller may
   * overwrite the buffers it pushed (a socket that reads into one reused
   * buffer, `onread`). What is left is small: at most a partial header or
   * a small chunk's payload, since read data is consumed as it arrives.
   */
  detach(): void {
    if (this.available === 0) return;
    const own = this.take(this.available);
    const copy = Buffer.allocUnsafe(own.length);
    own.copy(copy);
    this.bufs = [copy];
    this.head = 0;
    this.available = copy.length;
  }

  /** Everything left, as one buffer. */
  drain(): Buffer {
    return this.take(this.available);
  }

  private advance(n: number): void {
    this.head += n;
    this.available -= n;
    const b = this.bufs[0];
    if (b && this.head === b.length) {
      this.bufs.shift();
      this.head = 0;
    }
  }
}

type State =
  | { s: 'header' }
  | { s: 'simple-payload'; cookie: bigint; at: number; left: number }
  | { s: 'data-offset'; cookie: bigint; flags: number; type: number; left: number }
  | { s: 'data-payload'; cookie: bigint; flags: number; type: number; offset: number; left: number }
  | { s: 'chunk-payload'; cookie: bigint; flags: number; type: number; length: number };

const EMPTY = Buffer.alloc(0);

export class ReplyFramer {
  private readonly q = new ByteQueue();
  private state: State = { s: 'header' };

  /**
   * @param simplePayload how many data bytes follow a simple reply for this
   *   cookie; a simple reply does not say, only the request does (a read's length).
   */
  constructor(
    private readonly emit: (e: ReplyEvent) => void,
    private readonly simplePayload: (cookie: bigint, error: number) => number,
  ) {}

  /** Feeds received bytes; throws NbdProtocolError on garbage (the connection must then be dropped). */
  push(b: Buffer): void {
    this.q.push(b);
    while (this.step()) {
      // keep cutting while whole pieces are available
    }
  }

  /**
   * push() of bytes that are valid only during this call (a reused read
   * buffer): every event is emitted before it returns, and what is left of an
   * incomplete reply is copied. Listeners must consume event data at once.
   */
  pushTransient(b: Buffer): void {
    this.push(b);
    this.q.detach();
  }

  /** True when no reply is half-received (used to tell a clean close from a cut one). */
  get idle(): boolean {
    return this.state.s === 'header' && this.q.available === 0;
  }

  private step(): boolean {
    const q = this.q;
    const st = this.state;
    switch (st.s) {
      case 'header': {
        if (q.available < 4) return false;
        const magic = q.peek(4).readUInt32BE(0);
        const size =
          magic === NBD_SIMPLE_REPLY_MAGIC
            ? NBD_SIMPLE_REPLY_SIZE
            : magic === NBD_STRUCTURED_REPLY_MAGIC
              ? NBD_STRUCTURED_REPLY_HEADER_SIZE
              : 0;
        if (size === 0) throw new NbdProtocolError(`reply magic 0x${magic.toString(16).padStart(8, '0')} is neither simple nor structured`);
        if (q.available < size) return false;
        const rest = q.take(size).subarray(4);
        if (magic === NBD_SIMPLE_REPLY_MAGIC) {
          const error = rest.readUInt32BE(0);
          const cookie = rest.readBigUInt64BE(4);
          const payload = this.simplePayload(cookie, error);
          this.emit({ kind: 'simple', cookie, error, payload });
          if (payload > 0) this.state = { s: 'simple-payload', cookie, at: 0, left: payload };
          return true;
        }
        const flags = rest.readUInt16BE(0);
        const type = rest.readUInt16BE(2);
        const cookie = rest.readBigUInt64BE(4);
        const length = rest.readUInt32BE(12);
        if (type === NBD_REPLY_TYPE_OFFSET_DATA) {
          if (length < 9) throw new NbdProtocolError(`OFFSET_DATA chunk of length ${length}, must be at least 9`);
          this.state = { s: 'data-offset', cookie, flags, type, left: length - 8 };
        } else {
          if (length > NBD_MAX_SMALL_PAYLOAD)
            throw new NbdProtocolError(`chunk type ${type} of ${length} bytes is larger than any we accept`);
          this.state = { s: 'chunk-payload', cookie, flags, type, length };
        }
        return true;
      }
      case 'simple-payload': {
        if (q.available === 0) return false;
        const data = q.takeSome(st.left);
        this.emit({ kind: 'simple-data', cookie: st.cookie, at: st.at, data });
        st.at += data.length;
        st.left -= data.length;
        if (st.left === 0) {
          this.state = { s: 'header' };
          this.emit({ kind: 'simple-end', cookie: st.cookie });
        }
        return true;
      }
      case 'data-offset': {
        if (q.available < 8) return false;
        const offset = toSafeNumber(q.take(8).readBigUInt64BE(0), 'data chunk offset');
        this.state = { s: 'data-payload', cookie: st.cookie, flags: st.flags, type: st.type, offset, left: st.left };
        return true;
      }
      case 'data-payload': {
        if (q.available === 0) return false;
        const data = q.takeSome(st.left);
        this.emit({ kind: 'chunk-data', cookie: st.cookie, offset: st.offset, data });
        st.offset += data.length;
        st.left -= data.length;
        if (st.left === 0) {
          this.state = { s: 'header' };
          this.emit({ kind: 'chunk', cookie: st.cookie, flags: st.flags, type: st.type, payload: EMPTY });
        }
        return true;
      }
      case 'chunk-payload': {
        if (q.available < st.length) return false;
        const payload = st.length === 0 ? EMPTY : q.take(st.length);
        this.state = { s: 'header' };
        this.emit({ kind: 'chunk', cookie: st.cookie, flags: st.flags, type: st.type, payload });
        return true;
      }
    }
  }
}

/**
 * The hostile-client budget of the NFS, MOUNT and portmapper listeners, in
 * one place (docs/nfs.md "Limits"). Every figure carries its unit in its
 * name. The server must survive any byte stream an allowed client (or a
 * stranger reaching the port) sends: each limit below bounds one way a
 * client could make us hold memory, a socket or a table entry.
 */
import { NFS_IO_MAX } from './nfs3/types.js';

const KiB = 1024;
const MiB = 1024 * KiB;

export interface WireLimits {
  /** Largest record accepted: a WRITE of wtmax plus headers. Larger closes the connection before allocating. */
  maxRecordBytes: number;
  /**
   * Fragments per record. Linux and libnfs send one; libtirpc flushes a
   * fragment per send buffer (a few KiB), so a 1 MiB record may legitimately
   * arrive in a few hundred. Each fragment costs a Buffer object, so 1-byte
   * fragments must not be free.
   */
  maxFragmentsPerRecord: number;
  /** Open connections across the NFS, MOUNT and portmapper listeners of one server. */
  maxConnections: number;
  /** Open connections from one client address (nconnect clients use up to 16). */
  maxConnectionsPerAddress: number;
  /** Calls running at once on one connection before reading from it pauses. */
  maxCallsInFlightPerConnection: number;
  /** Reply bytes queued for one connection before it stops running calls (backpressure). */
  maxPendingReplyBytesPerConnection: number;
  /**
   * Bytes of every connection's running calls (their record and the largest
   * reply one may produce) plus replies not yet taken by the client. A call
   * starts only when its share fits, so the total is a hard bound.
   */
  maxPendingBytesTotal: number;
  /** Bytes of half-received records across all connections; the connection that goes over is closed. */
  maxPartialRecordBytesTotal: number;
  /** A connection that sends nothing (and has nothing running or queued) for this long is closed. */
  idleTimeoutMs: number;
  /** A record begun must be complete within this long (while we are reading), or the connection is closed. */
  recordTimeoutMs: number;
  /** A connection whose queued replies make no progress for this long (it does not read) is closed. */
  slowReaderTimeoutMs: number;
  /** Entries in the MOUNT table (what DUMP lists); the oldest is dropped beyond it. */
  maxMountEntries: number;
}

/** EXCLUSIVE CREATE verifiers remembered (RFC 1813 3.3.8); the oldest is dropped beyond it. About 100 bytes each. */
export const MAX_EXCLUSIVE_CREATE_VERIFIERS = 4096;

/** Largest reply a call may produce: a READ or READDIR of rtmax plus headers and attributes. */
export const MAX_REPLY_BYTES = NFS_IO_MAX + 64 * KiB;

export const DEFAULT_WIRE_LIMITS: Readonly<WireLimits> = Object.freeze({
  maxRecordBytes: NFS_IO_MAX + 64 * KiB,
  maxFragmentsPerRecord: 1024,
  maxConnections: 128,
  maxConnectionsPerAddress: 16,
  maxCallsInFlightPerConnection: 32,
  maxPendingReplyBytesPerConnection: 8 * MiB,
  maxPendingBytesTotal: 256 * MiB,
  maxPartialRecordBytesTotal: 64 * MiB,
  // ESXi sends a NULL heartbeat every 12 s and Linux drops idle connections
  // after 5 minutes, so 15 minutes of silence means a client that is gone.
  idleTimeoutMs: 15 * 60_000,
  recordTimeoutMs: 30_000,
  slowReaderTimeoutMs: 60_000,
  maxMountEntries: 1024,
});

/** Fills in the defaults and refuses values that would disable a bound. */
export function wireLimits(over: Partial<WireLimits> = {}): WireLimits {
  const l: WireLimits = { ...DEFAULT_WIRE_LIMITS };
  for (const [k, v] of Object.entries(over) as [keyof WireLimits, number | undefined][]) {
    if (v === undefined) continue;
    if (!Number.isSafeInteger(v) || v < 1) throw new RangeError(`NFS limit ${k} must be a positive integer, got ${v}`);
    l[k] = v;
  }
  if (l.maxRecordBytes < 64 * KiB)
    throw new RangeError(`NFS limit maxRecordBytes must be at least ${64 * KiB} (a READ call), got ${l.maxRecordBytes}`);
  if (l.maxConnectionsPerAddress > l.maxConnections) l.maxConnectionsPerAddress = l.maxConnections;
  if (l.maxPartialRecordBytesTotal < l.maxRecordBytes) {
    throw new RangeError(
      `NFS limit maxPartialRecordBytesTotal must hold one record (${l.maxRecordBytes} bytes), got ${l.maxPartialRecordBytesTotal}`,
    );
  }
  if (l.maxPendingBytesTotal < l.maxRecordBytes + MAX_REPLY_BYTES) {
    throw new RangeError(
      `NFS limit maxPendingBytesTotal must hold one call (${l.maxRecordBytes + MAX_REPLY_BYTES} bytes), got ${l.maxPendingBytesTotal}`,
    );
  }
  return l;
}

/**
 * Datastore failures as the errno values NBD puts on the wire (proto.md,
 * Error values: only these are allowed, whatever the server's platform).
 */
import { DatastoreError } from '../datastore/types.js';

export const NBD_EPERM = 1;
export const NBD_EIO = 5;
export const NBD_ENOMEM = 12;
export const NBD_EINVAL = 22;
export const NBD_ENOSPC = 28;
export const NBD_EOVERFLOW = 75;
export const NBD_ENOTSUP = 95;
export const NBD_ESHUTDOWN = 108;

/** A read-only file refuses writes with EPERM (proto.md says so for a READ_ONLY export); a full overlay is ENOSPC; the rest is EIO. */
export function errnoOf(err: unknown): number {
  if (!(err instanceof DatastoreError)) return NBD_EIO;
  switch (err.code) {
    case 'EROFS':
    case 'EPERM':
    case 'EACCES':
      return NBD_EPERM;
    case 'ENOSPC':
      return NBD_ENOSPC;
    case 'EINVAL':
    case 'EFBIG':
      return NBD_EINVAL;
    case 'ENOTSUP':
      return NBD_ENOTSUP;
    default:
      return NBD_EIO;
  }
}

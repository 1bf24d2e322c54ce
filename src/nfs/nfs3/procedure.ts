import type { XdrReader, XdrWriter } from '../xdr.js';
import type { NfsCall } from './context.js';

/**
 * One NFSv3 procedure: decode its arguments, run it against the datastore
 * writing NFS3_OK and the resok body, or describe its resfail body.
 */
export interface NfsProcedure<A> {
  name: string;
  decode(r: XdrReader): A;
  run(call: NfsCall, args: A, out: XdrWriter): Promise<void>;
  /** Writes the body that follows a failure status (post_op_attr, wcc_data, ... or nothing). */
  fail?(call: NfsCall, args: A, out: XdrWriter): Promise<void>;
}

export const defineProc = <A>(p: NfsProcedure<A>): NfsProcedure<A> => p;

import { defineProc } from '../procedure.js';

/** NFSPROC3_NULL (RFC 1813 3.3.0). */
export const nullProc = defineProc<null>({
  name: 'NULL',
  decode: () => null,
  run: async () => {},
});

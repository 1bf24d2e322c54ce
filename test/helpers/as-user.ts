/**
 * Probes paths as another local user, in a child process (setpriv drops to
 * that user's uid, gid and supplementary groups): what a person logged in as
 * that user would get. Asynchronous, because the test process may be the one
 * serving a FUSE mount the child opens.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { which } from '../../src/host/exec.js';

const run = promisify(execFile);

/** `read` opens read-only and reads a byte, `write` opens read-write (no write), `list` reads a directory. */
export type ProbeOp = 'read' | 'write' | 'list';

export interface LocalUser {
  uid: number;
  gid: number;
  /** Supplementary groups; none when empty or absent. */
  groups?: number[];
}

/** nobody:nogroup on Debian, with no supplementary groups. */
export const NOBODY: LocalUser = { uid: 65534, gid: 65534 };

// Runs as the other user: one result per probe, 'ok' or the errno code.
const PROBE_SCRIPT = `
const fs = require('fs');
const out = [];
for (const [op, p] of JSON.parse(process.argv[1])) {
  try {
    if (op === 'list') fs.readdirSync(p);
    else {
      const fd = fs.openSync(p, op === 'read' ? 'r' : 'r+');
      if (op === 'read') fs.readSync(fd, Buffer.alloc(1), 0, 1, 0);
      fs.closeSync(fd);
    }
    out.push('ok');
  } catch (e) {
    out.push(e.code || String(e));
  }
}
process.stdout.write(JSON.stringify(out));
`;

/** Runs the probes as `user`; resolves to 'ok' or an errno code (EACCES, ...) per probe. */
export async function probeAs(user: LocalUser, probes: Array<[ProbeOp, string]>): Promise<string[]> {
  const setpriv = which('setpriv');
  if (!setpriv) throw new Error('setpriv is missing: install util-linux (apt-get install util-linux)');
  const groups = user.groups?.length ? [`--groups=${user.groups.join(',')}`] : ['--clear-groups'];
  const r = await run(
    setpriv,
    [`--reuid=${user.uid}`, `--regid=${user.gid}`, ...groups, process.execPath, '-e', PROBE_SCRIPT, JSON.stringify(probes)],
    {
      encoding: 'utf8',
      cwd: '/',
      timeout: 30_000,
    },
  );
  return JSON.parse(r.stdout) as string[];
}

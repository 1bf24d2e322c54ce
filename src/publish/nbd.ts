/**
 * A publication served over NBD: one export per disk (named after the disk,
 * its `<disk>.raw` in the publication's datastore, so the same overlay and
 * limit take the writes), on a unix socket and, when asked, on TCP.
 *
 * The socket is the access control (NBD has none of its own here): mode 0600
 * and owned by the publisher, so only the publisher's uid (root, on this
 * host, as is libvirt's QEMU: scripts/setup) may connect. With an access
 * group (fuse.group, --fuse-group: the same group that may use a FUSE mount,
 * for a hypervisor whose QEMU runs as another user) the socket is 0660 in
 * that group. By default the socket is `nbd.sock` in the publication's
 * record directory, inside the owner-only state directory; it moves to a
 * directory of its own under the temporary directory (0700, or 0710 in the
 * access group) when a group must reach it, or when the default path does
 * not fit a socket address (107 bytes). TCP has no access control at all:
 * loopback, or a network the operator trusts.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { RestorelabError } from '../errors.js';
import { resolveGroup } from '../host/groups.js';
import { ROOT_ID } from '../datastore/types.js';
import type { PublicationDatastore } from '../datastore/publication-datastore.js';
import type { NbdExport, NbdServer } from '../nbd-server/server.js';
import { formatNbdUrl } from '../nbd/url.js';

/** sun_path is 108 bytes with its terminating NUL. */
export const MAX_SOCKET_PATH_BYTES = 107;
/**
 * The server binds a temporary name beside the socket (`.nbd-` and 12 hex
 * digits) and renames it into place, so that name must fit too.
 */
const BIND_NAME_BYTES = 17;
/** The socket's name in the publication's record directory. */
export const NBD_SOCKET = 'nbd.sock';
/** Prefix of the private directory a socket moves to when the default path is too long. */
const SHORT_DIR_PREFIX = 'rl-nbd-';

export interface NbdServing {
  server: NbdServer;
  socket: string;
  /** Disk name → its URL (TCP when asked for, else the unix socket). */
  urls: Record<string, string>;
  /** Stops the server and removes the socket (and its private directory). */
  close(): Promise<void>;
}

export interface StartNbdOptions {
  datastore: PublicationDatastore;
  /** The publication's directory name in the datastore. */
  publication: string;
  disks: string[];
  readOnly: boolean;
  /** The publication's record directory: the default socket's home. */
  recordDir: string;
  socket?: string;
  tcp?: { host: string; port: number; allow?: string[] };
  /** Access group (name or gid) that may connect besides the publisher. */
  group?: string;
}

function fits(socket: string): boolean {
  const dir = Buffer.byteLength(path.dirname(socket)) + 1;
  return dir + Math.max(Buffer.byteLength(path.basename(socket)), BIND_NAME_BYTES) <= MAX_SOCKET_PATH_BYTES;
}

/** Where the socket goes: asked for, or the record directory's, or a short private one. */
function socketPlace(o: StartNbdOptions, shared: boolean): { socket: string; privateDir?: string } {
  if (o.socket !== undefined) {
    const socket = path.resolve(o.socket);
    if (!fits(socket)) {
      throw new RestorelabError(
        'NBD_SOCKET_PATH_TOO_LONG',
        `the NBD socket path ${socket} is too long: a unix socket path holds ${MAX_SOCKET_PATH_BYTES} bytes, and the server binds ${BIND_NAME_BYTES}-byte names in its directory`,
        { hint: 'choose a shorter path, or leave it out for the default' },
      );
    }
    return { socket };
  }
  const socket = path.join(o.recordDir, NBD_SOCKET);
  // The state directory is its owner's alone (src/host/private-files.ts): a group could not reach a socket in it.
  if (!shared && fits(socket)) return { socket };
  // mkdtemp's directory is 0700 and ours alone: no one can put a socket or a link there before us.
  const privateDir = fs.mkdtempSync(path.join(os.tmpdir(), SHORT_DIR_PREFIX));
  return { socket: path.join(privateDir, NBD_SOCKET), privateDir };
}

/** Removes a socket a dead publisher left (removePublication): the file, and its private directory. */
export function removeNbdSocket(socket: string): void {
  fs.rmSync(socket, { force: true });
  const dir = path.dirname(socket);
  if (path.basename(dir).startsWith(SHORT_DIR_PREFIX) && path.dirname(dir) === os.tmpdir()) {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

export async function startNbd(o: StartNbdOptions): Promise<NbdServing> {
  const gid = o.group !== undefined && o.group.trim() !== '' ? (await resolveGroup(o.group)).gid : undefined;
  const { socket, privateDir } = socketPlace(o, gid !== undefined);
  const dir = await o.datastore.lookup(ROOT_ID, o.publication);
  const exports: NbdExport[] = [];
  for (const disk of o.disks) {
    exports.push({
      name: disk,
      fileId: await o.datastore.lookup(dir, `${disk}.raw`),
      readOnly: o.readOnly,
      description: `${o.publication}/${disk}.raw`,
    });
  }
  // Loaded only when asked for, as the NFS server is.
  const { NbdServer } = await import('../nbd-server/server.js');
  const server = new NbdServer({ datastore: o.datastore, exports: () => exports, ...(o.tcp?.allow ? { allow: o.tcp.allow } : {}) });
  let tcpPort: number | undefined;
  let listening = false;
  try {
    await server.listenUnix(socket, { mode: 0o600 });
    listening = true;
    if (gid !== undefined) {
      // Group rights only once the group is the socket's: never a moment open to the publisher's own group.
      fs.chownSync(socket, -1, gid);
      fs.chmodSync(socket, 0o660);
      if (privateDir) {
        fs.chownSync(privateDir, -1, gid);
        fs.chmodSync(privateDir, 0o710);
      }
    }
    if (o.tcp) tcpPort = (await server.listenTcp(o.tcp.host, o.tcp.port)).port;
  } catch (err) {
    await server.close().catch(() => undefined);
    // Only a socket of ours goes: one refused as in use is someone else's.
    if (listening) fs.rmSync(socket, { force: true });
    if (privateDir) fs.rmSync(privateDir, { recursive: true, force: true });
    throw err;
  }
  const urls = Object.fromEntries(
    o.disks.map((d) => [
      d,
      formatNbdUrl({
        server: o.tcp && tcpPort !== undefined ? { type: 'inet', host: o.tcp.host, port: tcpPort } : { type: 'unix', path: socket },
        export: d,
      }),
    ]),
  );
  return {
    server,
    socket,
    urls,
    close: async () => {
      await server.close();
      removeNbdSocket(socket);
      if (privateDir) fs.rmSync(privateDir, { recursive: true, force: true });
    },
  };
}

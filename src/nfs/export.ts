/**
 * An NFS export of a datastore, as `publish --nfs` and `restorelab server`
 * run it: the NfsServer plus what makes it usable from outside — a server id
 * persisted in the state directory (file handles stay valid across restarts,
 * so a VM booted over NFS survives one), clear errors for busy ports, and the
 * `nfs://` URLs clients are given.
 */
import fs from 'node:fs';
import path from 'node:path';
import { writeFileAtomicSync } from '../host/atomic-file.js';
import { RestorelabError, badInput, isErrno } from '../errors.js';
import type { Datastore } from '../datastore/types.js';
import { NfsServer, newServerId, type BoundPorts, type NfsMetrics } from './server.js';
import { wireLimits, type WireLimits } from './limits.js';
import net from 'node:net';

export const EXPORT_PATH = '/restorelab';
/** The only portmapper port clients such as QEMU's libnfs ever ask. */
const STANDARD_PORTMAP_PORT = 111;

export interface NfsExportOptions {
  datastore: Datastore;
  stateDir: string;
  /** NFS port (default 2049); 0 picks a free one. */
  port?: number;
  /** MOUNT port (default 20048); 0 picks a free one. */
  mountPort?: number;
  /** Our portmapper's port, or null for none (then URLs carry the ports). */
  portmapPort?: number | null;
  allow?: string[];
  readOnly?: boolean;
  /**
   * Address(es) to listen on (default 127.0.0.1: only this host; a hypervisor
   * elsewhere needs its reachable address or 0.0.0.0) and the one put in URLs
   * (default: the first listen address, or 127.0.0.1 for a wildcard).
   */
  listen?: string | readonly string[];
  advertise?: string;
  /** Map AUTH_SYS uid/gid 0 to 65534 (default true; ESXi mounts as root and needs it off). */
  rootSquash?: boolean;
  /** Hostile-client budget (src/nfs/limits.ts); unset fields take the defaults. */
  limits?: Partial<WireLimits>;
  log?: { warn(msg: string, err?: unknown): void };
}

export interface NfsExport {
  host: string;
  port: number;
  mountPort: number;
  /** Port of the portmapper clients reach (ours or the system's), or null. */
  portmapPort: number | null;
  exportPath: string;
  /** `nfs://host/restorelab/<dir>/<file>`, usable by qemu-img, qemu -drive and libnfs tools. */
  url(...components: string[]): string;
  readonly metrics: NfsMetrics;
  stop(): Promise<void>;
}

/**
 * The server id lives in the state directory and is created once, so every
 * file handle given out stays valid across server restarts.
 */
export function loadServerId(stateDir: string): string {
  const file = path.join(stateDir, 'nfs', 'server-id');
  try {
    const id = fs.readFileSync(file, 'utf8').trim();
    if (/^[0-9a-f]{32}$/.test(id)) return id;
  } catch (err) {
    if (!isErrno(err, 'ENOENT')) throw err;
  }
  const id = newServerId();
  fs.mkdirSync(path.dirname(file), { recursive: true });
  writeFileAtomicSync(path.dirname(file), path.basename(file), id + '\n');
  return id;
}

/** The listen addresses, checked: a typo must not silently fall back to another interface. */
export function listenAddresses(listen: string | readonly string[] | undefined): string[] {
  const list = listen === undefined ? ['127.0.0.1'] : typeof listen === 'string' ? [listen] : [...listen];
  if (!list.length)
    throw badInput('NFS_BAD_LISTEN', 'no NFS listen address given', 'pass --nfs-listen ADDR (e.g. 127.0.0.1, or the address ESXi reaches)');
  for (const a of list) {
    if (!net.isIP(a))
      throw badInput(
        'NFS_BAD_LISTEN',
        `NFS listen address "${a}" is not an IP address`,
        'pass an IPv4 or IPv6 address such as 127.0.0.1, 192.0.2.10 or 0.0.0.0',
      );
  }
  return list;
}

export async function startNfsExport(opts: NfsExportOptions): Promise<NfsExport> {
  const listen = listenAddresses(opts.listen);
  let limits: NfsExportOptions['limits'];
  try {
    limits = wireLimits(opts.limits);
  } catch (e) {
    if (e instanceof RangeError) throw badInput('NFS_BAD_LIMIT', e.message, 'see docs/nfs.md "Limits" for each limit and its default');
    throw e;
  }
  const server = new NfsServer({
    datastore: opts.datastore,
    serverId: loadServerId(opts.stateDir),
    exportPath: EXPORT_PATH,
    allow: opts.allow ?? ['127.0.0.0/8'],
    readOnly: opts.readOnly ?? false,
    nfsPort: opts.port ?? 2049,
    mountPort: opts.mountPort ?? 20048,
    portmapPort: opts.portmapPort === undefined ? STANDARD_PORTMAP_PORT : opts.portmapPort,
    host: listen,
    rootSquash: opts.rootSquash ?? true,
    limits,
    ...(opts.log ? { log: opts.log } : {}),
  });
  let ports: BoundPorts;
  try {
    ports = await server.start();
  } catch (err) {
    if (isErrno(err, 'EADDRNOTAVAIL')) {
      throw badInput(
        'NFS_BAD_LISTEN',
        `cannot listen for NFS on ${listen.join(', ')}: no such address on this host`,
        'pass --nfs-listen with an address of this host (ip -br addr), or 0.0.0.0 for every interface',
      );
    }
    if (isErrno(err, 'EADDRINUSE') || isErrno(err, 'EACCES')) {
      const e = err as NodeJS.ErrnoException & { port?: number };
      throw new RestorelabError('NFS_PORT_UNAVAILABLE', `cannot listen for NFS: ${e.message}`, {
        hint: isErrno(err, 'EACCES')
          ? 'ports below 1024 need root: run as root or pass --nfs-port/--mount-port above 1024 and --portmap-port 0'
          : 'another NFS server (or restorelab) holds the port: stop it, or pass --nfs-port N (0 = any free port)',
      });
    }
    throw err;
  }
  const first = listen[0]!;
  const host = opts.advertise ?? (first === '0.0.0.0' || first === '::' ? '127.0.0.1' : first);
  const portmapPort = ports.portmap ?? (ports.registeredWithSystemPortmapper ? STANDARD_PORTMAP_PORT : null);
  // libnfs (and with it QEMU) finds nfsd and mountd only through a portmapper
  // on 111; anywhere else, the URL has to carry the ports itself.
  const query = portmapPort === STANDARD_PORTMAP_PORT ? '' : `?nfsport=${ports.nfs}&mountport=${ports.mount}`;
  return {
    host,
    port: ports.nfs,
    mountPort: ports.mount,
    portmapPort,
    exportPath: EXPORT_PATH,
    url: (...components) =>
      `nfs://${net.isIPv6(host) ? `[${host}]` : host}${EXPORT_PATH}/${components.map(encodeURIComponent).join('/')}${query}`,
    get metrics() {
      return server.metrics;
    },
    stop: () => server.stop(),
  };
}

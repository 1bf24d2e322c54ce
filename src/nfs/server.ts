/**
 * NfsServer: portmapper, MOUNT v3 and NFS v3 over one Datastore.
 *
 * Words used in src/nfs:
 * - record: one ONC RPC message, carried in one or more TCP fragments.
 * - program: an RPC program (portmapper 100000, MOUNT 100005, NFS 100003)
 *   with a table of procedures.
 * - export: the path clients mount (`/restorelab`), mapped to the datastore root.
 * - file handle: server id + stable file id; survives restarts.
 * - write verifier: random per start; a change tells clients to resend
 *   UNSTABLE writes that were never committed.
 */
import crypto from 'node:crypto';
import net from 'node:net';
import { allowListMatcher } from '../host/allow-list.js';
import type { Datastore } from '../datastore/types.js';
import { HandleCodec, SERVER_ID_BYTES } from './handle.js';
import { mountProgram, MOUNT_PROG, MOUNT_VERS } from './mount.js';
import { nfsProgram } from './nfs3/program.js';
import type { NfsCounters, NfsEnv } from './nfs3/context.js';
import { NFS_IO_MAX, NFS_PROG, NFS_VERS } from './nfs3/types.js';
import {
  IPPROTO_TCP,
  PMAP_PROG,
  PMAP_VERS,
  PortmapTable,
  isLoopback,
  pmapSet,
  pmapUnset,
  portmapProgram,
  portmapperListening,
  type PortMapping,
} from './portmap.js';
import { RpcDispatcher, type RpcProgram } from './rpc.js';
import { RpcListener, WireBudget, type TransportCounters } from './transport.js';
import { RecordBufferPool } from './record.js';
import { wireLimits, type WireLimits } from './limits.js';
import { MountTable } from './mount.js';

export interface NfsServerOptions {
  datastore: Datastore;
  /** 16 random bytes (or 32 hex chars) persisted by the caller in the state directory. */
  serverId: Buffer | string;
  exportPath?: string;
  /** Client CIDRs (or single addresses) allowed to mount and use the export. */
  allow?: string[];
  readOnly?: boolean;
  /** 0 = ephemeral. Default 2049. */
  nfsPort?: number;
  /** 0 = ephemeral. Default 20048. May equal nfsPort. */
  mountPort?: number;
  /**
   * Port for our own portmapper; null = none. When a portmapper already
   * answers on this port, we register with it instead of serving.
   * Default 111 when running as root, otherwise null.
   */
  portmapPort?: number | null;
  /**
   * Address(es) to listen on (default 127.0.0.1: only this host). A
   * hypervisor elsewhere (ESXi) needs the address it reaches us on, or 0.0.0.0.
   */
  host?: string | readonly string[];
  /** Map AUTH_SYS uid/gid 0 to 65534 (default true). ESXi mounts as root and needs it off. */
  rootSquash?: boolean;
  /** Hostile-client budget (limits.ts); unset fields take the defaults. */
  limits?: Partial<WireLimits>;
  log?: { warn(msg: string, err?: unknown): void };
}

export interface BoundPorts {
  nfs: number;
  mount: number;
  /** Our own portmapper's port, or null when we registered with a system one (or none). */
  portmap: number | null;
  registeredWithSystemPortmapper: boolean;
}

export interface NfsMetrics extends NfsCounters, TransportCounters {
  /** Connections open now, across the NFS, MOUNT and portmapper listeners. */
  openConnections: number;
  /** Bytes of running calls and queued replies (bounded by limits.maxPendingBytesTotal). */
  pendingBytes: number;
  /** Bytes of half-received records (bounded by limits.maxPartialRecordBytesTotal). */
  partialRecordBytes: number;
  mountEntries: number;
}

/** Generates a new server id for the state directory. */
export function newServerId(): string {
  return crypto.randomBytes(SERVER_ID_BYTES).toString('hex');
}

// Kept here too for the NFS code that imports it from the server.
export { allowListMatcher };

export class NfsServer {
  private readonly listeners: RpcListener[] = [];
  private readonly env: NfsEnv;
  /** READ replies of every connection; eight free 1 MiB buffers are kept between calls. */
  private readonly replyBuffers = new RecordBufferPool(NFS_IO_MAX, 8);
  private readonly programs: RpcProgram[];
  private registered: { host: string; port: number; maps: PortMapping[] } | undefined;
  private readonly opts: Required<Omit<NfsServerOptions, 'log' | 'limits' | 'host'>> &
    Pick<NfsServerOptions, 'log'> & { hosts: readonly string[] };
  private readonly limits: WireLimits;
  private readonly budget: WireBudget;
  private readonly isAllowed: (addr: string) => boolean;
  private readonly mounts: MountTable;

  constructor(opts: NfsServerOptions) {
    const serverId = typeof opts.serverId === 'string' ? Buffer.from(opts.serverId, 'hex') : opts.serverId;
    const { host, limits, ...rest } = opts;
    const hosts = host === undefined ? ['127.0.0.1'] : typeof host === 'string' ? [host] : [...host];
    if (!hosts.length) throw new RangeError('NfsServer needs at least one listen address');
    for (const h of hosts) if (!net.isIP(h)) throw new RangeError(`not a listen address: ${h}`);
    this.opts = {
      exportPath: '/restorelab',
      allow: ['127.0.0.1/32'],
      readOnly: false,
      nfsPort: 2049,
      mountPort: 20048,
      portmapPort: process.getuid?.() === 0 ? 111 : null,
      rootSquash: true,
      ...rest,
      serverId,
      hosts,
    };
    this.limits = wireLimits(limits);
    this.budget = new WireBudget(this.limits);
    const handles = new HandleCodec(serverId);
    const isAllowed = allowListMatcher(this.opts.allow);
    this.isAllowed = isAllowed;
    this.mounts = new MountTable(this.limits.maxMountEntries);
    this.env = {
      datastore: opts.datastore,
      handles,
      readOnly: this.opts.readOnly,
      rootSquash: this.opts.rootSquash,
      writeVerifier: crypto.randomBytes(8),
      cookieVerifier: serverId.subarray(0, 8),
      isAllowed,
      counters: { ops: 0, bytesRead: 0, bytesWritten: 0, errors: 0, byProc: {} },
      exclusiveCreates: new Map(),
      replyBuffers: this.replyBuffers,
    };
    this.programs = [
      nfsProgram(this.env, opts.log),
      mountProgram(
        {
          datastore: opts.datastore,
          handles,
          exportPath: this.opts.exportPath,
          isAllowed,
          allow: this.opts.allow,
          maxEntries: this.limits.maxMountEntries,
        },
        this.mounts,
      ),
    ];
  }

  get metrics(): NfsMetrics {
    const c = this.env.counters;
    const sum = (k: keyof TransportCounters): number => this.listeners.reduce((a, l) => a + l.counters[k], 0);
    return {
      ...c,
      byProc: { ...c.byProc },
      connections: sum('connections'),
      closedForAbuse: sum('closedForAbuse'),
      refusedNotAllowed: sum('refusedNotAllowed'),
      refusedOverCapacity: sum('refusedOverCapacity'),
      closedIdle: sum('closedIdle'),
      closedSlowReader: sum('closedSlowReader'),
      openConnections: this.budget.connections,
      pendingBytes: this.budget.pendingBytes,
      partialRecordBytes: this.budget.partialBytes,
      mountEntries: this.mounts.size,
    };
  }

  async start(): Promise<BoundPorts> {
    const transport = { hosts: this.opts.hosts, limits: this.limits, budget: this.budget, replyBuffers: this.replyBuffers };
    const pmTable = new PortmapTable();
    let usePmap = false;
    let systemPmap = false;
    const pmPort = this.opts.portmapPort;
    if (pmPort !== null) {
      systemPmap = await portmapperListening('127.0.0.1', pmPort);
      usePmap = !systemPmap;
    }
    const programs = usePmap ? [...this.programs, portmapProgram(pmTable)] : this.programs;
    const dispatcher = new RpcDispatcher(programs, { warn: (m, e) => this.opts.log?.warn(m, e) }, { rootSquash: this.opts.rootSquash });
    // Our portmapper also takes local services' SET/UNSET, so loopback may always reach it.
    const pmapAllowed = (a: string): boolean => this.isAllowed(a) || isLoopback(a);
    const open = async (port: number, isAllowed = this.isAllowed): Promise<number> => {
      const l = new RpcListener(dispatcher, { ...transport, port, isAllowed });
      const bound = await l.listen();
      this.listeners.push(l);
      return bound;
    };
    try {
      const nfs = await open(this.opts.nfsPort);
      const mount = this.opts.mountPort === this.opts.nfsPort && this.opts.nfsPort !== 0 ? nfs : await open(this.opts.mountPort);
      const portmap = usePmap && pmPort !== null ? await open(pmPort, pmapAllowed) : null;
      const maps: PortMapping[] = [
        { prog: PMAP_PROG, vers: PMAP_VERS, prot: IPPROTO_TCP, port: portmap ?? pmPort ?? 111 },
        { prog: MOUNT_PROG, vers: MOUNT_VERS, prot: IPPROTO_TCP, port: mount },
        { prog: NFS_PROG, vers: NFS_VERS, prot: IPPROTO_TCP, port: nfs },
      ];
      if (usePmap) for (const m of maps) pmTable.set(m);
      if (systemPmap && pmPort !== null) {
        const mine = maps.slice(1);
        for (const m of mine) {
          await pmapUnset('127.0.0.1', pmPort, m);
          if (!(await pmapSet('127.0.0.1', pmPort, m))) throw new Error(`system portmapper refused to register program ${m.prog}`);
        }
        this.registered = { host: '127.0.0.1', port: pmPort, maps: mine };
      }
      return { nfs, mount, portmap, registeredWithSystemPortmapper: systemPmap };
    } catch (e) {
      await this.stop();
      throw e;
    }
  }

  async stop(): Promise<void> {
    const reg = this.registered;
    this.registered = undefined;
    if (reg) for (const m of reg.maps) await pmapUnset(reg.host, reg.port, m).catch(() => false);
    const ls = this.listeners.splice(0);
    await Promise.all(ls.map((l) => l.close()));
  }
}

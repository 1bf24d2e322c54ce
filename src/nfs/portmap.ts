/**
 * Portmapper v2 (RFC 1833 section 3): program 100000. We either serve it
 * ourselves or, when a system rpcbind already owns port 111, register our
 * programs with it through PMAPPROC_SET/UNSET.
 */
import net from 'node:net';
import { RpcError, AcceptStat, type RpcProgram } from './rpc.js';
import { RecordFramer, recordMark } from './record.js';
import { XdrReader, XdrWriter } from './xdr.js';

export const PMAP_PROG = 100000;
export const PMAP_VERS = 2;
export const IPPROTO_TCP = 6;
export const IPPROTO_UDP = 17;
const enum PmapProc {
  NULL = 0,
  SET = 1,
  UNSET = 2,
  GETPORT = 3,
  DUMP = 4,
}

export interface PortMapping {
  prog: number;
  vers: number;
  prot: number;
  port: number;
}

const readMapping = (r: XdrReader): PortMapping => ({ prog: r.u32(), vers: r.u32(), prot: r.u32(), port: r.u32() });
export const isLoopback = (addr: string): boolean => addr === '::1' || addr.startsWith('127.');

export class PortmapTable {
  private readonly maps: PortMapping[] = [];

  set(m: PortMapping): boolean {
    if (this.maps.some((x) => x.prog === m.prog && x.vers === m.vers && x.prot === m.prot)) return false;
    this.maps.push(m);
    return true;
  }

  unset(prog: number, vers: number): boolean {
    const before = this.maps.length;
    for (let i = this.maps.length - 1; i >= 0; i--) {
      const m = this.maps[i]!;
      if (m.prog === prog && m.vers === vers) this.maps.splice(i, 1);
    }
    return this.maps.length !== before;
  }

  getport(prog: number, vers: number, prot: number): number {
    return this.maps.find((m) => m.prog === prog && m.vers === vers && m.prot === prot)?.port ?? 0;
  }

  list(): readonly PortMapping[] {
    return this.maps;
  }
}

export function portmapProgram(table: PortmapTable): RpcProgram {
  const procs = [];
  procs[PmapProc.NULL] = () => {};
  procs[PmapProc.SET] = (r: XdrReader, ctx: { remoteAddress: string }, w: XdrWriter) => {
    const m = readMapping(r);
    // Only local services may register: a remote SET would let anyone redirect clients.
    w.bool(isLoopback(ctx.remoteAddress) && table.set(m));
  };
  procs[PmapProc.UNSET] = (r: XdrReader, ctx: { remoteAddress: string }, w: XdrWriter) => {
    const m = readMapping(r);
    w.bool(isLoopback(ctx.remoteAddress) && table.unset(m.prog, m.vers));
  };
  procs[PmapProc.GETPORT] = (r: XdrReader, _ctx: unknown, w: XdrWriter) => {
    const m = readMapping(r);
    w.u32(table.getport(m.prog, m.vers, m.prot));
  };
  procs[PmapProc.DUMP] = (_r: XdrReader, _ctx: unknown, w: XdrWriter) => {
    for (const m of table.list()) w.bool(true).u32(m.prog).u32(m.vers).u32(m.prot).u32(m.port);
    w.bool(false);
  };
  // CALLIT (5) is deliberately absent: it is an amplification vector and no client we serve needs it.
  return { prog: PMAP_PROG, vers: PMAP_VERS, name: 'portmap', procs };
}

/** One RPC call to a portmapper over TCP; used to register with a system rpcbind. */
export async function pmapCall(host: string, port: number, proc: number, m: PortMapping, timeoutMs = 3000): Promise<XdrReader> {
  const xid = (Math.random() * 0xffffffff) >>> 0;
  const w = new XdrWriter()
    .u32(xid)
    .u32(0)
    .u32(2)
    .u32(PMAP_PROG)
    .u32(PMAP_VERS)
    .u32(proc)
    .u32(0)
    .u32(0)
    .u32(0)
    .u32(0)
    .u32(m.prog)
    .u32(m.vers)
    .u32(m.prot)
    .u32(m.port);
  const body = w.bytes();
  return await new Promise<XdrReader>((resolve, reject) => {
    const s = net.connect({ host, port });
    const framer = new RecordFramer(1 << 20);
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error('portmapper call timed out'));
    }, timeoutMs);
    s.on('connect', () => s.write(Buffer.concat([recordMark(body.length), body])));
    s.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    s.on('data', (c: Buffer) => {
      const recs = framer.push(c);
      if (!recs.length) return;
      clearTimeout(timer);
      s.destroy();
      const r = new XdrReader(recs[0]!);
      if (r.u32() !== xid || r.u32() !== 1 || r.u32() !== 0) return reject(new Error('portmapper denied the call'));
      r.u32();
      r.opaque(400);
      const stat = r.u32();
      if (stat !== 0) return reject(new RpcError(stat as AcceptStat, `portmapper answered accept_stat ${stat}`));
      resolve(r);
    });
  });
}

export async function pmapSet(host: string, port: number, m: PortMapping): Promise<boolean> {
  return (await pmapCall(host, port, PmapProc.SET, m)).bool();
}

export async function pmapUnset(host: string, port: number, m: PortMapping): Promise<boolean> {
  return (await pmapCall(host, port, PmapProc.UNSET, m)).bool();
}

export async function pmapGetport(host: string, port: number, m: PortMapping): Promise<number> {
  return (await pmapCall(host, port, PmapProc.GETPORT, m)).u32();
}

/** True when something answers portmapper NULL on host:port. */
export async function portmapperListening(host: string, port: number): Promise<boolean> {
  try {
    await pmapCall(host, port, PmapProc.NULL, { prog: 0, vers: 0, prot: 0, port: 0 }, 1000);
    return true;
  } catch {
    return false;
  }
}

/**
 * What a benchmark phase cost the test gateway of scripts/services: CPU seconds of radosgw and ceph-osd
 * (from /proc) and the requests it served for one key prefix, by method (from radosgw's log, which logs
 * every request at its default level 1). Both tools run against the same two daemons on the same cores,
 * so these say where the time went on the far side of the wire.
 */
import { closeSync, openSync, readFileSync, readSync, statSync } from 'node:fs';

/** /proc counts CPU time in USER_HZ ticks, 100 a second on every Linux ABI (getconf CLK_TCK). */
const USER_HZ = 100;

export interface GatewayDaemons {
  radosgw: { pid: number; log: string };
  osd: { pid: number };
}

export interface PhaseCost {
  cpuSeconds: number;
  /** Requests under the phase's prefix, by HTTP method (HEAD, PUT, GET, POST, DELETE). */
  requests: Record<string, number>;
}

/** The daemons in `scripts/services status --json`. */
export function daemonsOf(statusOut: string): GatewayDaemons {
  // The output may carry /usr/bin/time's report too (bench/timed.ts): the JSON is the line that opens with a brace.
  const statusJson = statusOut.split('\n').find((l) => l.startsWith('{')) ?? '{}';
  const s = JSON.parse(statusJson) as { daemons?: Record<string, { pid?: number; log?: string }> };
  if (!s.daemons) throw new Error(`scripts/services status --json printed no daemons: ${statusOut.slice(-2000)}`);
  const rgw = s.daemons.radosgw;
  const osd = s.daemons['ceph-osd'];
  if (!rgw?.pid || !rgw.log || !osd?.pid) throw new Error(`scripts/services status --json names no radosgw or ceph-osd: ${statusJson}`);
  return { radosgw: { pid: rgw.pid, log: rgw.log }, osd: { pid: osd.pid } };
}

/** utime + stime of a process, in seconds. */
function cpuOf(pid: number): number {
  // Fields after the parenthesised command name (which may hold spaces): utime and stime are the 12th and 13th.
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / USER_HZ;
}

/** Starts measuring; the returned function ends the phase and counts the requests whose key starts with `bucket/prefix`. */
export function startPhase(d: GatewayDaemons): (bucket: string, prefix: string) => PhaseCost {
  const cpu0 = cpuOf(d.radosgw.pid) + cpuOf(d.osd.pid);
  const from = statSync(d.radosgw.log).size;
  return (bucket, prefix) => {
    const cpuSeconds = cpuOf(d.radosgw.pid) + cpuOf(d.osd.pid) - cpu0;
    const to = statSync(d.radosgw.log).size;
    const buf = Buffer.alloc(to - from);
    const fd = openSync(d.radosgw.log, 'r');
    try {
      readSync(fd, buf, 0, buf.length, from);
    } finally {
      closeSync(fd);
    }
    const requests: Record<string, number> = {};
    // beast access lines: `"PUT /bucket/prefix/key?... HTTP/1.1" 200`
    const re = new RegExp(`"([A-Z]+) /${escape(bucket)}/${escape(prefix)}`, 'g');
    for (const m of buf.toString('utf8').matchAll(re)) requests[m[1] as string] = (requests[m[1] as string] ?? 0) + 1;
    // Listings name the prefix in the query string, not the path.
    const lists = buf.toString('utf8').split(`"GET /${bucket}/?list-type=2&prefix=${encodeURIComponent(prefix)}`).length - 1;
    if (lists > 0) requests.LIST = lists;
    return { cpuSeconds, requests };
  };
}

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

export function formatRequests(r: Record<string, number>): string {
  const total = Object.values(r).reduce((a, b) => a + b, 0);
  return `${total} (${Object.entries(r)
    .sort((a, b) => b[1] - a[1])
    .map(([m, n]) => `${m} ${n}`)
    .join(', ')})`;
}

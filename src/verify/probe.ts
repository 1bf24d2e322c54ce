/**
 * Network probes run *inside* the lab namespace: the runner spawns
 * `ip netns exec NS node probe.js '<json>'` and reads one JSON line. A child
 * process is the least fragile way to get a socket in another netns from Node
 * (setns() is per-thread and not exposed); nsenter would do the same.
 */
import { createSocket } from 'node:dgram';
import { connect } from 'node:net';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { buildQuery, parseAnswers, rcodeName, type DnsReply } from './dnswire.js';

export type Probe =
  | { kind: 'tcp'; host: string; port: number; banner?: string; timeoutMs: number }
  | { kind: 'http'; host: string; port: number; path: string; timeoutMs: number }
  | { kind: 'dns'; host: string; name: string; timeoutMs: number };
export interface ProbeAnswer {
  ok: boolean;
  detail: string;
  status?: number;
  body?: string;
  banner?: string;
  a?: string[];
  rcode?: string;
}

/**
 * What an HTTP/1.0 server sent before it closed: the status of its status
 * line (0, not an answer, when there is none) and the body after the header.
 * A reply whose header never ended has no body: text of the header must not
 * satisfy a body check.
 */
export function httpAnswer(data: string): ProbeAnswer {
  const status = Number(/^HTTP\/\d\.\d (\d{3})/.exec(data)?.[1] ?? 0);
  const end = data.indexOf('\r\n\r\n');
  return { ok: status > 0, status, body: end < 0 ? '' : data.slice(end + 4), detail: `HTTP ${status}` };
}

/** A DNS reply to our query: an answer only when NOERROR and complete (a truncated reply may lack records). */
export function dnsAnswer(r: DnsReply): ProbeAnswer {
  return {
    ok: r.rcode === 0 && !r.truncated,
    a: r.a,
    rcode: rcodeName(r.rcode),
    detail: `${rcodeName(r.rcode)}${r.truncated ? ' (truncated)' : ''}, A ${r.a.join(',') || 'none'}`,
  };
}

export async function probe(p: Probe): Promise<ProbeAnswer> {
  if (p.kind === 'dns') {
    return new Promise((resolve) => {
      const s = createSocket('udp4');
      const id = Math.floor(Math.random() * 65535);
      let last = '';
      const done = (a: ProbeAnswer): void => {
        clearTimeout(tm);
        s.close();
        resolve(a);
      };
      const tm = setTimeout(
        () => done({ ok: false, detail: `no DNS answer from ${p.host} in ${p.timeoutMs} ms${last ? ` (ignored: ${last})` : ''}` }),
        p.timeoutMs,
      );
      s.on('error', (e) => done({ ok: false, detail: `DNS query to ${p.host}: ${e.message}` }));
      s.on('message', (m, from) => {
        // Only the server's reply to this query counts; anything else is ignored, not a verdict.
        if (from.address !== p.host || from.port !== 53) {
          last = `a packet from ${from.address}:${from.port}`;
          return;
        }
        let r: DnsReply;
        try {
          r = parseAnswers(m, id);
        } catch (e) {
          last = (e as Error).message;
          return;
        }
        done(dnsAnswer(r));
      });
      let query: Buffer;
      try {
        query = buildQuery(id, p.name);
      } catch (e) {
        done({ ok: false, detail: (e as Error).message });
        return;
      }
      s.send(query, 53, p.host);
    });
  }
  return new Promise((resolve) => {
    const sock = connect({ host: p.host, port: p.port });
    let data = '';
    const done = (a: ProbeAnswer): void => {
      clearTimeout(tm);
      sock.destroy();
      resolve(a);
    };
    const tm = setTimeout(
      () =>
        done(
          p.kind === 'tcp' && !p.banner && data === '' && sock.readyState === 'open'
            ? { ok: true, detail: 'connected' }
            : { ok: false, detail: `timeout after ${p.timeoutMs} ms`, body: data },
        ),
      p.timeoutMs,
    );
    sock.on('error', (e) => done({ ok: false, detail: e.message }));
    sock.on('connect', () => {
      if (p.kind === 'http') sock.write(`GET ${p.path} HTTP/1.0\r\nHost: ${p.host}\r\n\r\n`);
      else if (!p.banner) done({ ok: true, detail: 'connected' });
    });
    sock.on('data', (d) => {
      data += d.toString('latin1');
      if (p.kind === 'tcp' && p.banner && data.includes('\n')) done({ ok: true, banner: data.split('\n')[0], detail: 'banner received' });
    });
    sock.on('end', () => {
      if (p.kind === 'http') done(httpAnswer(data));
      else done({ ok: data !== '', banner: data, detail: 'closed' });
    });
  });
}

// Stryker disable all: a child process inside a lab namespace (ip netns exec), which the mutation run's
// unit tests cannot create; test/verify/probe.test.ts runs it against real servers.
/** Runs a probe inside network namespace `netns`. */
export function probeInNetns(netns: string, p: Probe): Promise<ProbeAnswer> {
  const script = fileURLToPath(import.meta.url);
  return new Promise((resolve) => {
    const c = spawn('ip', ['netns', 'exec', netns, process.execPath, script, JSON.stringify(p)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    c.stdout.on('data', (d: Buffer) => (out += d.toString()));
    c.stderr.on('data', (d: Buffer) => (err += d.toString()));
    c.on('error', (e) => resolve({ ok: false, detail: `cannot run ip netns exec: ${e.message}` }));
    c.on('close', () => {
      try {
        resolve(JSON.parse(out) as ProbeAnswer);
      } catch {
        resolve({ ok: false, detail: `probe failed: ${err.trim() || out.trim()}` });
      }
    });
  });
}

if (process.argv[1] === fileURLToPath(import.meta.url) && process.argv[2]) {
  void probe(JSON.parse(process.argv[2]) as Probe).then((a) => process.stdout.write(JSON.stringify(a) + '\n'));
}

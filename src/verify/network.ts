/** tcp / http / dns / ping test kinds: probe answers judged into TestResults. */
import { execFile } from 'node:child_process';
import type { TestResult } from '../surebackup/runner.js';
import { probeInNetns } from './probe.js';

const result = (kind: string, t0: number, ok: boolean, detail: string): TestResult =>
  ({ name: kind, kind, result: ok ? 'passed' : 'failed', seconds: (Date.now() - t0) / 1000, detail });

export async function tcpTest(netns: string, ip: string, port: number, banner?: string, timeoutMs = 10_000): Promise<TestResult> {
  const t0 = Date.now();
  const a = await probeInNetns(netns, { kind: 'tcp', host: ip, port, banner, timeoutMs });
  const ok = a.ok && (banner === undefined || new RegExp(banner).test(a.banner ?? ''));
  return result('tcp', t0, ok, `${ip}:${port} ${a.detail}${a.banner ? ` banner=${JSON.stringify(a.banner.trim())}` : ''}`);
}

export async function httpTest(netns: string, ip: string, o: { port?: number; path?: string; status?: number; body?: string }, timeoutMs = 10_000): Promise<TestResult> {
  const t0 = Date.now();
  const want = o.status ?? 200;
  const a = await probeInNetns(netns, { kind: 'http', host: ip, port: o.port ?? 80, path: o.path ?? '/', timeoutMs });
  const statusOk = a.status === want;
  const bodyOk = o.body === undefined || (a.body ?? '').includes(o.body);
  const why = [statusOk ? '' : `expected status ${want}`, bodyOk ? '' : `body lacks ${JSON.stringify(o.body)}`].filter(Boolean).join('; ');
  return result('http', t0, statusOk && bodyOk, `${a.detail}${why ? `; ${why}` : ''}`);
}

/**
 * One A query for `name` to the server at `ip`, UDP 53 (src/verify/dnswire.ts).
 * Passes only on NOERROR with an A record: `expect` itself when given, any
 * otherwise. A failure says what came back (rcode, the A records or none).
 */
export async function dnsTest(netns: string, ip: string, name: string, expect?: string, timeoutMs = 5000): Promise<TestResult> {
  const t0 = Date.now();
  const a = await probeInNetns(netns, { kind: 'dns', host: ip, name, timeoutMs });
  const got = a.a ?? [];
  const ok = a.ok && (expect === undefined ? got.length > 0 : got.includes(expect));
  const wanted = expect === undefined ? 'an A record' : `A ${expect}`;
  return result('dns', t0, ok, `${name} → ${a.detail}${ok ? '' : `; expected ${wanted}`}`);
}

/** ICMP from inside the lab namespace. */
export function pingTest(netns: string, ip: string): Promise<TestResult> {
  const t0 = Date.now();
  return new Promise((resolve) => {
    execFile('ip', ['netns', 'exec', netns, 'ping', '-c', '3', '-W', '1', ip], (err, stdout) => {
      const summary = stdout.split('\n').find((l) => l.includes('packets transmitted')) ?? (err?.message ?? '');
      resolve(result('ping', t0, err === null, summary.trim()));
    });
  });
}

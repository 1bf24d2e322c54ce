/**
 * tcp / http / dns / ping test kinds: probe answers judged into TestResults.
 *
 * Each kind is a probe (I/O, src/verify/probe.ts) and a pure `judge*`
 * function that turns its answer into a verdict and a detail; the judges are
 * what the unit and mutation tests pin (docs/testing.md).
 */
import { execFile } from 'node:child_process';
import type { TestResult } from './contract.js';
import { probeInNetns, type ProbeAnswer } from './probe.js';

/** A verdict before it is timed: passed or not, and what a person reads. */
export interface Judged {
  ok: boolean;
  detail: string;
}

const result = (kind: string, t0: number, j: Judged): TestResult => ({
  name: kind,
  kind,
  result: j.ok ? 'passed' : 'failed',
  seconds: (Date.now() - t0) / 1000,
  detail: j.detail,
});

/** A TCP answer: connected, and when `banner` is given, the first line the service sent matches it. */
export function judgeTcp(a: ProbeAnswer, ip: string, port: number, banner?: string): Judged {
  const ok = a.ok && (banner === undefined || new RegExp(banner).test(a.banner ?? ''));
  return { ok, detail: `${ip}:${port} ${a.detail}${a.banner ? ` banner=${JSON.stringify(a.banner.trim())}` : ''}` };
}

/** An HTTP answer: exactly the expected status (default 200), and the body contains `body` when given. */
export function judgeHttp(a: ProbeAnswer, o: { status?: number; body?: string }): Judged {
  const want = o.status ?? 200;
  const statusOk = a.status === want;
  const bodyOk = o.body === undefined || (a.body ?? '').includes(o.body);
  const why = [statusOk ? '' : `expected status ${want}`, bodyOk ? '' : `body lacks ${JSON.stringify(o.body)}`].filter(Boolean).join('; ');
  return { ok: statusOk && bodyOk, detail: `${a.detail}${why ? `; ${why}` : ''}` };
}

/**
 * A DNS answer: NOERROR with an A record, `expect` itself when given, any
 * otherwise. A failure says what came back (rcode, the A records or none).
 */
export function judgeDns(a: ProbeAnswer, name: string, expect?: string): Judged {
  const got = a.a ?? [];
  const ok = a.ok && (expect === undefined ? got.length > 0 : got.includes(expect));
  const wanted = expect === undefined ? 'an A record' : `A ${expect}`;
  return { ok, detail: `${name} → ${a.detail}${ok ? '' : `; expected ${wanted}`}` };
}

/** ping(8)'s exit status and output: 0 means at least one echo reply came back. */
export function judgePing(exitOk: boolean, stdout: string, error = ''): Judged {
  const summary = stdout.split('\n').find((l) => l.includes('packets transmitted')) ?? error;
  return { ok: exitOk, detail: summary.trim() };
}

export async function tcpTest(netns: string, ip: string, port: number, banner?: string, timeoutMs = 10_000): Promise<TestResult> {
  const t0 = Date.now();
  const a = await probeInNetns(netns, { kind: 'tcp', host: ip, port, banner, timeoutMs });
  return result('tcp', t0, judgeTcp(a, ip, port, banner));
}

export async function httpTest(
  netns: string,
  ip: string,
  o: { port?: number; path?: string; status?: number; body?: string },
  timeoutMs = 10_000,
): Promise<TestResult> {
  const t0 = Date.now();
  const a = await probeInNetns(netns, { kind: 'http', host: ip, port: o.port ?? 80, path: o.path ?? '/', timeoutMs });
  return result('http', t0, judgeHttp(a, o));
}

/** One A query for `name` to the server at `ip`, UDP 53 (src/verify/dnswire.ts), judged by judgeDns. */
export async function dnsTest(netns: string, ip: string, name: string, expect?: string, timeoutMs = 5000): Promise<TestResult> {
  const t0 = Date.now();
  const a = await probeInNetns(netns, { kind: 'dns', host: ip, name, timeoutMs });
  return result('dns', t0, judgeDns(a, name, expect));
}

// Stryker disable all: ping inside a lab namespace; judged by judgePing above, run for real by test/verify/probe.test.ts.
/** ICMP from inside the lab namespace. */
export function pingTest(netns: string, ip: string): Promise<TestResult> {
  const t0 = Date.now();
  return new Promise((resolve) => {
    execFile('ip', ['netns', 'exec', netns, 'ping', '-c', '3', '-W', '1', ip], (err, stdout) => {
      resolve(result('ping', t0, judgePing(err === null, stdout, err?.message ?? '')));
    });
  });
}

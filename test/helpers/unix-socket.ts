/**
 * Whether a unix socket is accepting connections. The socket file appears at
 * bind(), before listen(), so a test that waits only for the file can connect
 * too early under load and get ECONNREFUSED. Connecting to probe is no good
 * either: a one-shot server (qemu-nbd without --persistent) would spend its
 * only connection. /proc/net/unix shows the listening flag without touching it.
 */
import { readFileSync } from 'node:fs';
import { connect } from 'node:net';

const SO_ACCEPTCON = 0x10000;

export function unixListening(path: string): boolean {
  for (const line of readFileSync('/proc/net/unix', 'utf8').split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length >= 8 && f[7] === path && (parseInt(f[3] as string, 16) & SO_ACCEPTCON) !== 0) return true;
  }
  return false;
}

/** Waits until `path` is a listening unix socket, or `give up` returns true, or `ms` pass. */
export async function waitListening(path: string, ms = 20_000, giveUp: () => boolean = () => false): Promise<void> {
  const end = Date.now() + ms;
  while (!unixListening(path)) {
    if (giveUp()) return;
    if (Date.now() > end) throw new Error(`${path} is not a listening socket after ${ms / 1000} s`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** One raw request to the unix socket at `path`, the raw answer back (until the server closes). */
export function rawRequest(path: string, data: Buffer | string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect(path);
    let out = '';
    s.on('connect', () => s.write(data));
    s.on('data', (d: Buffer) => {
      out += d.toString();
    });
    s.on('close', () => resolve(out));
    s.on('error', (e: NodeJS.ErrnoException) => (e.code === 'EPIPE' || e.code === 'ECONNRESET' ? resolve(out) : reject(e)));
  });
}

/**
 * NBD URLs, as the NBD project's URI specification (doc/uri.md) writes them
 * and as qemu-img, qemu-system-x86_64, libvirt's tools and nbdinfo take them:
 * `nbd+unix:///EXPORT?socket=PATH` for a unix socket, `nbd://HOST:PORT/EXPORT`
 * for TCP. A publication hands them out (src/publish/nbd.ts) and the
 * hypervisor drivers turn them back into a server address and an export name.
 */
import { badInput } from '../errors.js';

/** Where an NBD server listens. */
export type NbdAddress = { type: 'unix'; path: string } | { type: 'inet'; host: string; port: number };

export interface NbdTarget {
  server: NbdAddress;
  /** The export name ('' is the default export). */
  export: string;
}

/** The IANA port of NBD, meant when a URL names none. */
export const NBD_DEFAULT_PORT = 10809;

/**
 * Percent-encodes all but a path's plain characters. Query parameters are
 * decoded as forms are, so a '+' left as it is would come back a space.
 */
function encodePath(s: string): string {
  return s.replace(/[^A-Za-z0-9/._~-]/g, (c) =>
    [...Buffer.from(c, 'utf8')].map((b) => `%${b.toString(16).toUpperCase().padStart(2, '0')}`).join(''),
  );
}

export function formatNbdUrl(t: NbdTarget): string {
  const name = encodePath(t.export);
  if (t.server.type === 'unix') return `nbd+unix:///${name}?socket=${encodePath(t.server.path)}`;
  const host = t.server.host.includes(':') ? `[${t.server.host}]` : t.server.host;
  return `nbd://${host}:${t.server.port}/${name}`;
}

export function isNbdUrl(s: string): boolean {
  return s.startsWith('nbd://') || s.startsWith('nbd+unix://');
}

/** The server and export an `nbd://` or `nbd+unix://` URL names (only the forms formatNbdUrl writes, plus a default port). */
export function parseNbdUrl(s: string): NbdTarget {
  let url: URL;
  try {
    url = new URL(s);
  } catch {
    throw badInput('BAD_NBD_URL', `"${s}" is not an NBD URL`, 'e.g. nbd+unix:///root?socket=/run/x.sock or nbd://127.0.0.1:10809/root');
  }
  const name = decodeURIComponent(url.pathname.replace(/^\//, ''));
  if (url.protocol === 'nbd+unix:') {
    const socket = url.searchParams.get('socket');
    if (!socket || url.host !== '')
      throw badInput('BAD_NBD_URL', `"${s}" names no socket`, 'an nbd+unix URL is nbd+unix:///EXPORT?socket=/absolute/path');
    return { server: { type: 'unix', path: socket }, export: name };
  }
  if (url.protocol === 'nbd:' && url.hostname !== '') {
    const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
    return { server: { type: 'inet', host, port: url.port ? Number(url.port) : NBD_DEFAULT_PORT }, export: name };
  }
  throw badInput('BAD_NBD_URL', `"${s}" is not an NBD URL`, 'e.g. nbd+unix:///root?socket=/run/x.sock or nbd://127.0.0.1:10809/root');
}

/**
 * `HOST:PORT` (or `[IPV6]:PORT`) of a TCP listener, as `--tcp` takes it. The
 * port may be 0 (any free port; the URL then carries the one chosen).
 */
export function parseHostPort(s: string, flag = '--tcp'): { host: string; port: number } {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/.exec(s.trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) {
    throw badInput(
      'BAD_LISTEN_ADDRESS',
      `${flag} must be HOST:PORT (or [IPV6]:PORT) with a port 0-65535, got "${s}"`,
      `e.g. ${flag} 127.0.0.1:10809 (port 0 picks a free one)`,
    );
  }
  return { host: m[1] ?? m[2]!, port };
}

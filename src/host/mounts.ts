/**
 * The host's mount table, read from /proc/self/mountinfo: the one parser every
 * module uses (FUSE frontends, file-level restore, sessions, reconcile).
 *
 * mountinfo, not /proc/mounts: it names the device (major:minor, which FUSE
 * housekeeping needs) and its paths are escaped the same way in every field.
 * The kernel writes a space, tab, newline and backslash in a path as octal
 * escapes (\040, \011, \012, \134); they are decoded here, so callers compare
 * real paths.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';

export interface MountEntry {
  /** Where it is mounted, unescaped and absolute. */
  mountPoint: string;
  /** The filesystem type (ext4, tmpfs, fuse, fuse.restorelab, ...). */
  fstype: string;
  /** The mount source (a device, a file, or a name such as "tmpfs"), unescaped. */
  source: string;
  /** The mounted filesystem's device, `major:minor` (0:N for FUSE). */
  device: string;
  /** Whether its propagation is shared (an optional field `shared:N`): mounts and unmounts below it reach its peers. */
  shared: boolean;
}

export const MOUNTINFO = '/proc/self/mountinfo';

/** Decodes the octal escapes (\040 for a space) mountinfo writes in paths. */
export function unescapeMountField(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/**
 * Parses mountinfo text (proc(5)): `id parent major:minor root mountpoint
 * options [optional fields...] - fstype source superoptions`. The optional
 * fields vary in number, so the fields after them are found from the lone "-".
 * Lines that do not have that shape are skipped.
 */
export function parseMountinfo(text: string): MountEntry[] {
  const out: MountEntry[] = [];
  for (const line of text.split('\n')) {
    const parts = line.split(' ');
    const sep = parts.indexOf('-', 6);
    if (sep < 0 || !parts[4] || parts[sep + 1] === undefined) continue;
    out.push({
      mountPoint: unescapeMountField(parts[4]),
      fstype: parts[sep + 1] ?? '',
      source: unescapeMountField(parts[sep + 2] ?? ''),
      device: parts[2] ?? '',
      shared: parts.slice(6, sep).some((f) => f.startsWith('shared:')),
    });
  }
  return out;
}

/** Every mount of this process's mount namespace, in mount order (later ones stack on earlier ones). */
export function mountTable(file = MOUNTINFO): MountEntry[] {
  return parseMountinfo(readFileSync(file, 'utf8'));
}

/** The topmost mount at `dir` exactly, undefined when `dir` is not a mount point. */
export function mountEntry(dir: string, table: MountEntry[] = mountTable()): MountEntry | undefined {
  const target = path.resolve(dir);
  let found: MountEntry | undefined;
  for (const m of table) if (m.mountPoint === target) found = m;
  return found;
}

export function isMountPoint(dir: string): boolean {
  return mountEntry(dir) !== undefined;
}

/** The mounts at `root` or anywhere below it, in mount order. */
export function mountsUnder(root: string, table: MountEntry[] = mountTable()): MountEntry[] {
  const r = path.resolve(root);
  const prefix = r === '/' ? '/' : `${r}/`;
  return table.filter((m) => m.mountPoint === r || m.mountPoint.startsWith(prefix));
}

/**
 * Host groups by name or number, as the FUSE frontend needs them to report a
 * publication's group. getent asks NSS (files, LDAP, sssd) as every other
 * tool on the host does; /etc/group is read where getent is missing.
 */
import fs from 'node:fs';
import { badInput } from '../errors.js';
import { exec, which } from './exec.js';

export interface HostGroup {
  name: string;
  gid: number;
}

/** POSIX portable group names (useradd's rule), or a numeric gid. */
const GROUP_NAME = /^[A-Za-z_][A-Za-z0-9_.-]{0,31}$/;
const MAX_GID = 0xfffffffe; // (gid_t)-1 means "no change" to chown

function parseGroupLine(line: string): HostGroup | undefined {
  const [name, , gid] = line.split(':');
  const n = Number(gid);
  return name && gid !== undefined && /^\d+$/.test(gid) && n <= MAX_GID ? { name, gid: n } : undefined;
}

async function lookup(key: string, groupFile: string): Promise<HostGroup | undefined> {
  const getent = which('getent');
  if (getent) {
    const r = await exec(getent, ['group', key], { timeoutMs: 10_000 });
    if (r.code === 0) return parseGroupLine(r.stdout.split('\n')[0] ?? '');
    // getent exits 2 for "no such key"; anything else is NSS trouble worth a fallback.
    if (r.code === 2) return undefined;
  }
  let text: string;
  try {
    text = await fs.promises.readFile(groupFile, 'utf8');
  } catch {
    return undefined;
  }
  const byGid = /^\d+$/.test(key);
  return text
    .split('\n')
    .map(parseGroupLine)
    .find((g) => g && (byGid ? g.gid === Number(key) : g.name === key));
}

/**
 * Resolves `spec` (a group name or a numeric gid) to a group of this host.
 * A gid that names no group is still accepted: the kernel checks numbers, and
 * a container may share gids with its host without sharing /etc/group.
 */
export async function resolveGroup(spec: string, groupFile = '/etc/group'): Promise<HostGroup> {
  const s = spec.trim();
  if (/^\d+$/.test(s)) {
    const gid = Number(s);
    if (gid > MAX_GID) throw badInput('GROUP_UNKNOWN', `group id ${s} is out of range`, `give a gid from 0 to ${MAX_GID} or a group name`);
    return (await lookup(s, groupFile)) ?? { name: s, gid };
  }
  if (!GROUP_NAME.test(s))
    throw badInput('GROUP_UNKNOWN', `"${spec}" is not a group name`, 'give a group name (e.g. libvirt-qemu, kvm) or a numeric gid');
  const g = await lookup(s, groupFile);
  if (!g)
    throw badInput(
      'GROUP_UNKNOWN',
      `no group named ${s} on this host`,
      `create it (groupadd ${s}), or give an existing group or a numeric gid (getent group)`,
    );
  return g;
}

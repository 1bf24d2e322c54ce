/**
 * Who may use a FUSE mount: the access policy the frontend reports to the
 * kernel, which enforces it (`default_permissions`).
 *
 * Everything in the mount is reported as owned by the publishing user (this
 * process's uid). The *access group*, when one is configured, gets the
 * owner's rights and is reported as each file's group; nobody else gets any
 * rights. So a writable disk is 0600 (0660 with a group), a read-only one
 * 0400 (0440), directories 0700/0500 (0770/0550). A datastore's own modes
 * (0644 for a disk, a scratch file's chmod) contribute only their owner bits:
 * the datastore does not know who asks, so "others" must never mean anyone.
 *
 * `allow_other` is set only with an access group. Without it, the kernel
 * lets through only processes whose uids and gids all equal the mounter's:
 * the publishing process itself, and QEMU started by it or by a libvirt that
 * runs QEMU as the same user (scripts/setup: user = group = "root").
 */
import fs from 'node:fs';
import { RestorelabError } from '../errors.js';
import type { FileAttr } from '../datastore/types.js';
import { resolveGroup, type HostGroup } from '../host/groups.js';

export interface FuseAccess {
  /** The owner everything is reported with: the publishing user. */
  uid: number;
  /** The access group's gid, else the publishing user's gid. */
  gid: number;
  /** The group that shares the owner's rights, when one is configured. */
  group?: HostGroup;
}

/** The policy for a mount by this process, with `accessGroup` (a name or gid) when given. */
export async function fuseAccess(accessGroup?: string): Promise<FuseAccess> {
  const uid = process.getuid?.() ?? 0;
  const own = process.getgid?.() ?? 0;
  if (accessGroup === undefined || accessGroup.trim() === '') return { uid, gid: own };
  const group = await resolveGroup(accessGroup);
  if (uid !== 0) assertUserAllowOther();
  return { uid, gid: group.gid, group };
}

/**
 * A mount by a user other than root may only ask for allow_other when
 * /etc/fuse.conf says user_allow_other; fusermount would refuse it with a
 * bare "option allow_other only allowed if ..." on stderr.
 */
function assertUserAllowOther(conf = '/etc/fuse.conf'): void {
  let text = '';
  try {
    text = fs.readFileSync(conf, 'utf8');
  } catch {
    // no file: the option is off
  }
  if (!text.split('\n').some((l) => l.trim() === 'user_allow_other')) {
    throw new RestorelabError(
      'FUSE_ALLOW_OTHER_DISABLED',
      `a FUSE access group needs allow_other, which ${conf} does not allow for users other than root`,
      {
        hint: `add a line "user_allow_other" to ${conf}, or publish as root, or publish without an access group`,
      },
    );
  }
}

/** The FUSE mount options that carry the policy. */
export function accessMountOptions(access: FuseAccess): string[] {
  return ['default_permissions', ...(access.group ? ['allow_other'] : [])];
}

/** Ownership and permission bits (no file type, no setuid/setgid/sticky) the kernel sees for `a`. */
export function presentedOwnership(a: FileAttr, access: FuseAccess): { uid: number; gid: number; mode: number } {
  const owner = a.mode & 0o700;
  return { uid: access.uid, gid: access.gid, mode: owner | (access.group ? owner >> 3 : 0) };
}

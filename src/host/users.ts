/** Local users by name, through NSS (getent), for running a child as one. */
import { spawnSync } from 'node:child_process';
import { badInput, missingComponent } from '../errors.js';

export interface HostUser {
  name: string;
  uid: number;
  gid: number;
}

/** The user `name` (its uid and primary gid); bad input when the host has none by that name. */
export function lookupUser(name: string, configKey: string): HostUser {
  const r = spawnSync('getent', ['passwd', name], { encoding: 'utf8', timeout: 5000 });
  if (r.error) throw missingComponent('getent', 'install libc-bin (Debian: apt-get install libc-bin)');
  const fields = (r.stdout.split('\n')[0] ?? '').split(':');
  const uid = Number(fields[2]);
  const gid = Number(fields[3]);
  if (r.status !== 0 || !Number.isInteger(uid) || !Number.isInteger(gid) || fields[2] === '' || fields[3] === '') {
    throw badInput(
      'USER_UNKNOWN',
      `${configKey} names user "${name}", which this host does not have`,
      `set ${configKey} to an existing unprivileged user (the default is nobody)`,
    );
  }
  return { name, uid, gid };
}

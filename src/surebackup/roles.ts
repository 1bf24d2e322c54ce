/**
 * SureBackup words: a *job* verifies restore points of VMs in a *lab*; the
 * *application group* is the ordered set of VMs booted first so the VMs
 * *under test* find their dependencies (DNS, database). A *role* names what a
 * VM does and supplies default tests and timeouts (Veeam-like: max boot 600 s,
 * app init 120 s, 1800 s for heavyweight roles), overridable per VM.
 *
 * The `dns` role asks the server a real question: an A query for the name the
 * job configures (`dns: {name, expect}`) must come back with the expected
 * address. An open port 53 proves nothing about the zone behind it.
 */
import { badInput } from '../errors.js';
import type { DnsQuery, Role, TestSpec } from '../verify/contract.js';

const base: TestSpec[] = [{ kind: 'heartbeat' }, { kind: 'ping' }];
const tail: TestSpec[] = [{ kind: 'screenshot' }, { kind: 'integrity' }];
const role = (name: string, app: TestSpec[], heavy = false): Role => ({
  name,
  tests: [...base, ...app, ...tail],
  maxBootSeconds: heavy ? 1800 : 600,
  appInitSeconds: heavy ? 1800 : 120,
});

export const roles: Record<string, Role> = {
  // The query is the job's (see resolveRole): a role table cannot know a zone.
  dns: role('dns', [{ kind: 'dns', name: '', expect: '' }]),
  web: role('web', [
    { kind: 'tcp', port: 80 },
    { kind: 'http', port: 80, path: '/', status: 200 },
  ]),
  dc: role('dc', [{ kind: 'tcp', port: 389 }], true),
  'global-catalog': role('global-catalog', [{ kind: 'tcp', port: 3268 }], true),
  mail: role('mail', [{ kind: 'tcp', port: 25, banner: '^220' }]),
  mssql: role('mssql', [{ kind: 'tcp', port: 1433 }], true),
  postgresql: role('postgresql', [{ kind: 'tcp', port: 5432 }]),
  mysql: role('mysql', [{ kind: 'tcp', port: 3306 }]),
  ssh: role('ssh', [{ kind: 'tcp', port: 22, banner: '^SSH-' }]),
};

/**
 * Role defaults merged with per-VM overrides; a VM left with no tests, or a
 * `dns` role VM without the query to ask, is bad input before anything boots.
 */
export function resolveRole(vm: string, roleName: string | undefined, over: Partial<Role> & { dns?: DnsQuery }): Role {
  const r = roleName === undefined ? undefined : roles[roleName];
  let tests = over.tests ?? r?.tests ?? [];
  if (over.tests === undefined && roleName === 'dns') {
    if (!over.dns) {
      throw badInput(
        'DNS_QUERY_MISSING',
        `VM ${vm} has role "dns" but no DNS query to check`,
        'give the VM "dns": {"name": "<a name its zone holds>", "expect": "<its A record>"}, or its own "tests"',
      );
    }
    const q = over.dns;
    tests = tests.map((t) => (t.kind === 'dns' ? { kind: 'dns', name: q.name, expect: q.expect } : t));
  }
  const merged: Role = {
    name: roleName ?? 'custom',
    tests,
    maxBootSeconds: over.maxBootSeconds ?? r?.maxBootSeconds ?? 600,
    appInitSeconds: over.appInitSeconds ?? r?.appInitSeconds ?? 120,
  };
  if (merged.tests.length === 0) {
    const known = roleName === undefined ? 'no role' : r ? `role "${roleName}"` : `role "${roleName}", which is not a predefined role,`;
    throw badInput(
      'ROLE_WITHOUT_TESTS',
      `VM ${vm} has ${known} and no tests`,
      `give it "tests" or one of the predefined roles: ${Object.keys(roles).join(', ')}`,
    );
  }
  return merged;
}

/**
 * The one registry of lab subnets the tests use: each name owns
 * 172.18.<octet>.0/24, the masquerade subnet through which the host reaches a
 * lab's guests.
 *
 * Test files run side by side (scripts/test runs a pool of them at once, in
 * any order with `--shuffle`). Two labs that are up at the same time with one
 * masquerade subnet collide: the second lab's host route fails, or a request
 * reaches the other file's guest. A subnet written inline in two files is
 * safe only while those files happen never to overlap, so every test takes
 * its subnet from here, `checkRegistry` refuses an octet named twice when
 * this module loads, and test/suite/subnets.test.ts fails on any 172.18.x
 * literal in test/ outside this file.
 *
 * Names are `<dir>/<file>` of the test, with `:<label>` when a file has more
 * than one lab. `prod-lab` is lab-templates/labs/prod-lab.json's subnet: the
 * demo brings that lab up, and fake handles and records borrow its
 * addresses because no namespace of theirs ever carries them.
 *
 * RESERVED blocks belong to work on other branches: an entry inside one is
 * refused unless its name starts with `<block>:` (e.g. `live:verify/x`).
 */

/** The masquerade /16 every test lab's subnet is carved from. */
export const MASQUERADE_PREFIX = '172.18';

const SUBNETS = {
  'prod-lab': 77,
  'hypervisor/web-guest:a': 81,
  'hypervisor/web-guest:b': 82,
  'hypervisor/web-guest:l': 83,
  'lab/lab:a': 84,
  'lab/lab:b': 85,
  'lab/lab:cli': 86,
  'lab/lab-ipv6': 87,
  'lab/lab-vm': 88,
  'api/sessions': 90,
  'api/labs-jobs:template': 91,
  'api/labs-jobs:job': 92,
  'api/restart': 93,
  'session/orchestration:u5': 94,
  'api/dashboard-e2e': 95,
  'session/orchestration:u6': 96,
  'reconcile/server-start:session': 97,
  'reconcile/server-start:run': 98,
  'session/recover-qemu:cli': 101,
  'session/recover-qemu:lib': 102,
  'session/recover-libvirt': 103,
  'session/migrate': 104,
  'session/recover-qemu:stop': 105,
  'session/recover-evidence:panic': 106,
  'nfs/qemu:qemu': 107,
  'nfs/qemu:libvirt': 108,
  'session/recover-evidence:second': 109,
  'session/orchestration:u1': 110,
  'session/orchestration:u2': 111,
  'session/orchestration:u3': 112,
  'api/host-limits': 113,
  'session/recover-nbd:qemu': 114,
  'session/recover-nbd:libvirt': 115,
  'session/recover-uefi:qemu': 116,
  'session/recover-uefi:libvirt': 117,
  'session/recover-nbd:publisher': 118,
  'surebackup/app-group': 121,
  'surebackup/failures': 122,
  'surebackup/cancel-integrity': 123,
  'surebackup/cli': 124,
  'surebackup/console': 125,
  'nfs/qemu:owned': 126,
  'surebackup/verdicts': 127,
  'api/cli-remote-recover': 131,
  'session/recover-encrypted:surebackup': 132,
  'session/recover-encrypted:recover': 133,
  'session/recover-s3': 134,
  'scheduler/after-backup-vm': 141,
  'bringup/one-path': 199,
  'scan:scan/gate:refused': 160,
  'scan:scan/gate:quarantine': 161,
  'scan:scan/gate:surebackup': 162,
  'scan:scan/gate:api': 163,
  'mutation:fake-vm': 170,
  'real:surebackup/group-failure': 180,
  'workers/workers:run': 190,
  'workers/workers:lease': 191,
  'workers/workers:run-pool': 192,
  'workers/workers:api': 193,
  'workers/recover': 194,
  'reconcile/lab-stragglers': 195,
  'workers/recover:pool': 196,
} as const satisfies Record<string, number>;

/** Blocks handed to other branches (inclusive), wired by name at merge. */
export const RESERVED: Readonly<Record<string, readonly [number, number]>> = {
  live: [150, 154],
  jobs: [155, 159],
  scan: [160, 164],
  signals: [165, 169],
  mutation: [170, 174],
  real: [180, 189],
};

export type SubnetName = keyof typeof SUBNETS;

/** Refuses an octet named twice, an octet that is no /24 of the prefix, and an entry in a block it does not own. */
export function checkRegistry(
  entries: Readonly<Record<string, number>>,
  reserved: Readonly<Record<string, readonly [number, number]>>,
): void {
  const owner = new Map<number, string>();
  for (const [name, octet] of Object.entries(entries)) {
    if (!Number.isInteger(octet) || octet < 0 || octet > 255)
      throw new Error(`test subnet ${name}: ${octet} is no octet of ${MASQUERADE_PREFIX}.x.0/24`);
    const taken = owner.get(octet);
    if (taken !== undefined)
      throw new Error(`test subnet ${MASQUERADE_PREFIX}.${octet}.0/24 is named twice: ${taken} and ${name}; give one a free octet`);
    owner.set(octet, name);
    for (const [block, [lo, hi]] of Object.entries(reserved)) {
      if (octet >= lo && octet <= hi && !name.startsWith(`${block}:`)) {
        throw new Error(
          `test subnet ${name}: ${octet} is in the block ${lo}-${hi} reserved for ${block}; name it ${block}:… or pick another octet`,
        );
      }
    }
  }
}

checkRegistry(SUBNETS, RESERVED);

/** Every registered name and its octet (the suite test reads them). */
export function registeredSubnets(): Readonly<Record<SubnetName, number>> {
  return SUBNETS;
}

/** `172.18.<octet>.0/24` of `name`: a lab network's masquerade subnet. */
export function subnet(name: SubnetName): string {
  return `${MASQUERADE_PREFIX}.${SUBNETS[name]}.0/24`;
}

/** The host address `172.18.<octet>.<host>` of `name` (default .10: where 192.168.77.10 appears). */
export function address(name: SubnetName, host = 10): string {
  return `${MASQUERADE_PREFIX}.${SUBNETS[name]}.${host}`;
}

/**
 * The example templates validate against their schemas and agree with each
 * other (a VM definition carries the IP and MAC its guest disk has baked in),
 * and bad templates are rejected with the failing path.
 */
import t from 'tap';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { projectPath } from '../../src/paths.js';
import { assertValid, loadValidated } from '../../src/schema/validate.js';
import { loadVmDefinition } from '../../src/vm/definition.js';
import { loadLab } from '../../src/lab/lab.js';
import { GUESTS } from '../helpers/guests.js';

const templates = projectPath('lab-templates');
const jsonIn = (sub: string): string[] =>
  readdirSync(join(templates, sub))
    .filter((f) => f.endsWith('.json'))
    .sort();

t.test('every guest variant validates and has a matching VM definition', async (t) => {
  const names = jsonIn('guests').map((f) => f.slice(0, -5));
  t.same(
    names,
    ['broken-app', 'crash-loop', 'damaged', 'db', 'dns', 'no-agent', 'no-boot', 'vga-panic', 'web'],
    'the nine documented variants',
  );
  const macs = new Set<string>();
  for (const name of names) {
    const g = loadValidated<{ name: string; ip: string; mac: string; agent: boolean }>(
      'guest.schema.json',
      join(templates, 'guests', `${name}.json`),
      'guest',
    );
    t.equal(g.name, name, `${name}: the file name is the variant name`);
    t.equal(Number(g.ip.split('.')[3]), parseInt(g.mac.split(':')[5] ?? '', 16), `${name}: the MAC's last octet matches the IP`);
    macs.add(g.mac);
    const vm = loadVmDefinition(join(templates, 'vms', `${name}.json`));
    t.equal(vm.nics[0]?.ip, g.ip, `${name}: VM definition has the baked-in IP`);
    t.equal(vm.nics[0]?.mac, g.mac, `${name}: VM definition has the MAC`);
    t.equal(vm.nics[0]?.network, 'prod');
    t.equal(vm.disks[0]?.image, projectPath('var', 'guests', `${name}.raw`), `${name}: the disk is the built image`);
    // A verification judges the heartbeat by what the definition promises: it must match the disk.
    t.equal(vm.agent ?? true, g.agent, `${name}: the VM definition expects an agent exactly when the guest has one`);
  }
  t.equal(macs.size, names.length, 'MACs are unique');
  t.equal(GUESTS.web?.ip, '192.168.77.10');
  t.equal(loadVmDefinition(join(templates, 'vms', 'db.json')).role, 'postgresql');
  t.equal(loadVmDefinition(join(templates, 'vms', 'dns.json')).role, 'dns');
});

t.test('the example lab mirrors prod and the example group validates', async (t) => {
  const lab = loadLab(join(templates, 'labs', 'prod-lab.json'));
  t.equal(lab.networks[0]?.name, 'prod');
  t.equal(lab.networks[0]?.subnet, '192.168.77.0/24');
  t.equal(lab.networks[0]?.gateway, '192.168.77.1');
  const group = loadValidated<{ vms: { name: string }[] }>('group.schema.json', join(templates, 'groups', 'example.json'), 'group');
  t.same(
    group.vms.map((v) => v.name),
    ['dns', 'db'],
    'dns boots before db',
  );
  for (const v of group.vms) t.ok(GUESTS[v.name], `${v.name} is a test guest`);
});

t.test('bad templates are rejected with the failing path', async (t) => {
  const good = { ...GUESTS.web };
  t.throws(() => assertValid('guest.schema.json', { ...good, ip: '192.168.77.300' }, 'g'), /\/ip: must match format "ipv4"/);
  t.throws(
    () => assertValid('guest.schema.json', { ...good, boot: 'maybe' }, 'g'),
    /\/boot: must be one of "ok", "kernel-panic", "kernel-panic-vga"/,
  );
  t.throws(
    () =>
      assertValid('guest.schema.json', { ...good, services: [{ kind: 'ftp', protocol: 'tcp', port: 21, starts: true, expect: 'x' }] }, 'g'),
    /\/services\/0\/kind: must be one of/,
  );
  t.throws(() => assertValid('guest.schema.json', { ...good, colour: 'red' }, 'g'), /unknown property "colour"/);
  t.throws(() => assertValid('guest.schema.json', { ...good, crashLoop: "it's\nbroken" }, 'g'), /\/crashLoop: must match pattern/);
  t.throws(() => assertValid('guest.schema.json', { ...good, damage: 'kernel' }, 'g'), /\/damage: must be one of "dynamic-loader"/);
  t.throws(
    () => assertValid('vm.schema.json', { name: 'v', memoryMiB: 256, vcpus: 1, disks: [{ name: 'root' }], nics: [], agent: 'no' }, 'v'),
    /\/agent: must be boolean/,
  );
  t.throws(() => assertValid('group.schema.json', { name: 'g', vms: [] }, 'g'), /\/vms: must NOT have fewer than 1 items/);
  t.throws(
    () => assertValid('group.schema.json', { name: 'g', vms: [{ name: 'db', tests: [{ kind: 'tcp' }] }] }, 'g'),
    /\/vms\/0\/tests\/0: must have required property 'port'/,
  );
});

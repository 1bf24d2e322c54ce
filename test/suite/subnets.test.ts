/**
 * The subnet registry (test/helpers/subnets.ts) is the only place a test lab
 * subnet is written: its check refuses a duplicate or a squatted reserved
 * block, and no test source spells a 172.18.x address of its own.
 */
import t from 'tap';
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { projectPath } from '../../src/paths.js';
import { MASQUERADE_PREFIX, RESERVED, address, checkRegistry, registeredSubnets, subnet } from '../helpers/subnets.js';

const REGISTRY = join('test', 'helpers', 'subnets.ts');

/** Every .ts source under `dir`, relative to the project root. */
function sources(dir: string): string[] {
  return readdirSync(projectPath(dir), { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile() && e.name.endsWith('.ts'))
    .map((e) => relative(projectPath(), join(e.parentPath, e.name)))
    .sort();
}

t.test('the check refuses an octet named twice, a squatted reserved block and a non-octet', async (t) => {
  t.throws(() => checkRegistry({ 'a/one': 90, 'b/two': 90 }, {}), {
    message: `test subnet ${MASQUERADE_PREFIX}.90.0/24 is named twice: a/one and b/two; give one a free octet`,
  });
  t.throws(() => checkRegistry({ 'a/one': 152 }, { live: [150, 154] }), /152 is in the block 150-154 reserved for live/);
  t.doesNotThrow(() => checkRegistry({ 'live:verify/x': 152 }, { live: [150, 154] }), 'the block owner may use it');
  t.throws(() => checkRegistry({ 'a/one': 256 }, {}), /256 is no octet/);
  t.throws(() => checkRegistry({ 'a/one': 1.5 }, {}), /1\.5 is no octet/);
  t.doesNotThrow(() => checkRegistry({ 'a/one': 90, 'b/two': 91 }, RESERVED));
});

t.test('the registry itself passes its check, and the blocks of other work are free', async (t) => {
  const all = registeredSubnets();
  t.doesNotThrow(() => checkRegistry(all, RESERVED));
  const octets = Object.values(all);
  t.equal(new Set(octets).size, octets.length, 'one name per octet');
  for (const [block, [lo, hi]] of Object.entries(RESERVED)) {
    t.same(
      Object.entries(all).filter(([n, o]) => o >= lo && o <= hi && !n.startsWith(`${block}:`)),
      [],
      `${block} ${lo}-${hi} is free for it`,
    );
  }
  t.equal(subnet('lab/lab:a'), `${MASQUERADE_PREFIX}.84.0/24`);
  t.equal(address('lab/lab:a'), `${MASQUERADE_PREFIX}.84.10`);
  t.equal(address('prod-lab', 11), `${MASQUERADE_PREFIX}.77.11`);
});

t.test('no test source writes a 172.18.x address outside the registry', async (t) => {
  const files = sources('test').filter((f) => f !== REGISTRY);
  t.ok(files.length > 100, `${files.length} sources scanned`);
  // The literal, and its escaped form inside a regular expression.
  const literal = /172(\.|\\\.)18(\.|\\\.)\d/;
  const hits: string[] = [];
  for (const f of files) {
    readFileSync(projectPath(f), 'utf8')
      .split('\n')
      .forEach((line, i) => {
        if (literal.test(line)) hits.push(`${f}:${i + 1}: ${line.trim()}`);
      });
  }
  t.same(hits, [], 'take the subnet from test/helpers/subnets.ts (add a name there) instead');
  // Built from the prefix, or the scan would find this line.
  const escaped = MASQUERADE_PREFIX.replace('.', '\\.');
  t.ok(
    literal.test(`masquerade: '${MASQUERADE_PREFIX}.90.0/24'`) && literal.test(`/${escaped}\\.7[78]\\.0/`),
    'the scan would see a literal and a regex',
  );
});

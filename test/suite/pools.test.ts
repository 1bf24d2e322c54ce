/**
 * test/pools.json places every test file in exactly one pool, and the file
 * that binds the fixed NFS ports runs alone (test/helpers/pools.ts).
 */
import t from 'tap';
import { readFileSync } from 'node:fs';
import { projectPath } from '../../src/paths.js';
import { loadPools, poolProblems, testFiles, type Pools } from '../helpers/pools.js';

const pools = loadPools();
const files = testFiles();

t.test('every test file is in exactly one pool, every pool in one stage', async (t) => {
  t.ok(files.length > 100, `${files.length} test files found`);
  t.ok(files.includes('suite/pools'), 'this file among them');
  t.same(poolProblems(pools, files), []);
  t.same(Object.keys(pools.pools).sort(), ['exclusive', 'host', 'services', 'vm']);
  t.equal(pools.pools.vm!.jobs, 2, 'two TCG guests at a time on two cores');
});

t.test('the check names each mistake', async (t) => {
  const p: Pools = {
    stages: [['a'], ['b', ['ghost', 'a']]],
    pools: {
      a: { jobs: 1, why: '', files: ['x/one', 'x/two'] },
      b: { jobs: 0, why: '', files: ['x/two', 'x/gone'] },
      c: { jobs: 2, why: '', files: [], setup: ' ', env: { lower: 'x' } },
    },
  };
  t.same(poolProblems(p, ['x/one', 'x/two', 'x/new']), [
    'pool b: jobs must be a whole number ≥ 1, not 0',
    'x/two is in two pools: a and b',
    'pool b lists x/gone, but test/x/gone.test.ts does not exist',
    'pool c: setup must be a shell command (a non-empty string)',
    'pool c: env lower must be an upper-case name with a string value',
    'test/x/new.test.ts is in no pool: add it to test/pools.json (host, unless it boots a VM or binds a fixed port)',
    'pool a must be in exactly one stage',
    'pool c must be in exactly one stage',
    'stage names an unknown pool ghost',
  ]);
});

t.test('a file that binds the NFS ports 111/2049 runs alone: one job, a stage of its own', async (t) => {
  const fixedPorts = /portmapPort: 111\b|\bport: 2049\b/;
  const binders = files.filter((f) => f !== 'suite/pools' && fixedPorts.test(readFileSync(projectPath('test', `${f}.test.ts`), 'utf8')));
  t.same(binders, ['nfs/qemu'], 'the binders found by their source');
  for (const f of binders) {
    const [name, pool] = Object.entries(pools.pools).find(([, p]) => p.files.includes(f))!;
    t.equal(pool.jobs, 1, `${f}: its pool runs one file at a time`);
    t.same(pool.files, [f], `${f}: nothing else in its pool`);
    t.same(
      pools.stages.find((s) => s.flat().includes(name)),
      [name],
      `${f}: no other pool beside it`,
    );
  }
});

t.test('the services pool starts its own services and purges them, never the ones a developer keeps up', async (t) => {
  const p = pools.pools.services!;
  t.equal(p.setup, 'scripts/services up');
  t.equal(p.teardown, 'scripts/services down --purge');
  t.equal(p.env?.RESTORELAB_SERVICES_DIR, '{root}/var/test-services', 'not the default var/services');
  // The defaults of scripts/services: a test run beside running services must not collide with them.
  const defaults: Record<string, string> = { RESTORELAB_S3_PORT: '7480', RESTORELAB_PG_PORT: '54329', RESTORELAB_CEPH_MON_PORT: '3300' };
  for (const [k, v] of Object.entries(defaults)) t.ok(p.env?.[k] && p.env[k] !== v, `${k} is set, and not the default ${v}`);
});

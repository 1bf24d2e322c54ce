/**
 * Test pools (test/pools.json): which test files may run side by side, and
 * how many at once. scripts/test runs them; test/suite/pools.test.ts checks
 * that every test file is in exactly one pool.
 *
 * - `host`: boots no VM (processes, namespaces, FUSE, loop devices,
 *   sockets). Mostly waiting on the kernel and child processes, so several
 *   at once.
 * - `vm`: boots QEMU guests under TCG, which each take a core: two at once.
 * - `exclusive`: binds fixed host resources (the NFS ports 111/2049): alone,
 *   before anything else runs.
 * - `services`: needs the Ceph RADOS Gateway (S3) or PostgreSQL that
 *   `scripts/services` runs (test/helpers/services.ts).
 *
 * A pool may carry `setup` and `teardown` shell commands (run from the
 * checkout before its files and after them, whatever their verdicts; a
 * failed setup fails the pool without running its files) and an `env` its
 * files and commands see (`{root}` in a value is the checkout's path). The
 * `services` pool uses them to start its own services, in var/test-services
 * on ports of their own, and to purge them afterwards, so a test run never
 * touches the services a developer keeps up in var/services.
 *
 * `stages` run one after the other; the entries of one stage run at the same
 * time, each pool with its own `jobs`. An entry is a pool, or a lane: a list
 * of pools run one after the other (`["host", "services"]`: services starts
 * when host is done), beside the stage's other entries.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { join, relative } from 'node:path';
import { projectPath } from '../../src/paths.js';

export interface Pool {
  jobs: number;
  why: string;
  files: string[];
  /** Shell command run from the checkout before the pool's files. */
  setup?: string;
  /** Shell command run after the pool's files, whatever their verdicts. */
  teardown?: string;
  /** Environment for the files and the commands; `{root}` is the checkout's path. */
  env?: Record<string, string>;
}
export interface Pools {
  /** Each stage's entries: a pool name, or a lane of pool names run in order. */
  stages: (string | string[])[][];
  pools: Record<string, Pool>;
}

export const POOLS_FILE = projectPath('test', 'pools.json');

export function loadPools(file = POOLS_FILE): Pools {
  return JSON.parse(readFileSync(file, 'utf8')) as Pools;
}

/** Every test file under test/, by its pool name: `<dir>/<file>` without `.test.ts`. */
export function testFiles(root = projectPath('test')): string[] {
  return readdirSync(root, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile() && e.name.endsWith('.test.ts'))
    .map((e) => relative(root, join(e.parentPath, e.name)).slice(0, -'.test.ts'.length))
    .sort();
}

/** The compiled file tap runs for a pool entry. */
export function compiled(name: string): string {
  return join('dist', 'test', `${name}.test.js`);
}

/** What is wrong with `p` against the test files on disk; empty when nothing is. */
export function poolProblems(p: Pools, files: readonly string[]): string[] {
  const out: string[] = [];
  const seen = new Map<string, string>();
  for (const [name, pool] of Object.entries(p.pools)) {
    if (!Number.isInteger(pool.jobs) || pool.jobs < 1) out.push(`pool ${name}: jobs must be a whole number ≥ 1, not ${pool.jobs}`);
    for (const k of ['setup', 'teardown'] as const)
      if (pool[k] !== undefined && (typeof pool[k] !== 'string' || pool[k].trim() === ''))
        out.push(`pool ${name}: ${k} must be a shell command (a non-empty string)`);
    for (const [k, v] of Object.entries(pool.env ?? {}))
      if (!/^[A-Z_][A-Z0-9_]*$/.test(k) || typeof v !== 'string')
        out.push(`pool ${name}: env ${k} must be an upper-case name with a string value`);
    for (const f of pool.files) {
      const other = seen.get(f);
      if (other !== undefined) out.push(`${f} is in two pools: ${other} and ${name}`);
      seen.set(f, name);
      if (!files.includes(f)) out.push(`pool ${name} lists ${f}, but test/${f}.test.ts does not exist`);
    }
  }
  for (const f of files)
    if (!seen.has(f))
      out.push(`test/${f}.test.ts is in no pool: add it to test/pools.json (host, unless it boots a VM or binds a fixed port)`);
  const staged = p.stages.flat(2);
  for (const name of Object.keys(p.pools))
    if (staged.filter((s) => s === name).length !== 1) out.push(`pool ${name} must be in exactly one stage`);
  for (const s of staged) if (!(s in p.pools)) out.push(`stage names an unknown pool ${s}`);
  return out;
}

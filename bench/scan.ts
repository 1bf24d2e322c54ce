/**
 * Scan benchmark (issue 17), each figure against a peer measured in the same run:
 * 1. the first scan of a restore point with `restorelab scan` (publication,
 *    read-only mounts, SHA-256 of every file, yara over every file, catalog)
 *    vs plain `yara -r` over a loop mount of the same point restored to a raw
 *    file (the restore itself not counted for the peer). Target <= 1.2x.
 * 2. the tenth nightly point of the VM, 3% of its files changed since the
 *    ninth (points 2..9 scanned as a nightly job would), vs plain `yara -r`
 *    over the tenth point restored. Target <= 0.2x.
 *
 * The data disk: an MBR disk with one ext4 partition holding `--files` files
 * (1 KiB..256 KiB; half random bytes, half text), the rule set `--rules`
 * generated rules of four strings each (a mid-sized real-world set has
 * hundreds to thousands). Page caches are dropped before each timed scan.
 *
 * Run (root): node dist/bench/scan.js [--files 2000] [--rules 300] [--size-mib 512] [--first-only] [--mount] [--cpu-prof-dir DIR] [--keep]
 * (--cpu-prof-dir: a V8 CPU profile of the tenth scan's CLI process; --mount: scan through
 * kernel mounts, as before the in-process ext reader, for a before/after figure; --keep: leave the
 * repository and rules in /tmp for profiling single scans by hand.)
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { availableParallelism, loadavg } from 'node:os';
import { exec } from '../src/host/exec.js';
import { projectPath } from '../src/paths.js';
import { initRepository } from '../src/repo/repository.js';
import { backupVm } from '../src/backup/engine.js';
import { restoreDisk } from '../src/backup/restore.js';
import type { RestorePoint } from '../src/repo/contract.js';

const arg = (name: string, dflt: number): number => {
  const i = process.argv.indexOf(name);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
};
const FILES = arg('--files', 2000);
const RULES = arg('--rules', 300);
const SIZE_MIB = arg('--size-mib', 512);
const CHANGED = 0.03;
const MOUNT = process.argv.includes('--mount');
const POINTS = 10;
const START_SECTOR = 2048;

const dir = mkdtempSync('/tmp/rlbench-scan-');
const state = join(dir, 'state');
const image = join(dir, 'data.raw');

function sh(cmd: string, args: string[], input?: string): string {
  return execFileSync(cmd, args, { encoding: 'utf8', ...(input !== undefined ? { input } : {}) });
}

function withPartition<T>(file: string, readOnly: boolean, use: (root: string) => T): T {
  const dev = sh('losetup', [
    '--find',
    '--show',
    ...(readOnly ? ['--read-only'] : []),
    '--offset',
    String(START_SECTOR * 512),
    file,
  ]).trim();
  const mnt = mkdtempSync(join(dir, 'mnt-'));
  try {
    sh('mount', ['-t', 'ext4', '-o', readOnly ? 'ro,noload' : 'rw', dev, mnt]);
    try {
      return use(mnt);
    } finally {
      sh('umount', [mnt]);
    }
  } finally {
    sh('losetup', ['-d', dev]);
    rmSync(mnt, { recursive: true, force: true });
  }
}

const WORDS = ['invoice', 'report', 'config', 'backup', 'customer', 'order', 'server', 'payload', 'session', 'archive'];
function fileContent(i: number, gen: number): Buffer {
  const size = 1024 + Math.floor(Math.random() * 255 * 1024);
  if (i % 2 === 0) return randomBytes(size);
  const line = `${gen} ${i} ${WORDS.map((w) => `${w}-${Math.floor(Math.random() * 1e6)}`).join(' ')}\n`;
  return Buffer.from(line.repeat(Math.ceil(size / line.length))).subarray(0, size);
}

function filePath(root: string, i: number): string {
  return join(root, `d${i % 50}`, `f${i}.dat`);
}

function buildDisk(): void {
  sh('truncate', ['-s', `${SIZE_MIB}M`, image]);
  sh('sfdisk', ['-q', image], `label: dos\nstart=${START_SECTOR}, type=83\n`);
  const dev = sh('losetup', ['--find', '--show', '--offset', String(START_SECTOR * 512), image]).trim();
  try {
    sh('mkfs.ext4', ['-q', dev]);
  } finally {
    sh('losetup', ['-d', dev]);
  }
  withPartition(image, false, (root) => {
    for (let d = 0; d < 50; d++) mkdirSync(join(root, `d${d}`));
    for (let i = 0; i < FILES; i++) writeFileSync(filePath(root, i), fileContent(i, 0));
  });
}

function changeFiles(gen: number): void {
  withPartition(image, false, (root) => {
    const n = Math.round(FILES * CHANGED);
    const picked = new Set<number>();
    while (picked.size < n) picked.add(Math.floor(Math.random() * FILES));
    for (const i of picked) writeFileSync(filePath(root, i), fileContent(i, gen));
  });
}

function writeRules(file: string): void {
  const rand = (): string => randomBytes(8).toString('hex');
  const rules: string[] = [];
  for (let r = 0; r < RULES; r++) {
    rules.push(`rule Bench${r} {
  strings:
    $a = "${rand()}"
    $b = "${rand()}" nocase
    $c = { ${randomBytes(6).toString('hex').replace(/(..)/g, '$1 ').trim()} }
    $d = "${WORDS[r % WORDS.length]}-${rand()}" wide ascii
  condition: any of them
}`);
  }
  writeFileSync(file, rules.join('\n') + '\n');
}

async function dropCaches(): Promise<void> {
  await exec('sync', []);
  writeFileSync('/proc/sys/vm/drop_caches', '3');
}

async function timed<T>(what: () => Promise<T>): Promise<{ seconds: number; value: T }> {
  await dropCaches();
  const t0 = process.hrtime.bigint();
  const value = await what();
  return { seconds: Number(process.hrtime.bigint() - t0) / 1e9, value };
}

function cli(args: string[], nodeFlags: string[] = []): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return exec(process.execPath, [...nodeFlags, projectPath('bin', 'restorelab.js'), ...args], {
    timeoutMs: 3_600_000,
    env: { ...process.env, RESTORELAB_STATE_DIR: state },
  });
}

interface ScanJson {
  files: { scanned: number; cached: number };
  unread: number;
  verdict: string;
  timings: Record<string, number>;
}

async function restorelabScan(repoDir: string, point: string, rules: string, nodeFlags: string[] = []): Promise<ScanJson> {
  const r = await cli(['scan', '--repo', repoDir, point, '--yara', rules, '--json', ...(MOUNT ? ['--mount'] : [])], nodeFlags);
  if (r.code !== 0 && r.code !== 3) throw new Error(`restorelab scan ${point}: exit ${r.code}: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').at(-1) ?? '{}') as ScanJson;
}

/** The peer: the point restored to a raw file, loop-mounted read-only, `yara -r` over it. Returns yara's time only. */
async function plainYara(repoDir: string, point: RestorePoint, rules: string): Promise<number> {
  const { openRepository } = await import('../src/repo/repository.js');
  const raw = join(dir, `restored-${point.id}.raw`);
  await restoreDisk({ repo: await openRepository(repoDir), point: point.id, disk: 'sda', to: raw, format: 'raw' });
  try {
    const dev = sh('losetup', ['--find', '--show', '--read-only', '--offset', String(START_SECTOR * 512), raw]).trim();
    const mnt = mkdtempSync(join(dir, 'peer-'));
    try {
      sh('mount', ['-t', 'ext4', '-o', 'ro,noload,nodev,nosuid,noexec', dev, mnt]);
      try {
        const t = await timed(() =>
          exec('yara', ['-w', '-r', '-N', '-p', String(Math.min(8, availableParallelism())), rules, mnt], { timeoutMs: 3_600_000 }),
        );
        if (t.value.code !== 0) throw new Error(`yara -r: ${t.value.stderr}`);
        return t.seconds;
      } finally {
        sh('umount', [mnt]);
      }
    } finally {
      sh('losetup', ['-d', dev]);
      rmSync(mnt, { recursive: true, force: true });
    }
  } finally {
    rmSync(raw, { force: true });
  }
}

/**
 * The tenth point scanned by a library call in this process, as the server's
 * scan route does: the repository and the catalog are opened and the rules
 * compiled (from the state directory's cache) before the clock starts, as a
 * running server has them; `state` is a copy of the catalog from before the
 * CLI's tenth scan.
 */
async function serverScan(repoDir: string, point: string, rules: string, state: string): Promise<{ seconds: number; value: ScanJson }> {
  const { openRepository } = await import('../src/repo/repository.js');
  const { connectCatalog } = await import('../src/catalog/catalog.js');
  const { scanPoint, withRules } = await import('../src/scan/scan.js');
  const repo = await openRepository(repoDir);
  const db = await connectCatalog(join(state, 'catalog.sqlite'));
  try {
    return await withRules(state, rules, (compiled) =>
      timed(async () => {
        const s = await scanPoint({ repo, point, stateDir: state, db, rules: compiled, ...(MOUNT ? { via: 'mount' as const } : {}) });
        return { files: s.files, unread: s.unread, verdict: s.verdict, timings: s.timings as unknown as Record<string, number> };
      }),
    );
  } finally {
    await db.close();
  }
}

/** The scan's own phases (src/scan/scan.ts ScanPhases). */
function phases(s: ScanJson): string {
  return ['walk', 'extents', 'compare', 'hash', 'yara'].map((k) => `${k} ${s.timings[k] ?? '?'}`).join(', ');
}

/** The 1-minute load average: the machine is shared, so each figure says how busy it was. */
function load(): string {
  return loadavg()[0]!.toFixed(2);
}

async function main(): Promise<void> {
  const rules = join(dir, 'bench.yar');
  writeRules(rules);
  buildDisk();
  const repoDir = join(dir, 'repo');
  const repo = await initRepository(repoDir);
  const vm = { name: 'bench-scan', memoryMiB: 256, vcpus: 1, disks: [{ name: 'sda', format: 'raw' as const }], nics: [] };
  const points: RestorePoint[] = [await backupVm({ repo, vm, disks: { sda: image } })];
  const bytes = withPartition(image, true, (root) =>
    readdirSync(root)
      .filter((d) => d.startsWith('d'))
      .reduce((s, d) => s + readdirSync(join(root, d)).reduce((x, f) => x + statSync(join(root, d, f)).size, 0), 0),
  );
  process.stdout.write(
    `${MOUNT ? 'through kernel mounts (--mount)' : 'in-process ext reader'}; data: ${FILES} files, ${(bytes / 2 ** 20).toFixed(0)} MiB on a ${SIZE_MIB} MiB ext4 disk; ${RULES} rules; ${Math.min(8, availableParallelism())} yara threads\n`,
  );

  const peer1 = await plainYara(repoDir, points[0]!, rules);
  const first = await timed(() => restorelabScan(repoDir, points[0]!.id, rules));
  process.stdout.write(
    `first scan: restorelab ${first.seconds.toFixed(2)} s (${first.value.files.scanned} scanned, ${first.value.files.cached} cached, ${first.value.unread} unread; mount ${first.value.timings.mount} s, walk+hash+yara ${first.value.timings.scan} s, unmount ${first.value.timings.unmount} s; phases ${phases(first.value)}) vs yara -r ${peer1.toFixed(2)} s: ${(first.seconds / peer1).toFixed(2)}x (target <= 1.2x); load ${load()}\n`,
  );

  if (process.argv.includes('--first-only')) return;
  for (let gen = 1; gen < POINTS; gen++) {
    changeFiles(gen);
    points.push(await backupVm({ repo, vm, disks: { sda: image } }));
    // The nightly scans of points 2..9; the tenth is the one timed.
    if (gen < POINTS - 1) await restorelabScan(repoDir, points[gen]!.id, rules);
  }
  const tenthPoint = points[POINTS - 1]!;
  // The same catalog for the in-process figure below, as it is before the tenth scan.
  const serverState = join(dir, 'state-server');
  sh('cp', ['-a', state, serverState]);
  const peer10 = await plainYara(repoDir, tenthPoint, rules);
  const profile = process.argv.indexOf('--cpu-prof-dir');
  const tenth = await timed(() =>
    restorelabScan(repoDir, tenthPoint.id, rules, profile > 0 ? ['--cpu-prof', '--cpu-prof-dir', process.argv[profile + 1]!] : []),
  );
  process.stdout.write(
    `tenth point (${(CHANGED * 100).toFixed(0)}% changed): restorelab ${tenth.seconds.toFixed(2)} s (${tenth.value.files.scanned} scanned, ${tenth.value.files.cached} cached, ${tenth.value.unread} unread; mount ${tenth.value.timings.mount} s, walk+hash+yara ${tenth.value.timings.scan} s, unmount ${tenth.value.timings.unmount} s; phases ${phases(tenth.value)}) vs yara -r ${peer10.toFixed(2)} s: ${(tenth.seconds / peer10).toFixed(2)}x (target <= 0.2x); load ${load()}\n`,
  );
  const inProcess = await serverScan(repoDir, tenthPoint.id, rules, serverState);
  process.stdout.write(
    `tenth point in-process (what the server's scan route runs: no CLI start; repository, catalog and modules already open): ${inProcess.seconds.toFixed(2)} s (${inProcess.value.files.scanned} scanned, ${inProcess.value.files.cached} cached, ${inProcess.value.unread} unread) vs yara -r ${peer10.toFixed(2)} s: ${(inProcess.seconds / peer10).toFixed(2)}x (second figure; the CLI's is the one held to 0.2x); load ${load()}\n`,
  );
}

const KEEP = process.argv.includes('--keep');

main().then(
  () => {
    if (KEEP) process.stdout.write(`kept ${dir} (repository repo/, rules bench.yar) for profiling; remove it by hand\n`);
    else rmSync(dir, { recursive: true, force: true });
  },
  (err: unknown) => {
    process.stderr.write(`${String(err instanceof Error ? err.stack : err)}\n`);
    rmSync(dir, { recursive: true, force: true });
    process.exitCode = 1;
  },
);

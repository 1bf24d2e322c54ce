/**
 * Live-backup benchmark: `restorelab backup --domain` against virtnbdbackup
 * (libvirt's backup API in pull mode, with checkpoints) on the same running
 * libvirt domain, in the same run.
 *
 * Data set: a LIVE_BENCH_MIB (default 2048) MiB qcow2 disk (virtnbdbackup's
 * incremental mode needs qcow2): the web test guest in its first 64 MiB,
 * then LIVE_BENCH_DATA_MIB (default 1024) MiB of incompressible data, the
 * rest unallocated. The guest boots from it under TCG with libvirt's guest
 * agent channel, so both tools freeze its filesystems.
 *
 * Sequence (each timed backup after a `sync`, outside its time, so none
 * pays for another's dirty pages): virtnbdbackup full, restorelab full (filesystem-consistent);
 * then the guest rewrites 3% of the disk's 1 MiB blocks (random blocks in
 * the data region, with dd on /dev/vda); then virtnbdbackup inc, restorelab
 * incremental. Figures: wall time of each, the ratio ours/theirs (targets:
 * full <= 0.7, incremental <= 0.5), bytes read from the VM, and how long
 * restorelab kept the guest frozen (target < 1 s).
 *
 * Run (root, libvirtd, virtnbdbackup, qemu-utils; heavy: take the lock), after
 * `npm run build` (the precompiled schema validators; the bench refuses without):
 *   flock /tmp/rl-heavy.lock node dist/bench/live-backup.js
 * Knobs: LIVE_BENCH_MIB, LIVE_BENCH_DATA_MIB, LIVE_BENCH_CHUNK (our chunk
 * size, default 1M), LIVE_BENCH_ROUNDS (incremental rounds, default 1), LIVE_BENCH_ROUND_ENV
 * (a JSON list of environment objects for our incremental backups, one per round, cycled), LIVE_BENCH_DIR (default /var/tmp); RESTORELAB_SYNC_LEVEL
 * (file, filesystem, none) compares the repository's sync levels; LIVE_BENCH_NODE_ARGS
 * (e.g. `--cpu-prof --cpu-prof-dir=DIR`) is given to node for our backups only,
 * and RESTORELAB_TRACE=1 prints their phases.
 */
import { spawn } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { exec, which } from '../src/host/exec.js';
import { projectPath } from '../src/paths.js';
import { loadPrecompiled, PRECOMPILED_FILE } from '../src/schema/validate.js';
import { libvirtGuest, virsh } from '../test/helpers/live-vm.js';

const MiB = 1024 * 1024;
const SIZE_MIB = Number(process.env.LIVE_BENCH_MIB ?? 2048);
const DATA_MIB = Number(process.env.LIVE_BENCH_DATA_MIB ?? 1024);
const CHUNK = process.env.LIVE_BENCH_CHUNK ?? '1M';
/** Change-then-incremental rounds after the full backups (each a fresh 3% change). */
const ROUNDS = Number(process.env.LIVE_BENCH_ROUNDS ?? 1);
/** Environment added to our incremental backups, one object per round, cycled: A/B comparisons in one session. */
const roundEnv = JSON.parse(process.env.LIVE_BENCH_ROUND_ENV ?? '[{}]') as Record<string, string>[];
const GUEST_MIB = 64;
const CHANGED_FRACTION = 0.03;
const URI = 'qemu:///system';
const bin = projectPath('bin', 'restorelab.js');
/** Extra node options for our backups only, e.g. `--cpu-prof --cpu-prof-dir=/tmp/prof` to profile them. */
const nodeArgs = (process.env.LIVE_BENCH_NODE_ARGS ?? '').split(' ').filter(Boolean);

interface Run {
  code: number | null;
  seconds: number;
  stdout: string;
  stderr: string;
}

function run(cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): Promise<Run> {
  const t0 = process.hrtime.bigint();
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => {
      stderr = (stderr + d.toString()).slice(-16384);
    });
    p.on('error', reject);
    p.on('close', (code) => resolve({ code, seconds: Number(process.hrtime.bigint() - t0) / 1e9, stdout, stderr }));
  });
}

async function must(cmd: string, args: string[], env?: NodeJS.ProcessEnv): Promise<Run> {
  const r = await run(cmd, args, env);
  if (r.code !== 0)
    throw new Error(`${cmd} ${args.join(' ')} failed (exit ${r.code}): ${r.stderr.trim().split('\n').slice(-5).join('\n')}`);
  return r;
}

/** The raw data set: guest, incompressible data, holes; then converted to qcow2. */
async function buildDisk(dir: string): Promise<string> {
  const { guestImage } = await import('../test/helpers/guests.js');
  const raw = join(dir, 'disk.raw');
  await must('cp', ['--sparse=always', await guestImage('web'), raw]);
  const fh = await open(raw, 'r+');
  for (let off = GUEST_MIB; off < GUEST_MIB + DATA_MIB; off += 16) await fh.write(randomBytes(16 * MiB), 0, 16 * MiB, off * MiB);
  await fh.truncate(SIZE_MIB * MiB);
  await fh.close();
  const qcow2 = join(dir, 'disk.qcow2');
  await must('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, qcow2]);
  rmSync(raw);
  return qcow2;
}

function ratio(ours: number, theirs: number): string {
  return (ours / theirs).toFixed(2);
}

async function main(): Promise<void> {
  for (const tool of ['virsh', 'virtnbdbackup', 'qemu-img']) {
    if (!which(tool)) throw new Error(`${tool} is missing: scripts/setup --bench installs virtnbdbackup (and libvirt-clients, qemu-utils)`);
  }
  // Without the build's precompiled schema validators every CLI call compiles the schemas (about 130 ms),
  // a fifth of an incremental backup: the figure would measure the build, not the backup.
  if (!loadPrecompiled(PRECOMPILED_FILE)) throw new Error(`${PRECOMPILED_FILE} is missing or stale: run npm run build first`);
  const up = await exec(projectPath('scripts', 'libvirtd'), ['start'], { timeoutMs: 60_000 });
  if (up.code !== 0) throw new Error(`libvirtd: ${up.stderr}`);
  const dir = mkdtempSync(join(process.env.LIVE_BENCH_DIR ?? '/var/tmp', 'rl-live-bench-'));
  const domain = `rl-live-bench-${process.pid}`;
  try {
    console.log(
      `live-backup bench: ${SIZE_MIB} MiB qcow2 disk, ${DATA_MIB} MiB data, ${CHANGED_FRACTION * 100}% of 1 MiB blocks changed, our chunk size ${CHUNK}, ` +
        `sync level ${process.env.RESTORELAB_SYNC_LEVEL ?? 'filesystem (default)'}, load average ${loadavg()
          .map((l) => l.toFixed(2))
          .join(' ')}`,
    );
    const disk = await buildDisk(dir);
    const xml = join(dir, 'domain.xml');
    writeFileSync(
      xml,
      `<domain type='qemu'><name>${domain}</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='${disk}'/><target dev='vda' bus='virtio'/></disk>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
  </devices></domain>`,
    );
    await virsh(URI, 'define', xml);
    await virsh(URI, 'start', domain);
    await libvirtGuest(URI, domain).waitAgent(600_000);

    const repo = join(dir, 'repo');
    const home = join(dir, 'home');
    const env = { ...process.env, RESTORELAB_HOME: home, RESTORELAB_STATE_DIR: join(home, 'state') };
    await must(process.execPath, [bin, 'repo', 'init', repo, '--chunk-size', CHUNK, '--json'], env);
    const vmFile = join(dir, 'vm.json');
    writeFileSync(
      vmFile,
      JSON.stringify({ name: 'bench', memoryMiB: 256, vcpus: 1, disks: [{ name: 'root', format: 'qcow2' }], nics: [] }),
    );
    const ours = async (
      extraEnv: Record<string, string> = {},
    ): Promise<{
      seconds: number;
      json: {
        stats: { bytesRead: number; seconds?: number };
        freezeMs?: number;
        consistency: string;
        changedBlockTracking: { used: boolean };
      };
    }> => {
      const r = await must(
        process.execPath,
        [
          ...nodeArgs,
          bin,
          'backup',
          '--repo',
          repo,
          '--vm',
          vmFile,
          '--domain',
          domain,
          '--consistency',
          'filesystem',
          '--no-after-backup',
          '--json',
        ],
        { ...env, ...extraEnv },
      );
      // With RESTORELAB_TRACE=1 the backup prints its phases on stderr: show them beside the figures.
      if (process.env.RESTORELAB_TRACE)
        console.log(
          r.stderr
            .split('\n')
            .filter((l) => l.startsWith('trace '))
            .join('\n'),
        );
      return { seconds: r.seconds, json: JSON.parse(r.stdout) as never };
    };
    const theirs = (level: 'full' | 'inc'): Promise<Run> =>
      must('virtnbdbackup', ['-d', domain, '-l', level, '-o', join(dir, 'vnb'), '-S', dir, '-n', '-U', URI]);

    // Each timed backup starts with no dirty data on the host: a syncfs (ours, at the default sync
    // level) flushes the whole file system, and must not pay for what the other tool left unsynced.
    const settle = (): Promise<Run> => must('sync', []);
    await settle();
    const vFull = await theirs('full');
    await settle();
    const oFull = await ours();
    const blocks = Math.round(SIZE_MIB * CHANGED_FRACTION);
    const mb = (b: number): string => `${(b / MiB).toFixed(0)} MiB`;
    console.log(
      `full:        restorelab ${oFull.seconds.toFixed(1)} s (read ${mb(oFull.json.stats.bytesRead)}, ${oFull.json.consistency}, frozen ${oFull.json.freezeMs ?? '-'} ms)` +
        `  virtnbdbackup ${vFull.seconds.toFixed(1)} s  ratio ${ratio(oFull.seconds, vFull.seconds)} (target <= 0.7)`,
    );
    for (let round = 1; round <= ROUNDS; round++) {
      const offsets = new Set<number>();
      while (offsets.size < blocks) offsets.add(randomInt(GUEST_MIB, GUEST_MIB + DATA_MIB));
      await libvirtGuest(URI, domain).sh(
        `for o in ${[...offsets].join(' ')}; do dd if=/dev/urandom of=/dev/vda bs=1048576 seek=$o count=1 conv=notrunc 2>/dev/null; done; sync`,
      );
      await settle();
      const vInc = await theirs('inc');
      await settle();
      const load = loadavg()[0]?.toFixed(2);
      const oInc = await ours(roundEnv[(round - 1) % roundEnv.length]);
      console.log(
        `incremental${roundEnv.length > 1 ? ` ${JSON.stringify(roundEnv[(round - 1) % roundEnv.length])}` : ''}: restorelab ${oInc.seconds.toFixed(2)} s (engine ${oInc.json.stats.seconds ?? '-'} s, read ${mb(oInc.json.stats.bytesRead)}, CBT ${oInc.json.changedBlockTracking.used ? 'used' : 'NOT used'}, frozen ${oInc.json.freezeMs ?? '-'} ms)` +
          `  virtnbdbackup ${vInc.seconds.toFixed(2)} s  ratio ${ratio(oInc.seconds, vInc.seconds)} (target <= 0.5), load average ${load}`,
      );
    }
    console.log(
      `changed: ${blocks} blocks of 1 MiB (${mb(blocks * MiB)}) per round; load average now ${loadavg()
        .map((l) => l.toFixed(2))
        .join(' ')}`,
    );
  } finally {
    await exec('virsh', ['-c', URI, 'destroy', domain]);
    await exec('virsh', ['-c', URI, 'undefine', domain, '--checkpoints-metadata']);
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();

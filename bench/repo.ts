/**
 * Repository benchmark: restorelab vs `restic backup` and `borg create` on the
 * same series of images, in the same run.
 *
 * Data set: a guest-like raw image of REPO_BENCH_MIB (default 2048) MiB: a
 * built test guest at the start, then generated files (incompressible,
 * compressible text-like, and zero-filled regions, about a third each, plus
 * unallocated holes), and 5 more versions with 1..5% of its 1 MiB blocks
 * rewritten. Each tool backs up all 6 versions into its own repository, then
 * restores the last one in full.
 *
 * Figures (each with its ratio to restic): total backup time, repository size,
 * full-restore throughput, peak RSS of our backup process, ingest throughput
 * against `cat image > /dev/null` from page cache. Then a chunk-size study
 * (1/4/8 MiB): first-backup time, repository size after two versions, and
 * random 4 KiB read latency through DiskSource (cold chunk: read + decode).
 *
 * Run: node dist/bench/repo.js   (needs restic, borgbackup, qemu-utils, /usr/bin/time)
 * Knobs: REPO_BENCH_MIB (image size), REPO_BENCH_CHUNK (our chunk size, e.g. 1M),
 * REPO_BENCH_DIR (work directory, default /var/tmp), REPO_BENCH_GUEST (guest image).
 */
import { randomBytes } from 'node:crypto';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { which } from '../src/host/exec.js';
import { projectPath } from '../src/paths.js';
import { must } from './timed.js';
import { fmt, lcg, MiB, mib, textBlock, writeMixedBlocks } from './data-set.js';
import { openImage } from '../src/ingest/open.js';
import { openRepository } from '../src/repo/index.js';
import { DEFAULT_CHUNK_SIZE } from '../src/repo/format.js';

const SIZE_MIB = Number(process.env.REPO_BENCH_MIB ?? 2048);
const SIZE = SIZE_MIB * MiB;
const VERSIONS = 5;
const bin = projectPath('bin', 'restorelab.js');

/** Reads a file into the page cache (cat to /dev/null: piping it through this process cost minutes of CPU). */
async function warm(file: string): Promise<void> {
  await must('sh', ['-c', `cat '${file}' > /dev/null`]);
}

async function duBytes(path: string): Promise<number> {
  const r = await must('du', ['-sb', path]);
  return Number(
    r.out
      .trim()
      .split('\n')
      .find((l) => /^\d+\s/.test(l))
      ?.split(/\s/)[0],
  );
}

async function buildImage(path: string, guest: string): Promise<void> {
  copyFileSync(guest, path);
  // Start past the guest.
  await writeMixedBlocks(path, { sizeMiB: SIZE_MIB, fromMiB: 64, seed: 7 });
}

/** Rewrites `percent`% of the 1 MiB blocks: half with random data, half with log-like text. */
async function changeVersion(path: string, percent: number, seed: number): Promise<void> {
  const fh = await open(path, 'r+');
  const next = lcg(seed);
  const count = Math.round((SIZE_MIB * percent) / 100);
  for (let i = 0; i < count; i++) {
    const mb = next() % SIZE_MIB;
    await fh.write(i % 2 ? randomBytes(MiB) : textBlock(mb + seed * 7919), 0, MiB, mb * MiB);
  }
  await fh.close();
}

const line = (label: string, ours: string, peer: string, ratio: number, target: string): void =>
  console.log(`${label.padEnd(34)} restorelab ${ours.padEnd(14)} restic ${peer.padEnd(14)} ratio ${fmt(ratio)}x  (target ${target})`);

async function main(): Promise<void> {
  for (const tool of ['restic', 'borg', 'qemu-img'])
    if (!which(tool))
      throw new Error(`bench needs ${tool}: apt-get install ${tool === 'borg' ? 'borgbackup' : tool === 'qemu-img' ? 'qemu-utils' : tool}`);
  const work = mkdtempSync(join(process.env.REPO_BENCH_DIR ?? '/var/tmp', 'rl-bench-repo-'));
  const cleanup = (): void => rmSync(work, { recursive: true, force: true });
  process.on('exit', cleanup);
  const guest = process.env.REPO_BENCH_GUEST ?? join(projectPath('var', 'guests'), 'web.raw');
  const env = {
    ...process.env,
    RESTORELAB_HOME: work,
    RESTORELAB_STATE_DIR: join(work, 'state'),
    RESTIC_PASSWORD: 'bench',
    BORG_PASSPHRASE: '',
    BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK: 'yes',
  };
  console.log(
    `data set: ${SIZE_MIB} MiB guest-like image (${guest} + generated files), ${VERSIONS} more versions with 1..${VERSIONS}% of 1 MiB blocks changed`,
  );

  // Versions are built one after another in one file, and each tool backs up each version before the next is made.
  const img = join(work, 'disk.raw');
  await buildImage(img, guest);
  const vmFile = join(work, 'vm.json');
  writeFileSync(vmFile, JSON.stringify({ name: 'bench', memoryMiB: 512, vcpus: 1, disks: [{ name: 'root', format: 'raw' }], nics: [] }));
  const ours = join(work, 'rl-repo');
  const resticRepo = join(work, 'restic-repo');
  const borgRepo = join(work, 'borg-repo');
  // REPO_BENCH_CHUNK (e.g. 1M) runs the series at another chunk size than the default.
  await must(
    'node',
    [bin, 'repo', 'init', ours, ...(process.env.REPO_BENCH_CHUNK ? ['--chunk-size', process.env.REPO_BENCH_CHUNK] : [])],
    env,
  );
  await must('restic', ['init', '--repo', resticRepo], env);
  await must('borg', ['init', '--encryption', 'none', borgRepo], env);

  // Page cache warm for everyone: every tool reads the same cached file.
  await warm(img);
  const catS = (await must('sh', ['-c', `cat '${img}' > /dev/null`])).seconds;

  const t = { ours: 0, restic: 0, borg: 0 };
  // CPU seconds too: on a shared, loaded machine wall time is noisy, CPU time much less so.
  const cpu = { ours: 0, restic: 0, borg: 0 };
  let peakRss = 0;
  let lastPoint = '';
  for (let v = 0; v <= VERSIONS; v++) {
    if (v > 0) await changeVersion(img, v, 100 + v);
    // Each tool starts with the image in page cache and no dirty pages of another tool to flush:
    // our chunk writes fsync, and on ext4 an fsync can wait on the writeback of whatever was written just before.
    const settle = async (): Promise<void> => {
      await must('sync', []);
      await warm(img);
    };
    await settle();
    const a = await must('node', [bin, 'backup', '--repo', ours, '--vm', vmFile, '--disk', img, '--json'], env);
    const json = a.out.split('\n').find((l) => l.startsWith('{"restorePoint"'));
    const stats = json ? (JSON.parse(json) as { restorePoint: string; stats: { bytesNew: number; bytesRead: number } }) : undefined;
    lastPoint = stats?.restorePoint ?? lastPoint;
    await settle();
    const b = await must('restic', ['backup', '--repo', resticRepo, '--quiet', img], env);
    await settle();
    const c = await must('borg', ['create', '--compression', 'zstd,3', `${borgRepo}::v${v}`, img], env);
    t.ours += a.seconds;
    t.restic += b.seconds;
    t.borg += c.seconds;
    cpu.ours += a.cpuSeconds;
    cpu.restic += b.cpuSeconds;
    cpu.borg += c.cpuSeconds;
    peakRss = Math.max(peakRss, a.maxRssKiB);
    console.log(
      `version ${v}: restorelab ${fmt(a.seconds)} s (new ${mib(stats?.stats.bytesNew ?? 0)}, RSS ${fmt(a.maxRssKiB / 1024, 0)} MiB), restic ${fmt(b.seconds)} s (RSS ${fmt(b.maxRssKiB / 1024, 0)} MiB), borg ${fmt(c.seconds)} s (RSS ${fmt(c.maxRssKiB / 1024, 0)} MiB)`,
    );
  }
  const size = { ours: await duBytes(ours), restic: await duBytes(resticRepo), borg: await duBytes(borgRepo) };

  // Full restore of the last version.
  await must('sync', []);
  const rOut = join(work, 'restore-ours.raw');
  const rs = await must('node', [bin, 'restore', '--repo', ours, lastPoint, '--disk', 'root', '--to', rOut], env);
  rmSync(rOut, { force: true });
  await must('sync', []);
  const resticTarget = join(work, 'restore-restic');
  const rr = await must('restic', ['restore', 'latest', '--repo', resticRepo, '--target', resticTarget], env);
  // restorelab fsyncs the restored file before it renames it into place (a
  // restore that returned is on disk); restic returns with its data still in
  // the page cache. Timing restic's restore plus the sync that makes it durable
  // compares the same guarantee.
  const rrSync = await must('sync', []);
  rmSync(resticTarget, { recursive: true, force: true });
  await must('sync', []);
  const borgTarget = join(work, 'restore-borg');
  mkdirSync(borgTarget);
  const rb = await must('sh', ['-c', `cd '${borgTarget}' && borg extract '${borgRepo}::v${VERSIONS}'`], env);
  rmSync(borgTarget, { recursive: true, force: true });

  // Ingest: the ImageSource read path alone (extents + reads of the data chunks), against cat. It
  // reads the way the backup engine does: chunk by chunk into reused buffers (the engine's shared
  // slots, two per core), as many reads in flight as there are slots.
  await warm(img);
  const src = await openImage(img, { format: 'raw' });
  const chunk = DEFAULT_CHUNK_SIZE;
  const t0 = process.hrtime.bigint();
  const reads: Array<[number, number]> = [];
  for await (const e of src.extents()) {
    if (e.zero) continue;
    for (let off = e.offset; off < e.offset + e.length; off += chunk) reads.push([off, Math.min(chunk, e.offset + e.length - off)]);
  }
  let ingested = 0;
  let nextRead = 0;
  await Promise.all(
    Array.from({ length: 2 * Math.min(availableParallelism(), 8) }, async () => {
      const slot = Buffer.allocUnsafeSlow(chunk);
      for (let r = reads[nextRead++]; r; r = reads[nextRead++]) {
        const [off, n] = r;
        if (src.readInto) await src.readInto(slot.subarray(0, n), off);
        else await src.read(off, n);
        ingested += n;
      }
    }),
  );
  const ingestS = Number(process.hrtime.bigint() - t0) / 1e9;
  await src.close();

  console.log('');
  line('total backup time (6 versions)', `${fmt(t.ours)} s`, `${fmt(t.restic)} s`, t.ours / t.restic, '<= 0.5x');
  console.log(`${''.padEnd(34)} borg ${fmt(t.borg)} s (${fmt(t.ours / t.borg)}x)`);
  line('total backup CPU time', `${fmt(cpu.ours)} s`, `${fmt(cpu.restic)} s`, cpu.ours / cpu.restic, 'time <= 0.5x');
  console.log(`${''.padEnd(34)} borg ${fmt(cpu.borg)} s (${fmt(cpu.ours / cpu.borg)}x)`);
  line('repository size', mib(size.ours), mib(size.restic), size.ours / size.restic, '<= 1x');
  console.log(`${''.padEnd(34)} borg ${mib(size.borg)} (${fmt(size.ours / size.borg)}x)`);
  const thr = (s: number): number => SIZE / MiB / s;
  line(
    'full-restore throughput',
    `${fmt(thr(rs.seconds), 0)} MiB/s`,
    `${fmt(thr(rr.seconds), 0)} MiB/s`,
    thr(rs.seconds) / thr(rr.seconds),
    '>= 1.5x',
  );
  const durable = rr.seconds + rrSync.seconds;
  line(
    '  durable (restic + sync)',
    `${fmt(thr(rs.seconds), 0)} MiB/s`,
    `${fmt(thr(durable), 0)} MiB/s`,
    thr(rs.seconds) / thr(durable),
    '>= 1.5x',
  );
  console.log(
    `${''.padEnd(34)} restore CPU: restorelab ${fmt(rs.cpuSeconds)} s, restic ${fmt(rr.cpuSeconds)} s, borg ${fmt(rb.cpuSeconds)} s`,
  );
  console.log(`${''.padEnd(34)} borg ${fmt(thr(rb.seconds), 0)} MiB/s (${fmt(thr(rs.seconds) / thr(rb.seconds))}x)`);
  console.log(`${'peak RSS of a restorelab backup'.padEnd(34)} ${fmt(peakRss / 1024, 0)} MiB (target < 300 MiB)`);
  const catMiBs = SIZE / MiB / catS;
  const ingestMiBs = ingested / MiB / ingestS;
  console.log(
    `${'ingest throughput (data extents)'.padEnd(34)} ${fmt(ingestMiBs, 0)} MiB/s vs cat ${fmt(catMiBs, 0)} MiB/s: ${fmt(ingestMiBs / catMiBs)}x (target >= 0.5x)`,
  );
  const firstBackupMiBs = SIZE / MiB / (t.ours / (VERSIONS + 1));
  console.log(
    `${'backup throughput (mean, virtual)'.padEnd(34)} ${fmt(firstBackupMiBs, 0)} MiB/s vs cat ${fmt(catMiBs, 0)} MiB/s: ${fmt(firstBackupMiBs / catMiBs)}x`,
  );
  rmSync(ours, { recursive: true, force: true });
  rmSync(resticRepo, { recursive: true, force: true });
  rmSync(borgRepo, { recursive: true, force: true });

  // Chunk size: backup speed, space after one changed version, random-read latency.
  console.log('\nchunk size study (first backup of the last version, then 3% changed)');
  for (const cs of [1, 4, 8]) {
    const repoDir = join(work, `cs-${cs}`);
    await must('node', [bin, 'repo', 'init', repoDir, '--chunk-size', `${cs}M`], env);
    await must('sync', []);
    await warm(img);
    const b1 = await must('node', [bin, 'backup', '--repo', repoDir, '--vm', vmFile, '--disk', img, '--json'], env);
    const before = await duBytes(repoDir);
    await changeVersion(img, 3, 900 + cs);
    await must('sync', []);
    const b2 = await must('node', [bin, 'backup', '--repo', repoDir, '--vm', vmFile, '--disk', img, '--json'], env);
    const grown = (await duBytes(repoDir)) - before;
    const repo = await openRepository(repoDir);
    const point = (await repo.listPoints()).at(-1);
    const disk = await repo.openDisk(point?.id as string, 'root');
    const next = lcg(cs);
    const lat: number[] = [];
    for (let i = 0; i < 200; i++) {
      let idx = next() % disk.chunkCount;
      for (let k = 0; k < disk.chunkCount && disk.chunkId(idx) === null; k++) idx = (idx + 1) % disk.chunkCount;
      const s = process.hrtime.bigint();
      await disk.readChunk(idx);
      lat.push(Number(process.hrtime.bigint() - s) / 1e6);
    }
    lat.sort((a, b) => a - b);
    const mean = lat.reduce((a, b) => a + b, 0) / lat.length;
    console.log(
      `  ${cs} MiB: first backup ${fmt(b1.seconds)} s (${fmt(SIZE / MiB / b1.seconds, 0)} MiB/s), 3% change ${fmt(b2.seconds)} s stores ${mib(grown)}, ` +
        `random 4 KiB read (cold chunk) mean ${fmt(mean)} ms p99 ${fmt(lat[Math.floor(lat.length * 0.99)] as number)} ms`,
    );
    rmSync(repoDir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});

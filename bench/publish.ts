/**
 * Published-disk benchmark (issue 4), every figure against a peer measured in
 * the same run:
 * - sequential read of a published 2 GiB disk through FUSE, cold chunk cache
 *   (fresh publisher, dropped page cache) then warm, vs the same bytes from
 *   a restored raw file (cold, then warm); best of several runs each;
 * - sequential read of the same disk over NBD (`publish --nbd`, a fresh
 *   publisher, dropped page cache) with nbdcopy, vs the restored raw file
 *   served by qemu-nbd and read by the same nbdcopy, and vs dd of the file;
 * - random 4 KiB reads, p50/p99, cold and warm, FUSE vs raw;
 * - boot time of `web` to its agent heartbeat, FUSE-published vs a local raw copy;
 * - peak RSS of the publishing process (256 MiB chunk cache).
 *
 * Every ratio names its peer: "of the raw file" is the restored raw file read
 * directly with dd (page cache dropped), "of qemu-nbd" is that file served by
 * qemu-nbd to the same nbdcopy. Each cold figure also prints the publisher's
 * CPU seconds per thread kind (main thread, decode workers, the rest), so a
 * run on a busy host still says what the read cost.
 *
 * Run: node dist/bench/publish.js [--size-mib 2048] [--no-boot] (as root: drops caches).
 */
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { spawn } from 'node:child_process';
import { exec } from '../src/host/exec.js';
import { projectPath } from '../src/paths.js';
import { initRepository, openRepository } from '../src/repo/repository.js';
import { backupVm } from '../src/backup/engine.js';
import { restoreDisk } from '../src/backup/restore.js';
import { QemuDriver } from '../src/hypervisor/qemu.js';
import { waitForAgent } from '../src/hypervisor/qga.js';
import { loadVmDefinition } from '../src/vm/definition.js';
import { LOCAL_USER, listPublications, removePublication } from '../src/publish/publish.js';
import { guestImage } from '../test/helpers/guests.js';

const sizeArg = process.argv.indexOf('--size-mib');
const SIZE_MIB = sizeArg > 0 ? Number(process.argv[sizeArg + 1]) : 2048;
/** Leaves out the boot of `web` (minutes under TCG) when only the read figures are wanted. */
const BOOT = !process.argv.includes('--no-boot');
const RANDOM_READS = 400;
const SEQ_ROUNDS = 2;
const WARM_PASSES = 3;
const dir = fs.mkdtempSync('/tmp/rlbench-');
const state = path.join(dir, 'state');
const mnt = path.join(dir, 'mnt');

function cli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return exec(process.execPath, [projectPath('bin', 'restorelab.js'), ...args], {
    timeoutMs: 300_000,
    env: { ...process.env, RESTORELAB_STATE_DIR: state, RESTORELAB_CHUNK_CACHE_MIB: '256' },
  });
}

async function dropCaches(): Promise<void> {
  await exec('sync', []);
  fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
}

async function seqRead(file: string): Promise<number> {
  const t0 = process.hrtime.bigint();
  const r = await exec('dd', [`if=${file}`, 'of=/dev/null', 'bs=1M'], { timeoutMs: 600_000 });
  if (r.code !== 0) throw new Error(`dd ${file}: ${r.stderr}`);
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  return SIZE_MIB / s;
}

/** MiB/s of nbdcopy reading the whole export at `url` (to its null: sink, so no page cache on the way out). */
async function nbdRead(url: string): Promise<number> {
  const t0 = process.hrtime.bigint();
  const r = await exec('nbdcopy', [url, 'null:'], { timeoutMs: 600_000 });
  if (r.code !== 0) throw new Error(`nbdcopy ${url}: ${r.stderr}`);
  return SIZE_MIB / (Number(process.hrtime.bigint() - t0) / 1e9);
}

/** qemu-nbd serving `file` read-only on a unix socket: the reference NBD server over a local raw disk. */
async function withQemuNbd<T>(file: string, use: (url: string) => Promise<T>): Promise<T> {
  const sock = path.join(dir, 'qemu-nbd.sock');
  const child = spawn('qemu-nbd', ['--read-only', '--persistent', '--shared=8', '-f', 'raw', '-k', sock, '-x', 'raw', file], {
    stdio: 'ignore',
  });
  try {
    for (let i = 0; i < 100 && !fs.existsSync(sock); i++) await new Promise((r) => setTimeout(r, 50));
    if (!fs.existsSync(sock)) throw new Error('qemu-nbd did not create its socket');
    return await use(`nbd+unix:///raw?socket=${sock}`);
  } finally {
    child.kill();
    fs.rmSync(sock, { force: true });
  }
}

async function publishNbd(repo: string, point: string): Promise<{ pub: string; url: string; pid: number }> {
  const r = await cli(['publish', '--repo', repo, point, '--nbd', '--background', '--json']);
  if (r.code !== 0) throw new Error(`publish --nbd: ${r.stdout} ${r.stderr}`);
  const j = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as { publication: string; disks: { name: string; nbd: string }[] };
  const pid = listPublications(state).find((p) => p.id === j.publication)!.pid!;
  return { pub: j.publication, url: j.disks[0]!.nbd, pid };
}

async function randomReads(file: string, offsets: number[]): Promise<{ p50: number; p99: number }> {
  const h = await fs.promises.open(file, 'r');
  const buf = Buffer.alloc(4096);
  const lat: number[] = [];
  try {
    for (const off of offsets) {
      const t0 = process.hrtime.bigint();
      await h.read(buf, 0, 4096, off);
      lat.push(Number(process.hrtime.bigint() - t0) / 1e6);
    }
  } finally {
    await h.close();
  }
  lat.sort((a, b) => a - b);
  return { p50: lat[Math.floor(lat.length * 0.5)]!, p99: lat[Math.floor(lat.length * 0.99)]! };
}

async function publish(repo: string, point: string): Promise<{ pub: string; disk: string; pid: number }> {
  const r = await cli(['publish', '--repo', repo, point, '--fuse', mnt, '--background', '--json']);
  if (r.code !== 0) throw new Error(`publish: ${r.stdout} ${r.stderr}`);
  const j = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as { publication: string; disks: Record<string, string> };
  const pid = listPublications(state).find((p) => p.id === j.publication)!.pid!;
  return { pub: j.publication, disk: Object.values(j.disks)[0]!, pid };
}

async function unpublish(pub: string): Promise<void> {
  await removePublication(state, pub, { discard: true, as: LOCAL_USER });
}

function peakRss(pid: number): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

const fmt = (n: number, d = 1): string => n.toFixed(d);

/** CPU seconds (user + system) of each thread of `pid`, by thread name (the main thread is named after the process). */
function threadCpu(pid: number): Map<string, number> {
  const out = new Map<string, number>();
  for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
    const stat = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    out.set(tid, (Number(fields[11]) + Number(fields[12])) / 100);
  }
  return out;
}

/** The CPU a cold read cost the publisher `pid`: main thread, and the other threads (decode workers, V8's, libuv's). */
async function measuredCold<T>(pid: number, read: () => Promise<T>): Promise<{ result: T; main: number; others: number }> {
  const before = threadCpu(pid);
  const result = await read();
  let main = 0;
  let others = 0;
  for (const [tid, s] of threadCpu(pid)) {
    const d = s - (before.get(tid) ?? 0);
    if (Number(tid) === pid) main += d;
    else others += d;
  }
  return { result, main, others };
}

const loadAverage = (): string => fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');

async function bootToHeartbeat(qemu: QemuDriver, disk: string, name: string): Promise<number> {
  const web = loadVmDefinition(projectPath('lab-templates', 'vms', 'web.json'));
  const t0 = Date.now();
  const dom = await qemu.start({ vm: { ...web, name }, disks: [{ name: 'root', path: disk, format: 'raw' }], nics: [] });
  try {
    const agent = await waitForAgent(dom.agentSocket, 240_000);
    agent.close();
    return (Date.now() - t0) / 1000;
  } finally {
    await dom.destroy();
  }
}

try {
  // A 2 GiB disk of incompressible data: no holes, every chunk decoded.
  const image = path.join(dir, 'disk.raw');
  await exec('sh', ['-c', `head -c ${SIZE_MIB}M /dev/urandom > ${image}`], { timeoutMs: 600_000 });
  const repoDir = path.join(dir, 'repo');
  const repo = await initRepository(repoDir);
  const vm = { name: 'bench', memoryMiB: 256, vcpus: 1, disks: [{ name: 'sda', format: 'raw' as const }], nics: [] };
  const point = await backupVm({ repo, vm, disks: { sda: image }, source: image });
  const restored = path.join(dir, 'restored.raw');
  await restoreDisk({ repo: await openRepository(repoDir), point: point.id, disk: 'sda', to: restored });
  fs.rmSync(image);
  const offsets = Array.from(
    { length: RANDOM_READS },
    () => Math.floor((randomBytes(4).readUInt32LE() / 2 ** 32) * (SIZE_MIB * 256)) * 4096,
  );

  // Sequential, in rounds so that a busy host (steal time) shows as spread,
  // not as a ratio: raw cold then warm passes, FUSE cold (fresh publisher,
  // dropped caches) then warm passes. Each figure is the best of its runs,
  // the same rule for both sides. The first warm pass over a file is slower
  // for both (the kernel moves its pages to the active list), so "warm" is
  // the steady state after it.
  const raw = { cold: [] as number[], warm: [] as number[] };
  const fuse = { cold: [] as number[], warm: [] as number[] };
  /** Publisher CPU seconds of each cold pass: "main thread + other threads". */
  const fuseCpu: string[] = [];
  const nbdCpu: string[] = [];
  const loads: string[] = [loadAverage()];
  let rss = 0;
  for (let round = 0; round < SEQ_ROUNDS; round++) {
    await dropCaches();
    raw.cold.push(await seqRead(restored));
    for (let k = 0; k < WARM_PASSES; k++) raw.warm.push(await seqRead(restored));
    const p1 = await publish(repoDir, point.id);
    await dropCaches();
    const fc = await measuredCold(p1.pid, () => seqRead(p1.disk));
    fuse.cold.push(fc.result);
    fuseCpu.push(`${fmt(fc.main, 2)} + ${fmt(fc.others, 2)}`);
    for (let k = 0; k < WARM_PASSES; k++) fuse.warm.push(await seqRead(p1.disk));
    rss = Math.max(rss, peakRss(p1.pid));
    await unpublish(p1.pub);
  }
  // NBD: our export vs qemu-nbd over the restored file, same client (nbdcopy), cold then warm.
  const nbd = { cold: [] as number[], warm: [] as number[] };
  const qnbd = { cold: [] as number[], warm: [] as number[] };
  for (let round = 0; round < SEQ_ROUNDS; round++) {
    await withQemuNbd(restored, async (url) => {
      await dropCaches();
      qnbd.cold.push(await nbdRead(url));
      for (let k = 0; k < WARM_PASSES; k++) qnbd.warm.push(await nbdRead(url));
    });
    const pn = await publishNbd(repoDir, point.id);
    await dropCaches();
    const nc = await measuredCold(pn.pid, () => nbdRead(pn.url));
    nbd.cold.push(nc.result);
    nbdCpu.push(`${fmt(nc.main, 2)} + ${fmt(nc.others, 2)}`);
    loads.push(loadAverage());
    for (let k = 0; k < WARM_PASSES; k++) nbd.warm.push(await nbdRead(pn.url));
    rss = Math.max(rss, peakRss(pn.pid));
    await unpublish(pn.pub);
  }
  const [nbdCold, nbdWarm, qnbdCold, qnbdWarm] = [nbd.cold, nbd.warm, qnbd.cold, qnbd.warm].map((runs) => Math.max(...runs)) as [
    number,
    number,
    number,
    number,
  ];

  const [rawCold, rawWarm, fuseCold, fuseWarm] = [raw.cold, raw.warm, fuse.cold, fuse.warm].map((runs) => Math.max(...runs)) as [
    number,
    number,
    number,
    number,
  ];

  // Random 4 KiB reads.
  await dropCaches();
  const rawRandCold = await randomReads(restored, offsets);
  const rawRandWarm = await randomReads(restored, offsets);
  const p2 = await publish(repoDir, point.id);
  await dropCaches();
  const fuseRandCold = await randomReads(p2.disk, offsets);
  const fuseRandWarm = await randomReads(p2.disk, offsets);
  await unpublish(p2.pub);

  const runs = (xs: number[]): string => xs.map((x) => fmt(x, 0)).join(', ');
  console.log(`sequential read of ${SIZE_MIB} MiB (MiB/s, best of ${SEQ_ROUNDS} cold and ${SEQ_ROUNDS * WARM_PASSES} warm runs):`);
  console.log(
    `  FUSE cold (dd bs=1M): ${fmt(fuseCold)} vs the raw file read directly (dd) ${fmt(rawCold)}  ratio ${fmt(fuseCold / rawCold, 2)}x of the raw file (target >= 0.5x)`,
  );
  console.log(`        runs: FUSE ${runs(fuse.cold)}; raw file ${runs(raw.cold)}`);
  console.log(`        publisher CPU s per cold run (main thread + other threads): ${fuseCpu.join('; ')}`);
  console.log(
    `  FUSE warm: ${fmt(fuseWarm)} vs the raw file read directly (dd) ${fmt(rawWarm)}  ratio ${fmt(fuseWarm / rawWarm, 2)}x of the raw file (target >= 0.8x)`,
  );
  console.log(`        runs: FUSE ${runs(fuse.warm)}; raw file ${runs(raw.warm)}`);
  console.log(`  NBD cold (nbdcopy to null:): restorelab ${fmt(nbdCold)}`);
  console.log(
    `        vs the raw file read directly (dd) ${fmt(rawCold)}  ratio ${fmt(nbdCold / rawCold, 2)}x of the raw file (target >= 0.8x)`,
  );
  console.log(
    `        vs qemu-nbd serving the raw file to the same nbdcopy ${fmt(qnbdCold)}  ratio ${fmt(nbdCold / qnbdCold, 2)}x of qemu-nbd`,
  );
  console.log(`        runs: restorelab ${runs(nbd.cold)}; qemu-nbd ${runs(qnbd.cold)}; raw file (dd) ${runs(raw.cold)}`);
  console.log(`        publisher CPU s per cold run (main thread + other threads): ${nbdCpu.join('; ')}`);
  console.log(
    `  NBD again (${SIZE_MIB} MiB does not fit our 256 MiB chunk cache; qemu-nbd reads the page cache): restorelab ${fmt(nbdWarm)} vs qemu-nbd over the raw file ${fmt(qnbdWarm)}  ratio ${fmt(nbdWarm / qnbdWarm, 2)}x of qemu-nbd`,
  );
  console.log(`        runs: restorelab ${runs(nbd.warm)}; qemu-nbd ${runs(qnbd.warm)}`);
  console.log(`  load average (1, 5, 15 min) at the start and after each NBD round: ${loads.join('; ')}`);
  console.log(`random 4 KiB reads, ${RANDOM_READS} (ms):`);
  console.log(
    `  cold p50/p99: FUSE ${fmt(fuseRandCold.p50, 3)}/${fmt(fuseRandCold.p99, 3)} vs raw ${fmt(rawRandCold.p50, 3)}/${fmt(rawRandCold.p99, 3)}  p50 ratio ${fmt(fuseRandCold.p50 / rawRandCold.p50, 2)}x`,
  );
  console.log(
    `  warm p50/p99: FUSE ${fmt(fuseRandWarm.p50, 3)}/${fmt(fuseRandWarm.p99, 3)} vs raw ${fmt(rawRandWarm.p50, 3)}/${fmt(rawRandWarm.p99, 3)}  p50 ratio ${fmt(fuseRandWarm.p50 / rawRandWarm.p50, 2)}x`,
  );
  console.log(`peak RSS of the publisher (256 MiB chunk cache): ${fmt(rss)} MiB`);
  fs.rmSync(restored);

  // Boot time of web: FUSE-published point vs a local raw copy.
  if (BOOT) {
    const webImage = await guestImage('web');
    const webRepo = path.join(dir, 'webrepo');
    const wr = await initRepository(webRepo);
    const webVm = loadVmDefinition(projectPath('lab-templates', 'vms', 'web.json'));
    const webPoint = await backupVm({ repo: wr, vm: webVm, disks: { root: webImage }, source: webImage });
    const localCopy = path.join(dir, 'web-local.raw');
    fs.copyFileSync(webImage, localCopy);
    const qemu = new QemuDriver({ stateDir: path.join(dir, 'vms'), accel: 'tcg' });
    const tag = String(process.pid % 10000);
    const bootLocal = await bootToHeartbeat(qemu, localCopy, `bl${tag}`);
    const p3 = await publish(webRepo, webPoint.id);
    const bootFuse = await bootToHeartbeat(qemu, p3.disk, `bf${tag}`);
    await unpublish(p3.pub);
    console.log(
      `boot of web to agent heartbeat (TCG): FUSE ${fmt(bootFuse)} s vs local raw ${fmt(bootLocal)} s  ratio ${fmt(bootFuse / bootLocal, 2)}x (target <= 1.3x)`,
    );
  }
} finally {
  for (const p of listPublications(state)) await removePublication(state, p.id, { discard: true, as: p.owner }).catch(() => undefined);
  fs.rmSync(dir, { recursive: true, force: true });
}

/**
 * NFS benchmark (issue 5): a real publication served by `restorelab publish
 * --nfs` vs nfs-ganesha (VFS backend) serving the restored raw file of the same
 * restore point, in the same run, with the same client (qemu-img over QEMU's
 * nfs:// driver, libnfs).
 *
 * A guest-like image (random, compressible and zero regions) is backed up with
 * the repository API and restored to a raw file; ganesha serves that file,
 * restorelab publishes the restore point from a child process (the CLI with
 * --background), whose peak RSS (VmHWM) is read from /proc.
 *
 * Figures: sequential read (qemu-img convert) cold (dropped page cache; for
 * restorelab also a fresh publisher, so an empty chunk cache), a second pass
 * over the whole disk, and warm (the second pass over a window that fits the
 * default 128 MiB chunk cache); random 4 KiB reads at queue depth 8 (qemu-img
 * bench) over that window, second pass; sequential write (qemu-img convert -n)
 * into the publication's disk (its overlay) vs into a plain file.
 *
 * Needs root (port 111, drop_caches) and: qemu-utils qemu-block-extra
 * nfs-ganesha nfs-ganesha-vfs rpcbind libnfs-utils.
 * Run: node dist/bench/nfs.js; size via NFS_BENCH_MB (default 1024).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { exec, which } from '../src/host/exec.js';
import { projectPath } from '../src/paths.js';
import { portmapperListening } from '../src/nfs/portmap.js';
import { initRepository, openRepository } from '../src/repo/repository.js';
import { backupVm } from '../src/backup/engine.js';
import { restoreDisk } from '../src/backup/restore.js';
import { loadVmDefinition } from '../src/vm/definition.js';
import { LOCAL_USER, listPublications, removePublication } from '../src/publish/publish.js';

const MB = Number(process.env.NFS_BENCH_MB ?? 1024);
const BYTES = MB * 1024 * 1024;
/**
 * Warm reads (sequential and random) stay inside this many MiB: "warm" means the working set fits
 * the default 128 MiB chunk cache. A second pass over the whole disk is printed too, but a 1 GiB
 * sequential pass through a smaller LRU evicts every chunk before it is read again: it is cold.
 */
const WARM_SET_MIB = Math.min(96, MB);
const RANDOM_READS = 20000;
const GANESHA_PORTS = { nfs: 12049, mount: 12048 };
const OUR_PORTS = { nfs: 22049, mount: 22048 };

function run(cmd: string, args: string[], env?: NodeJS.ProcessEnv): Promise<{ code: number | null; out: string; seconds: number }> {
  const t0 = process.hrtime.bigint();
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...(env ? { env } : {}) });
    let out = '';
    // Keep only the tail: enough for an error message, never a whole image.
    const keep = (c: Buffer): void => {
      out = (out + c.toString()).slice(-65536);
    };
    p.stdout.on('data', keep);
    p.stderr.on('data', keep);
    p.on('error', reject);
    p.on('close', (code) => resolve({ code, out, seconds: Number(process.hrtime.bigint() - t0) / 1e9 }));
  });
}

async function must(cmd: string, args: string[]): Promise<number> {
  const r = await run(cmd, args);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.out}`);
  return r.seconds;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function dropCaches(): Promise<void> {
  await must('sync', []);
  fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
}

/**
 * A disk that looks like a guest's to the chunker and the codec: per 16 MiB,
 * 6 MiB of random bytes (binaries, compressed files), 5 MiB of log-like text
 * (compressible, but distinct per block so it does not dedup away) and 5 MiB
 * left as a hole (never-written or zeroed space). Written 1 MiB at a time.
 */
async function writeGuestLikeImage(file: string): Promise<void> {
  const h = await fs.promises.open(file, 'w');
  try {
    const block = Buffer.alloc(1024 * 1024);
    for (let mib = 0; mib < MB; mib++) {
      const kind = mib % 16;
      if (kind < 6) {
        crypto.randomFillSync(block);
      } else if (kind < 11) {
        let off = 0;
        for (let line = 0; off < block.length; line++) {
          off += block.write(
            `${new Date(1.7e12 + (mib * 65536 + line) * 1000).toISOString()} web[${mib}] GET /item/${(line * 7919) % 10007} 200 ${line % 977}\n`,
            off,
          );
        }
      } else {
        continue;
      }
      await h.write(block, 0, block.length, mib * block.length);
    }
    await h.truncate(BYTES);
  } finally {
    await h.close();
  }
}

interface Figures {
  seqColdS: number;
  seqSecondS: number;
  seqWarmS: number;
  randS: number;
  writeS: number;
}

/** Reads from `url`, writes into `writeUrl`; `beforeCold` makes the next read cold. */
async function measure(
  url: string,
  writeUrl: string,
  tmpfs: string,
  beforeCold: () => Promise<void>,
  phase: (name: string) => void = () => undefined,
): Promise<Figures> {
  const out = path.join(tmpfs, 'out.raw');
  const seqRead = async (from = url): Promise<number> => {
    const s = await must('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', from, out]);
    fs.rmSync(out, { force: true });
    return s;
  };
  await beforeCold();
  const seqColdS = await seqRead();
  const seqSecondS = await seqRead();
  // A raw layer with a size keeps the offsets inside the working set (bench wraps at the image end).
  // (QEMU's nfs driver takes no URL inside json:, so the URL is spelled out as options.)
  const u = new URL(url);
  const file = { driver: 'nfs', server: { type: 'inet', host: u.hostname }, path: decodeURIComponent(u.pathname) };
  const windowed = `json:${JSON.stringify({ driver: 'raw', size: WARM_SET_MIB * 1024 * 1024, file })}`;
  await seqRead(windowed);
  const seqWarmS = (await seqRead(windowed)) * (MB / WARM_SET_MIB);
  phase('sequential reads');
  const randArgs = ['bench', '-c', String(RANDOM_READS), '-d', '8', '-s', '4096', '-S', String(4096 * 257), windowed];
  await must('qemu-img', randArgs);
  const randS = await must('qemu-img', randArgs);
  phase('random reads');
  const writeS = await must('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', path.join(tmpfs, 'src.raw'), writeUrl]);
  phase('sequential write');
  return { seqColdS, seqSecondS, seqWarmS, randS, writeS };
}

function kill(p: ChildProcess | undefined): void {
  if (p?.pid && p.exitCode === null) p.kill('SIGTERM');
}

function peakRssMiB(pid: number): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmHWM for process ${pid}`);
  return Number(m[1]) / 1024;
}

const load = (): string =>
  os
    .loadavg()
    .map((l) => l.toFixed(2))
    .join(' ');

async function main(): Promise<void> {
  for (const tool of ['qemu-img', 'ganesha.nfsd', 'rpcbind', 'nfs-ls']) {
    if (!which(tool))
      throw new Error(`missing ${tool}: apt-get install qemu-utils qemu-block-extra nfs-ganesha nfs-ganesha-vfs rpcbind libnfs-utils`);
  }
  const work = fs.mkdtempSync(path.join('/var/tmp', 'nfs-bench-'));
  const data = path.join(work, 'export');
  const state = path.join(work, 'state');
  const repoDir = path.join(work, 'repo');
  const tmpfs = fs.mkdtempSync(path.join(fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir(), 'nfs-bench-'));
  fs.mkdirSync(data);
  let rpcbind: ChildProcess | undefined;
  let ganesha: ChildProcess | undefined;
  const loadBefore = load();
  try {
    console.log(`load average ${loadBefore}; preparing a ${MB} MiB guest-like image`);
    const image = path.join(work, 'image.raw');
    await writeGuestLikeImage(image);
    const repo = await initRepository(repoDir);
    const web = loadVmDefinition(projectPath('lab-templates', 'vms', 'web.json'));
    const vm = { ...web, disks: web.disks.map((d) => ({ ...d, image })) };
    const diskName = vm.disks[0]!.name;
    let t0 = Date.now();
    const point = await backupVm({ repo, vm, disks: { [diskName]: image }, source: image });
    console.log(`backup of ${vm.name} (${diskName}) as ${point.id}: ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    fs.rmSync(image);
    const restored = path.join(data, `${diskName}.raw`);
    t0 = Date.now();
    await restoreDisk({ repo: await openRepository(repoDir), point: point.id, disk: diskName, to: restored });
    console.log(`restore to ${restored}: ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    await must('dd', ['if=/dev/urandom', `of=${tmpfs}/src.raw`, 'bs=1M', `count=${MB}`, 'status=none']);
    fs.writeFileSync(path.join(data, 'target.raw'), '');
    fs.truncateSync(path.join(data, 'target.raw'), BYTES);
    fs.chmodSync(work, 0o755);

    // ganesha registers only with a system rpcbind; restorelab then registers with it too.
    if (!(await portmapperListening('127.0.0.1', 111))) {
      rpcbind = spawn('rpcbind', ['-w', '-f'], { stdio: 'ignore' });
      for (let i = 0; i < 50 && !(await portmapperListening('127.0.0.1', 111)); i++) await sleep(100);
    }

    const conf = path.join(work, 'ganesha.conf');
    fs.writeFileSync(
      conf,
      `NFS_CORE_PARAM { NFS_Port = ${GANESHA_PORTS.nfs}; MNT_Port = ${GANESHA_PORTS.mount}; NLM_Port = 12047; Rquota_Port = 12046; Protocols = 3; Enable_NLM = false; Enable_RQUOTA = false; }
NFSV4 { Graceless = true; }
EXPORT { Export_Id = 1; Path = ${data}; Pseudo = ${data}; Access_Type = RW; Squash = No_Root_Squash; Protocols = 3; Transports = TCP; SecType = sys; FSAL { Name = VFS; } }
LOG { Default_Log_Level = EVENT; }
`,
    );
    ganesha = spawn('ganesha.nfsd', ['-F', '-f', conf, '-L', path.join(work, 'ganesha.log'), '-p', path.join(work, 'ganesha.pid')], {
      stdio: 'ignore',
    });
    let ready = false;
    for (let i = 0; i < 100 && !ready; i++) {
      await sleep(300);
      ready = (await run('nfs-ls', [`nfs://127.0.0.1${data}`])).code === 0;
    }
    if (!ready) throw new Error(`nfs-ganesha did not come up; see ${path.join(work, 'ganesha.log')}`);
    console.log('measuring nfs-ganesha');
    const peer = await measure(`nfs://127.0.0.1${data}/${diskName}.raw`, `nfs://127.0.0.1${data}/target.raw`, tmpfs, dropCaches);
    kill(ganesha);
    await new Promise((r) => ganesha!.once('close', r));
    ganesha = undefined;
    fs.rmSync(restored);

    // The publisher is a separate process (the real CLI), so its RSS is its own.
    const env = { ...process.env, RESTORELAB_STATE_DIR: state, RESTORELAB_REPO: repoDir };
    const pub = await exec(
      process.execPath,
      [
        projectPath('bin', 'restorelab.js'),
        'publish',
        point.id,
        '--nfs',
        '--nfs-port',
        String(OUR_PORTS.nfs),
        '--mount-port',
        String(OUR_PORTS.mount),
        '--background',
        '--json',
      ],
      { env, timeoutMs: 180_000 },
    );
    if (pub.code !== 0) throw new Error(`publish --nfs failed: ${pub.stdout} ${pub.stderr}`);
    const published = JSON.parse(pub.stdout.trim().split('\n').at(-1)!) as { publication: string; nfs: { url: string } };
    const pid = listPublications(state).find((p) => p.id === published.publication)?.pid;
    if (!pid) throw new Error(`publication ${published.publication} has no running publisher`);
    console.log(`measuring restorelab (publisher pid ${pid}, ${published.nfs.url})`);
    // The publisher was just started: its chunk cache is empty; dropping the page cache makes the pack files cold too.
    // VmHWM only grows: read after each phase, it shows which phase raised the peak.
    const rssAfter: Array<[string, number]> = [['publish (idle)', peakRssMiB(pid)]];
    const ours = await measure(published.nfs.url, published.nfs.url, tmpfs, dropCaches, (name) => rssAfter.push([name, peakRssMiB(pid)]));
    const rss = peakRssMiB(pid);
    await removePublication(state, published.publication, { discard: true, as: LOCAL_USER });

    const gib = BYTES / 2 ** 30;
    const rate = (s: number): string => `${(gib / s).toFixed(2)} GiB/s`;
    const iops = (s: number): string => `${Math.round(RANDOM_READS / s)} IOPS`;
    const row = (name: string, o: number, p: number, unit: (s: number) => string, target: number): void => {
      const ratio = p / o;
      console.log(
        `${name.padEnd(40)} restorelab ${unit(o).padStart(12)}   ganesha ${unit(p).padStart(12)}   ratio ${ratio.toFixed(2)}x  target >= ${target}x  ${ratio >= target ? 'PASS' : 'MISS'}`,
      );
    };
    console.log(`\nNFS v3 over loopback, ${MB} MiB guest-like disk, qemu-img (libnfs); load average before ${loadBefore}, now ${load()}`);
    row('sequential read cold (convert)', ours.seqColdS, peer.seqColdS, rate, 0.5);
    row(`sequential read warm (convert, ${WARM_SET_MIB} MiB set)`, ours.seqWarmS, peer.seqWarmS, rate, 0.8);
    console.log(
      `${'  second pass over the whole disk'.padEnd(40)} restorelab ${rate(ours.seqSecondS).padStart(12)}   ganesha ${rate(peer.seqSecondS).padStart(12)}   ratio ${(peer.seqSecondS / ours.seqSecondS).toFixed(2)}x  (larger than the chunk cache: cold for restorelab)`,
    );
    row(`random 4K read QD8 warm (${WARM_SET_MIB} MiB set)`, ours.randS, peer.randS, iops, 0.5);
    row('sequential write (convert -n)', ours.writeS, peer.writeS, rate, 0.5);
    console.log(`${'publisher peak RSS (VmHWM)'.padEnd(40)} ${rss.toFixed(1)} MiB   target < 300 MiB  ${rss < 300 ? 'PASS' : 'MISS'}`);
    console.log(
      `  peak after each phase (chunk cache ${process.env.RESTORELAB_CHUNK_CACHE_MIB ?? 'default'} MiB): ${rssAfter.map(([n, m]) => `${n} ${m.toFixed(0)} MiB`).join(', ')}`,
    );
  } finally {
    kill(ganesha);
    for (const p of listPublications(state)) await removePublication(state, p.id, { discard: true, as: p.owner }).catch(() => undefined);
    kill(rpcbind);
    fs.rmSync(work, { recursive: true, force: true });
    fs.rmSync(tmpfs, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});

/**
 * NFS benchmark: restorelab's NfsServer vs nfs-ganesha (VFS backend) on the
 * same file, in the same run, through QEMU's nfs:// driver (libnfs).
 * Figures: sequential read (qemu-img convert), random 4 KiB reads at queue
 * depth 8 (qemu-img bench), sequential write (qemu-img convert -n into the
 * export). Our server serves the directory through bench/nfs-file-datastore.ts,
 * not yet through the publication datastore.
 *
 * Needs root (port 111) and: qemu-utils qemu-block-extra nfs-ganesha nfs-ganesha-vfs rpcbind.
 * Size: NFS_BENCH_MB (default 1024).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { which } from '../src/host/exec.js';
import { NfsServer, newServerId } from '../src/nfs/server.js';
import { pmapGetport, portmapperListening } from '../src/nfs/portmap.js';
import { FileDatastore } from './nfs-file-datastore.js';

const MB = Number(process.env.NFS_BENCH_MB ?? 1024);
const BYTES = MB * 1024 * 1024;

function run(cmd: string, args: string[]): Promise<{ code: number | null; out: string; seconds: number }> {
  const t0 = process.hrtime.bigint();
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    // Keep only the tail: enough for an error message, never a whole image.
    const keep = (c: Buffer): void => { out = (out + c.toString()).slice(-65536); };
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

interface Figures { seqReadS: number; randReadS: number; seqWriteS: number }

async function measure(base: string, tmpfs: string): Promise<Figures> {
  const src = `${base}/disk.raw`;
  const out = path.join(tmpfs, 'out.raw');
  const seqReadS = await must('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', src, out]);
  fs.rmSync(out, { force: true });
  const randReadS = await must('qemu-img', ['bench', '-f', 'raw', '-c', '20000', '-d', '8', '-s', '4096', '-S', String(4096 * 257), src]);
  const seqWriteS = await must('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', path.join(tmpfs, 'src.raw'), `${base}/target.raw`]);
  return { seqReadS, randReadS, seqWriteS };
}

function kill(p: ChildProcess | undefined): void {
  if (p?.pid && p.exitCode === null) p.kill('SIGTERM');
}

async function main(): Promise<void> {
  for (const tool of ['qemu-img', 'ganesha.nfsd', 'rpcbind', 'nfs-ls']) {
    if (!which(tool)) throw new Error(`missing ${tool}: apt-get install qemu-utils qemu-block-extra nfs-ganesha nfs-ganesha-vfs rpcbind libnfs-utils`);
  }
  const work = fs.mkdtempSync(path.join('/var/tmp', 'nfs-bench-'));
  const data = path.join(work, 'export');
  const tmpfs = fs.mkdtempSync(path.join(fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir(), 'nfs-bench-'));
  fs.mkdirSync(data);
  let rpcbind: ChildProcess | undefined;
  let ganesha: ChildProcess | undefined;
  let server: NfsServer | undefined;
  try {
    console.log(`preparing ${MB} MiB test file in ${data}`);
    await must('dd', ['if=/dev/urandom', `of=${data}/disk.raw`, 'bs=1M', `count=${MB}`, 'status=none']);
    await must('dd', ['if=/dev/urandom', `of=${tmpfs}/src.raw`, 'bs=1M', `count=${MB}`, 'status=none']);
    fs.writeFileSync(path.join(data, 'target.raw'), '');
    fs.truncateSync(path.join(data, 'target.raw'), BYTES);
    fs.chmodSync(work, 0o755);

    if (!(await portmapperListening('127.0.0.1', 111))) {
      rpcbind = spawn('rpcbind', ['-w', '-f'], { stdio: 'ignore' });
      for (let i = 0; i < 50 && !(await portmapperListening('127.0.0.1', 111)); i++) await sleep(100);
    }

    const conf = path.join(work, 'ganesha.conf');
    fs.writeFileSync(conf, `NFS_CORE_PARAM { NFS_Port = 12049; MNT_Port = 12048; NLM_Port = 12047; Rquota_Port = 12046; Protocols = 3; Enable_NLM = false; Enable_RQUOTA = false; }
NFSV4 { Graceless = true; }
EXPORT { Export_Id = 1; Path = ${data}; Pseudo = ${data}; Access_Type = RW; Squash = No_Root_Squash; Protocols = 3; Transports = TCP; SecType = sys; FSAL { Name = VFS; } }
LOG { Default_Log_Level = EVENT; }
`);
    ganesha = spawn('ganesha.nfsd', ['-F', '-f', conf, '-L', path.join(work, 'ganesha.log'), '-p', path.join(work, 'ganesha.pid')], { stdio: 'ignore' });
    let ready = false;
    for (let i = 0; i < 100 && !ready; i++) {
      await sleep(300);
      ready = (await run('nfs-ls', [`nfs://127.0.0.1${data}`])).code === 0;
    }
    if (!ready) throw new Error(`nfs-ganesha did not come up; see ${path.join(work, 'ganesha.log')}`);
    await must('dd', [`if=${data}/disk.raw`, 'of=/dev/null', 'bs=1M', 'status=none']);
    const peer = await measure(`nfs://127.0.0.1${data}`, tmpfs);
    kill(ganesha);
    await new Promise((r) => ganesha!.once('close', r));
    ganesha = undefined;

    const ds = new FileDatastore(data);
    server = new NfsServer({
      datastore: ds, serverId: newServerId(), exportPath: '/restorelab', allow: ['127.0.0.1/32'],
      nfsPort: 22049, mountPort: 22048, portmapPort: 111, host: '127.0.0.1',
    });
    const ports = await server.start();
    const got = await pmapGetport('127.0.0.1', 111, { prog: 100003, vers: 3, prot: 6, port: 0 });
    if (got !== ports.nfs) throw new Error(`portmapper maps NFS to ${got}, expected ${ports.nfs}`);
    const ours = await measure('nfs://127.0.0.1/restorelab', tmpfs);
    await server.stop();
    await ds.close();
    server = undefined;

    const gib = BYTES / 2 ** 30;
    const row = (name: string, o: number, p: number, unit: (s: number) => string): void =>
      console.log(`${name.padEnd(34)} restorelab ${unit(o).padStart(14)}   ganesha ${unit(p).padStart(14)}   ratio (ours/peer time) ${(o / p).toFixed(2)}`);
    const rate = (s: number): string => `${(gib / s).toFixed(2)} GiB/s`;
    const iops = (s: number): string => `${Math.round(20000 / s)} IOPS`;
    console.log(`\nNFS v3 over loopback, ${MB} MiB file, qemu-img (libnfs)`);
    row('sequential read (convert)', ours.seqReadS, peer.seqReadS, rate);
    row('random 4K read QD8 (bench, 20000)', ours.randReadS, peer.randReadS, iops);
    row('sequential write (convert -n)', ours.seqWriteS, peer.seqWriteS, rate);
  } finally {
    await server?.stop();
    kill(ganesha);
    kill(rpcbind);
    fs.rmSync(work, { recursive: true, force: true });
    fs.rmSync(tmpfs, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});

/**
 * Boot storm: N copies of the `web` test guest recovered at once from one
 * repository (one restore point per VM, all sharing their chunks), against
 * the same N guests booted at once from local raw copies with the plain qemu
 * driver, in the same run. Every VM runs in a lab of its own (they all keep
 * the production address 192.168.77.10), so both sides see the same network
 * work. Printed per N: time from the start to every heartbeat and to every
 * first HTTP answer (through each lab's masquerade address, polled from the
 * start on both sides). A heartbeat is the same on both sides: the one
 * `recover` waits for (src/verify/heartbeat.ts: three agent answers over at
 * least four seconds), so the first agent answer would flatter the peer.
 * Also printed: each side's QEMU CPU seconds at the heartbeat (the guests'
 * own work), host CPU busy and the most memory in use. Target: the slowest recovered VM
 * ≤ 1.3x the slowest local one, at every N.
 *
 *   node dist/bench/boot-storm.js [--publish fuse|nbd] [--sizes 1,3,6]
 */
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { projectPath } from '../src/paths.js';
import { initRepository } from '../src/repo/repository.js';
import { backupVm } from '../src/backup/engine.js';
import { loadVmDefinition, type VmDefinition } from '../src/vm/definition.js';
import { addLabTap, labDown, labUp, loadLab, masqueradeAddress, removeLabTap, type LabState } from '../src/lab/lab.js';
import { QemuDriver } from '../src/hypervisor/qemu.js';
import { heartbeat } from '../src/verify/heartbeat.js';
import { heartbeatProbes } from '../src/bringup/bringup.js';
import { recover, stopSession } from '../src/session/recover.js';
import type { SessionPublish } from '../src/session/session.js';
import { probeAccel } from '../src/host/accel.js';
import { firstHttp } from './first-http.js';
import { guestImage } from '../test/helpers/guests.js';

const { values: args } = parseArgs({
  options: { publish: { type: 'string', default: 'fuse' }, sizes: { type: 'string', default: '1,3,6' } },
});
const publishVia = args.publish;
if (publishVia !== 'fuse' && publishVia !== 'nbd')
  throw new Error(`--publish ${publishVia}: use fuse or nbd (NFS serves one session per host)`);
const publish = { via: publishVia } as SessionPublish;
const sizes = args.sizes.split(',').map(Number);
if (sizes.some((n) => !Number.isInteger(n) || n < 1 || n > 12)) throw new Error(`--sizes ${args.sizes}: whole numbers from 1 to 12`);
const maxN = Math.max(...sizes);

const dir = mkdtempSync(join(tmpdir(), 'rl-bench-storm-'));
const stateDir = join(dir, 'state');
const repoDir = join(dir, 'repo');
/** The bench's own masquerade subnets (172.18.120+k), apart from the test suite's registry. */
const SUBNET_BASE = 120;

interface VmTimes {
  heartbeat: number;
  http: number;
  /** CPU seconds its QEMU had used at the heartbeat: the guest's own work, apart from what serving its disk cost. */
  qemuCpu: number;
}

const CLOCK_TICKS = 100;

/** utime + stime of a process, in seconds (NaN when it is gone). */
function cpuSeconds(pid: number | undefined): number {
  if (pid === undefined) return Number.NaN;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / CLOCK_TICKS;
  } catch {
    return Number.NaN;
  }
}

/** Host CPU busy share and peak memory in use while `work` runs, from /proc. */
async function measured<T>(work: () => Promise<T>): Promise<{ value: T; cpuBusy: number; peakMemMiB: number }> {
  const cpu = (): { busy: number; total: number } => {
    const f = (readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '').split(/\s+/).slice(1).map(Number);
    const total = f.reduce((a, b) => a + b, 0);
    return { busy: total - (f[3] ?? 0) - (f[4] ?? 0), total };
  };
  const memUsedMiB = (): number => {
    const m = Object.fromEntries(
      readFileSync('/proc/meminfo', 'utf8')
        .split('\n')
        .map((l) => l.split(/:\s+/))
        .map(([k, v]) => [k, Number.parseInt(v ?? '0', 10)]),
    ) as Record<string, number>;
    return ((m.MemTotal ?? 0) - (m.MemAvailable ?? 0)) / 1024;
  };
  const c0 = cpu();
  let peak = memUsedMiB();
  const sampler = setInterval(() => (peak = Math.max(peak, memUsedMiB())), 250);
  try {
    const value = await work();
    const c1 = cpu();
    return { value, cpuBusy: (c1.busy - c0.busy) / Math.max(1, c1.total - c0.total), peakMemMiB: peak };
  } finally {
    clearInterval(sampler);
  }
}

interface StormVm {
  vm: VmDefinition;
  labFile: string;
  lab: LabState;
  url: string;
}

async function prepare(image: string): Promise<StormVm[]> {
  const template = loadVmDefinition(projectPath('lab-templates', 'vms', 'web.json'));
  const repo = await initRepository(repoDir);
  const vms: StormVm[] = [];
  for (let k = 1; k <= maxN; k++) {
    const vm: VmDefinition = { ...template, name: `storm${k}` };
    await backupVm({ repo, vm, disks: { root: image }, source: image });
    const labFile = join(dir, `storm${k}.json`);
    writeFileSync(
      labFile,
      JSON.stringify({
        name: `storm${k}`,
        networks: [{ name: 'prod', subnet: '192.168.77.0/24', gateway: '192.168.77.1', masquerade: `172.18.${SUBNET_BASE + k}.0/24` }],
      }),
    );
    const lab = await labUp(loadLab(labFile), { stateDir });
    const ip = vm.nics[0]?.ip;
    if (!ip) throw new Error('the web definition has no NIC address');
    vms.push({ vm, labFile, lab, url: `http://${masqueradeAddress(lab, ip)}/` });
  }
  return vms;
}

/** N plain QEMUs on local raw copies, started together. */
async function plainStorm(vms: StormVm[], image: string, accel: 'kvm' | 'tcg'): Promise<VmTimes[]> {
  const qemu = new QemuDriver({ stateDir, accel });
  const started = await Promise.all(
    vms.map(async (s) => {
      const local = join(dir, `${s.vm.name}.raw`);
      copyFileSync(image, local);
      const nic = s.vm.nics[0]!;
      const { tap, netns } = await addLabTap(stateDir, s.lab.name, nic.network);
      return { s, local, tap, netns, mac: nic.mac };
    }),
  );
  const t0 = performance.now();
  const domains = await Promise.all(
    started.map((x) =>
      qemu.start({
        vm: { ...x.s.vm, name: `${x.s.vm.name}-plain` },
        disks: [{ name: 'root', path: x.local, format: 'raw' }],
        nics: [{ kind: 'tap', tap: x.tap, netns: x.netns, mac: x.mac }],
      }),
    ),
  );
  try {
    return await Promise.all(
      domains.map(async (dom, i) => {
        const x = started[i]!;
        const http = firstHttp(x.s.url, t0);
        const hb = await heartbeat(heartbeatProbes(dom, x.s.vm, { kind: 'lab', lab: x.s.lab }), { maxBootSeconds: 600 });
        if (hb.result !== 'passed') throw new Error(`${x.s.vm.name} (local raw): ${hb.detail}`);
        const at = { heartbeat: (performance.now() - t0) / 1000, qemuCpu: cpuSeconds(dom.pid()) };
        return { ...at, http: await http };
      }),
    );
  } finally {
    await Promise.allSettled(domains.map((d) => d.destroy()));
    for (const x of started) {
      await removeLabTap(stateDir, x.s.lab.name, x.tap);
      rmSync(x.local, { force: true });
    }
  }
}

/** N recoveries from the repository, started together. */
async function recoverStorm(vms: StormVm[], accel: 'kvm' | 'tcg'): Promise<VmTimes[]> {
  const t0 = performance.now();
  // Polled from the start: recover returns only after the heartbeat.
  const http = vms.map((s) => firstHttp(s.url, t0));
  const sessions = await Promise.allSettled(
    vms.map(async (s) => {
      const session = await recover({
        repo: repoDir,
        vm: s.vm.name,
        lab: s.labFile,
        driver: 'qemu',
        stateDir,
        accel,
        publish,
        heartbeatTimeoutMs: 600_000,
      });
      return { session, heartbeat: (performance.now() - t0) / 1000, qemuCpu: cpuSeconds(session.qemuPid) };
    }),
  );
  try {
    return await Promise.all(
      sessions.map(async (r, i) => {
        if (r.status === 'rejected') throw r.reason;
        return { heartbeat: r.value.heartbeat, qemuCpu: r.value.qemuCpu, http: await http[i]! };
      }),
    );
  } finally {
    for (const r of sessions) if (r.status === 'fulfilled') await stopSession(stateDir, r.value.session.id);
  }
}

const max = (xs: number[]): number => Math.max(...xs);
const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;
const fmt = (xs: number[]): string => xs.map((x) => x.toFixed(1)).join(' ');

async function main(): Promise<void> {
  const image = await guestImage('web');
  // Decided once, so neither side pays for the probe.
  const env = process.env.RESTORELAB_ACCEL;
  const accel = env === 'kvm' || env === 'tcg' ? env : (await probeAccel({ cacheDir: stateDir })).accel;
  const vms = await prepare(image);
  const lines: string[] = [];
  try {
    for (const n of sizes) {
      const group = vms.slice(0, n);
      const plain = await measured(() => plainStorm(group, image, accel));
      const ours = await measured(() => recoverStorm(group, accel));
      console.log(
        `N=${n} plain:   heartbeats ${fmt(plain.value.map((t) => t.heartbeat))} s; http ${fmt(plain.value.map((t) => t.http))} s`,
      );
      console.log(`N=${n} recover: heartbeats ${fmt(ours.value.map((t) => t.heartbeat))} s; http ${fmt(ours.value.map((t) => t.http))} s`);
      for (const k of ['heartbeat', 'http'] as const) {
        const o = max(ours.value.map((t) => t[k]));
        const p = max(plain.value.map((t) => t[k]));
        lines.push(
          `N=${n} ${k.padEnd(9)} slowest: recover ${o.toFixed(2).padStart(7)} s  local raw ${p.toFixed(2).padStart(7)} s  ratio ${(o / p).toFixed(2)}` +
            ` (mean ${(mean(ours.value.map((t) => t[k])) / mean(plain.value.map((t) => t[k]))).toFixed(2)}; target <= 1.30)`,
        );
      }
      lines.push(
        `N=${n} qemu:     CPU seconds at the heartbeat, mean per VM: recover ${mean(ours.value.map((t) => t.qemuCpu)).toFixed(2)} s, local ${mean(plain.value.map((t) => t.qemuCpu)).toFixed(2)} s`,
      );
      lines.push(
        `N=${n} host:     CPU busy recover ${(ours.cpuBusy * 100).toFixed(0)} %, local ${(plain.cpuBusy * 100).toFixed(0)} %;` +
          ` peak memory in use recover ${ours.peakMemMiB.toFixed(0)} MiB, local ${plain.peakMemMiB.toFixed(0)} MiB`,
      );
    }
  } finally {
    for (const s of vms) await labDown(s.lab.name, { stateDir, quietIfMissing: true });
  }
  console.log(`\nboot storm of the web guest, publish ${publishVia}, accel ${accel}`);
  for (const l of lines) console.log(l);
}

main().then(
  () => rmSync(dir, { recursive: true, force: true }),
  (e: unknown) => {
    console.error(e, `\n(state kept in ${dir})`);
    process.exitCode = 1;
  },
);

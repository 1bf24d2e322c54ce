/**
 * The embedded `qemu` driver: restorelab runs qemu-system-x86_64 itself.
 *
 * Each domain owns a directory <stateDir>/vms/<name>/ holding qmp.sock,
 * qga.sock, console.log, qemu.pid, spec.json and, once it is over, outcome.json
 * ("stopped" after our own stop, "failed" with a reason otherwise). QEMU is
 * spawned detached in its own session so it outlives the CLI; the process
 * 'exit' handler records crashes while we live, and after a restart the
 * pidfile + QMP socket let a new driver re-attach (a dead pid without an
 * outcome of "stopped" means the VM failed while nobody watched).
 *
 * A NIC that is a tap inside a lab namespace is opened by running QEMU under
 * `ip netns exec NS`: /dev/net/tun binds a tap by name in the caller's
 * namespace, so QEMU has to be in the lab namespace to open it. `ip netns
 * exec` execs QEMU, so the pid we hold is QEMU's own. The QMP/QGA sockets are
 * filesystem sockets and stay reachable from the host namespace.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, openSync, closeSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { RestorelabError, missingComponent, isErrno } from '../errors.js';
import { assertBridgesExist } from '../host/bridges.js';
import { exec, which } from '../host/exec.js';
import { probeAccel } from '../host/accel.js';
import { stdioWithoutFuse } from '../host/fds.js';
import { processAlive } from '../host/process.js';
import { QmpClient } from './qmp.js';
import { QgaClient } from './qga.js';
import { lendLabTaps } from './tap-handover.js';
import { VGA_XP_COMMAND, parseXpBytes } from './vga.js';
import { firmwareFor } from './firmware.js';
import type { Domain, DomainInfo, DomainSpec, DomainState, Hypervisor, NicAttachment } from './types.js';
import { isNbdUrl, parseNbdUrl } from '../nbd/url.js';

export interface QemuDriverOptions {
  stateDir: string;
  /** 'auto' probes; env RESTORELAB_ACCEL wins over this. */
  accel?: 'auto' | 'kvm' | 'tcg';
}

interface Outcome {
  state: 'stopped' | 'failed';
  reason: string;
  at: string;
}

/** How long a starting QEMU may take to answer on QMP (seconds under TCG on a loaded 2-core host). */
const SOCKET_WAIT_MS = 30_000;

function pidAlive(pid: number): boolean {
  if (!processAlive(pid)) return false;
  // A recycled pid belongs to something else: check it is still a QEMU.
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('qemu-system');
  } catch {
    return false;
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** `uefi`: the firmware and this domain's own variable store, for a VM whose definition says `"firmware": "uefi"` (./firmware.ts). */
export function qemuArgs(spec: DomainSpec, dir: string, accel: 'kvm' | 'tcg', uefi?: { image: string; vars: string }): string[] {
  const vm = spec.vm;
  const args = [
    '-name',
    `${vm.name},process=rl-${vm.name}`,
    '-nodefaults',
    '-no-user-config',
    '-machine',
    vm.machine ?? 'pc',
    '-accel',
    accel,
    '-m',
    String(vm.memoryMiB),
    '-smp',
    String(vm.vcpus),
    // No window and no VNC, but a VGA adapter so QMP screendump has a screen.
    '-display',
    'none',
    '-vga',
    'std',
    '-qmp',
    `unix:${join(dir, 'qmp.sock')},server=on,wait=off`,
    '-chardev',
    `socket,id=qga,path=${join(dir, 'qga.sock')},server=on,wait=off`,
    '-device',
    'virtio-serial-pci,id=vser0',
    '-device',
    'virtserialport,bus=vser0.0,chardev=qga,name=org.qemu.guest_agent.0',
    '-chardev',
    `file,id=console,path=${join(dir, 'console.log')}`,
    '-serial',
    'chardev:console',
    '-pidfile',
    join(dir, 'qemu.pid'),
  ];
  if (accel === 'kvm') args.push('-cpu', 'host');
  if (uefi)
    args.push(
      '-drive',
      `if=pflash,format=raw,unit=0,readonly=on,file=${drivePath(uefi.image)}`,
      '-drive',
      `if=pflash,format=raw,unit=1,file=${drivePath(uefi.vars)}`,
    );
  const busOf = (name: string): string => vm.disks.find((x) => x.name === name)?.bus ?? 'virtio';
  // One virtio-scsi controller for every disk on the scsi bus: the guest sees /dev/sdX, as on its source host.
  if (spec.disks.some((d) => busOf(d.name) === 'scsi')) args.push('-device', 'virtio-scsi-pci,id=scsi0');
  spec.disks.forEach((d, i) => {
    const bus = busOf(d.name);
    args.push(
      '-blockdev',
      JSON.stringify({
        driver: d.format,
        'node-name': `disk-${d.name}`,
        'read-only': Boolean(d.readOnly),
        // cache.direct off: FUSE-published files do not support O_DIRECT.
        file: fileNode(d.path, Boolean(d.readOnly)),
      }),
    );
    const bootindex = i === 0 ? ',bootindex=0' : '';
    if (bus === 'scsi') args.push('-device', `scsi-hd,bus=scsi0.0,drive=disk-${d.name},id=dev-${d.name}${bootindex}`);
    else if (bus === 'ide' || bus === 'sata') args.push('-device', `ide-hd,drive=disk-${d.name},id=dev-${d.name}${bootindex}`);
    else args.push('-device', `virtio-blk-pci,drive=disk-${d.name},id=dev-${d.name}${bootindex}`);
  });
  spec.nics.forEach((n, i) => {
    const model = n.model === 'e1000' ? 'e1000' : 'virtio-net-pci';
    const tap = n.kind === 'tap' ? n.tap : bridgeTapName(vm.name, i);
    args.push('-netdev', `tap,id=net${i},ifname=${tap},script=no,downscript=no`);
    args.push('-device', `${model},netdev=net${i},mac=${n.mac}`);
  });
  return args;
}

/** A path inside a -drive option: QEMU's option syntax doubles a comma to keep it literal. */
function drivePath(path: string): string {
  return path.replaceAll(',', ',,');
}

/**
 * The protocol node under a disk: a local file, an `nfs://host/path` URL
 * served through QEMU's own libnfs driver (qemu-block-extra), which finds
 * mountd and nfsd through the portmapper on the server, or an NBD URL
 * (`nbd+unix:///EXPORT?socket=PATH`, `nbd://HOST:PORT/EXPORT`) that QEMU's
 * built-in NBD client opens: no FUSE and no kernel in the data path.
 */
export function fileNode(path: string, readOnly: boolean): Record<string, unknown> {
  if (isNbdUrl(path)) {
    const t = parseNbdUrl(path);
    const server = t.server.type === 'unix' ? t.server : { type: 'inet', host: t.server.host, port: String(t.server.port) };
    return { driver: 'nbd', server, export: t.export, 'read-only': readOnly };
  }
  if (path.startsWith('nfs://')) {
    const url = new URL(path);
    return { driver: 'nfs', server: { type: 'inet', host: url.hostname }, path: decodeURIComponent(url.pathname), 'read-only': readOnly };
  }
  return { driver: 'file', filename: path, 'read-only': readOnly, aio: 'threads' };
}

/** A disk served over the host's network (not a file, not a unix socket). */
function needsHostNetwork(path: string): boolean {
  return path.startsWith('nfs://') || path.startsWith('nbd://');
}

/** For bridge attachments the driver makes its own tap: at most 15 characters. */
function bridgeTapName(vm: string, i: number): string {
  let h = 0;
  for (const c of vm) h = (h * 31 + c.charCodeAt(0)) >>> 0;
  return `rlb${h.toString(36).slice(0, 8)}${i}`;
}

function netnsOf(nics: NicAttachment[]): string | undefined {
  const spaces = new Set(nics.flatMap((n) => (n.kind === 'tap' && n.netns ? [n.netns] : [])));
  if (spaces.size > 1) throw new RestorelabError('NICS_IN_SEVERAL_NETNS', `NICs are in several namespaces: ${[...spaces].join(', ')}`);
  return [...spaces][0];
}

export class QemuDriver implements Hypervisor {
  readonly driver = 'qemu' as const;
  private readonly live = new Map<string, QemuDomain>();

  constructor(private readonly opts: QemuDriverOptions) {}

  private vmDir(name: string): string {
    return join(this.opts.stateDir, 'vms', name);
  }

  async resolveAccel(spec?: DomainSpec): Promise<'kvm' | 'tcg'> {
    const env = process.env.RESTORELAB_ACCEL;
    const want = spec?.accel ?? (env === 'kvm' || env === 'tcg' ? env : undefined) ?? this.opts.accel ?? 'auto';
    if (want !== 'auto') return want;
    return (await probeAccel({ cacheDir: this.opts.stateDir })).accel;
  }

  async start(spec: DomainSpec): Promise<Domain> {
    const qemu = which('qemu-system-x86_64');
    if (!qemu) throw missingComponent('qemu-system-x86_64', 'apt-get install qemu-system-x86');
    const name = spec.vm.name;
    const dir = this.vmDir(name);
    const old = await this.attach(name);
    if (old && (await old.state()) === 'running') {
      throw new RestorelabError('VM_ALREADY_RUNNING', `VM ${name} is already running under the qemu driver`, {
        hint: `stop it first, or remove ${dir}`,
      });
    }
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(dir, { recursive: true });
    const accel = await this.resolveAccel(spec);
    const netns = netnsOf(spec.nics);
    await assertBridgesExist(spec.nics.flatMap((n) => (n.kind === 'bridge' ? [n.bridge] : [])));
    const bridgeTaps: string[] = [];
    try {
      for (const [i, n] of spec.nics.entries()) {
        if (n.kind !== 'bridge') continue;
        const tap = bridgeTapName(name, i);
        await run('ip', ['tuntap', 'add', 'dev', tap, 'mode', 'tap']);
        bridgeTaps.push(tap);
        await run('ip', ['link', 'set', tap, 'master', n.bridge, 'up']);
      }
    } catch (e) {
      for (const tap of bridgeTaps) await exec('ip', ['link', 'del', tap]);
      rmSync(dir, { recursive: true, force: true });
      throw e;
    }
    // QEMU in the lab namespace would not reach an NFS or NBD TCP server on
    // the host's loopback: it then starts in the host namespace with its lab
    // taps lent, and opens them by their host-side names. A unix socket is a
    // path, reachable from any namespace.
    const lent = netns && spec.disks.some((d) => needsHostNetwork(d.path)) ? await lendLabTaps(spec.nics) : undefined;
    const uefi = firmwareFor(spec, dir);
    const args = qemuArgs(lent ? { ...spec, nics: lent.nics } : spec, dir, accel, uefi);
    try {
      writeFileSync(
        join(dir, 'spec.json'),
        JSON.stringify({ spec, accel, args, bridgeTaps, startedAt: new Date().toISOString() }, null, 2),
      );
    } catch (e) {
      await lent?.giveBack().catch(() => undefined);
      throw e;
    }
    const log = openSync(join(dir, 'qemu.log'), 'a');
    const [cmd, argv] = netns && !lent ? ['ip', ['netns', 'exec', netns, qemu, ...args]] : [qemu, args];
    const child = spawn(cmd, argv, { detached: true, stdio: stdioWithoutFuse(['ignore', log, log]) });
    closeSync(log);
    const dom = new QemuDomain(name, dir);
    this.live.set(name, dom);
    child.on('exit', (code, signal) => {
      // Our own stop/destroy writes its outcome first; anything else is a failure.
      if (!existsSync(join(dir, 'outcome.json')) && existsSync(dir)) {
        dom.recordOutcome('failed', signal ? `qemu killed by ${signal}` : `qemu exited with code ${code}`);
      }
      dom.emitExit();
    });
    child.unref();
    try {
      await dom.waitReady(child.pid ?? 0);
      // QEMU answers its monitor only once its devices, taps included, are set up.
      await lent?.giveBack();
    } catch (e) {
      await lent?.giveBack().catch(() => undefined);
      child.kill('SIGKILL');
      const tail = existsSync(join(dir, 'qemu.log')) ? readFileSync(join(dir, 'qemu.log'), 'utf8').slice(-2000) : '';
      await dom.destroy();
      throw new RestorelabError('VM_START_FAILED', `qemu could not start VM ${name}: ${(e as Error).message}\n${tail}`, { cause: e });
    }
    return dom;
  }

  async attach(name: string): Promise<QemuDomain | undefined> {
    const dir = this.vmDir(name);
    const known = this.live.get(name);
    // A domain destroyed since (its directory gone) is no longer there to attach to.
    if (known && existsSync(join(dir, 'spec.json'))) return known;
    this.live.delete(name);
    if (!existsSync(join(dir, 'spec.json'))) return undefined;
    const dom = new QemuDomain(name, dir);
    this.live.set(name, dom);
    return dom;
  }

  async list(): Promise<DomainInfo[]> {
    const root = join(this.opts.stateDir, 'vms');
    if (!existsSync(root)) return [];
    const out: DomainInfo[] = [];
    for (const name of readdirSync(root)) {
      const dom = await this.attach(name);
      if (!dom) continue;
      const state = await dom.state();
      const info: DomainInfo = { name, driver: 'qemu', state };
      const pid = dom.pid();
      if (pid !== undefined && state !== 'failed' && state !== 'stopped') info.pid = pid;
      const oc = dom.outcome();
      if (oc) info.reason = oc.reason;
      out.push(info);
    }
    return out;
  }

  /** Holds nothing open between calls (each monitor use is its own connection). */
  async close(): Promise<void> {
    // nothing to release
  }
}

async function run(cmd: string, args: string[]): Promise<void> {
  const r = await exec(cmd, args, { timeoutMs: 10_000 });
  if (r.code !== 0) throw new RestorelabError('HOST_COMMAND_FAILED', `${cmd} ${args.join(' ')} failed: ${r.stderr.trim()}`);
}

export class QemuDomain implements Domain {
  private exitWaiters: (() => void)[] = [];
  readonly agentSocket: string;
  readonly consoleLog: string;

  constructor(
    readonly name: string,
    readonly dir: string,
  ) {
    this.agentSocket = join(dir, 'qga.sock');
    this.consoleLog = join(dir, 'console.log');
  }

  /** QEMU's pid while it runs: its pidfile outlives a QEMU that was killed. */
  pid(): number | undefined {
    const n = this.pidFromFile();
    return n !== undefined && pidAlive(n) ? n : undefined;
  }

  /** What QEMU wrote to its pidfile, alive or not. */
  private pidFromFile(): number | undefined {
    try {
      const n = Number(readFileSync(join(this.dir, 'qemu.pid'), 'utf8').trim());
      return Number.isInteger(n) && n > 0 ? n : undefined;
    } catch {
      return undefined;
    }
  }

  outcome(): Outcome | undefined {
    try {
      return JSON.parse(readFileSync(join(this.dir, 'outcome.json'), 'utf8')) as Outcome;
    } catch {
      return undefined;
    }
  }

  recordOutcome(state: Outcome['state'], reason: string): void {
    if (!existsSync(this.dir)) return;
    writeFileSync(join(this.dir, 'outcome.json'), JSON.stringify({ state, reason, at: new Date().toISOString() }));
  }

  emitExit(): void {
    const w = this.exitWaiters;
    this.exitWaiters = [];
    for (const f of w) f();
  }

  async waitReady(childPid: number): Promise<void> {
    const deadline = Date.now() + SOCKET_WAIT_MS;
    while (Date.now() < deadline) {
      if (existsSync(join(this.dir, 'qmp.sock')) && this.pidFromFile() !== undefined) {
        try {
          // On a loaded host a starting QEMU can take seconds to greet on QMP:
          // that is still a start, so the probe waits as long as the start may take.
          await this.withMonitor(async () => undefined, Math.max(5000, deadline - Date.now()));
          return;
        } catch (e) {
          // QEMU binds the socket (the file appears) a moment before it
          // listens: a refused connect then only means "not yet".
          if (!isErrno(e, 'ECONNREFUSED') && !isErrno(e, 'ENOENT')) throw e;
        }
      }
      if (this.outcome()?.state === 'failed') throw new Error(this.outcome()?.reason);
      if (childPid && !processAlive(childPid)) throw new Error('qemu exited during start');
      await sleep(50);
    }
    throw new Error(`no answer on QMP within ${SOCKET_WAIT_MS} ms`);
  }

  /**
   * Runs `fn` on a fresh QMP connection and closes it. QEMU's QMP socket
   * serves one client at a time, so holding it would lock out another
   * restorelab process (the CLI asking a running daemon's VM for its state).
   */
  async withMonitor<T>(fn: (qmp: QmpClient) => Promise<T>, timeoutMs = 5000): Promise<T> {
    const qmp = await QmpClient.connect(join(this.dir, 'qmp.sock'), { timeoutMs });
    try {
      return await fn(qmp);
    } finally {
      await qmp.close();
    }
  }

  async state(): Promise<DomainState> {
    const pid = this.pid();
    if (pid !== undefined && pidAlive(pid)) {
      try {
        const st = await this.withMonitor((q) => q.execute<{ status: string; running: boolean }>('query-status', undefined, 5000));
        if (st.running) return 'running';
        if (st.status === 'shutdown' || st.status === 'guest-panicked' || st.status === 'internal-error') return 'failed';
        return 'paused';
      } catch {
        return pidAlive(pid) ? 'running' : this.deadState();
      }
    }
    return this.deadState();
  }

  private deadState(): DomainState {
    const oc = this.outcome();
    if (oc) return oc.state;
    // Dead, and nobody recorded why: it crashed while no restorelab watched.
    if (existsSync(join(this.dir, 'spec.json'))) this.recordOutcome('failed', 'qemu is gone (found at re-attach)');
    return 'failed';
  }

  private waitExit(pid: number, timeoutMs: number): Promise<boolean> {
    return new Promise((resolve) => {
      const deadline = Date.now() + timeoutMs;
      const tick = (): void => {
        if (!pidAlive(pid)) return resolve(true);
        if (Date.now() > deadline) return resolve(false);
        setTimeout(tick, 100);
      };
      tick();
    });
  }

  async stop(timeoutMs = 30_000): Promise<void> {
    const pid = this.pid();
    if (pid === undefined || !pidAlive(pid)) return;
    this.recordOutcome('stopped', 'stopped by restorelab');
    try {
      await this.withMonitor((q) => q.execute('system_powerdown', undefined, 5000));
    } catch {
      // a dead monitor means we go straight to the kill
    }
    if (!(await this.waitExit(pid, timeoutMs))) {
      process.kill(pid, 'SIGKILL');
      await this.waitExit(pid, 5000);
    }
  }

  async destroy(): Promise<void> {
    const pid = this.pid();
    if (existsSync(this.dir)) this.recordOutcome('stopped', 'destroyed by restorelab');
    if (pid !== undefined && pidAlive(pid)) {
      process.kill(pid, 'SIGKILL');
      await this.waitExit(pid, 5000);
    }
    try {
      const saved = JSON.parse(readFileSync(join(this.dir, 'spec.json'), 'utf8')) as { bridgeTaps?: string[] };
      for (const tap of saved.bridgeTaps ?? []) await exec('ip', ['link', 'del', tap]);
    } catch {
      // no spec, no taps
    }
    rmSync(this.dir, { recursive: true, force: true });
  }

  agent(timeoutMs = 10_000): Promise<QgaClient> {
    return QgaClient.connect(this.agentSocket, { timeoutMs });
  }

  async screendump(path: string): Promise<'ppm' | 'png'> {
    await this.withMonitor((q) => q.execute('screendump', { filename: path }));
    return 'ppm';
  }

  async readVgaText(): Promise<Uint8Array> {
    const out = await this.withMonitor((q) => q.execute<string>('human-monitor-command', { 'command-line': VGA_XP_COMMAND }));
    return parseXpBytes(out);
  }

  /**
   * The mirror job lives in QEMU, not in our connection: we only hold QMP
   * until BLOCK_JOB_READY, and pivot() opens a new one.
   */
  async blockMirror(disk: string, target: string, format: 'raw' | 'qcow2'): Promise<void> {
    await this.withMonitor((qmp) => this.mirrorOn(qmp, disk, target, format), 10_000);
  }

  private async mirrorOn(qmp: QmpClient, disk: string, target: string, format: 'raw' | 'qcow2'): Promise<void> {
    const nodes = await qmp.execute<{ 'node-name': string; image: { 'virtual-size': number } }[]>('query-named-block-nodes', {
      flat: true,
    });
    const src = nodes.find((n) => n['node-name'] === `disk-${disk}`);
    if (!src) throw new RestorelabError('DISK_NOT_FOUND', `VM ${this.name} has no disk ${disk}`);
    const r = await exec('qemu-img', ['create', '-f', format, target, String(src.image['virtual-size'])], { timeoutMs: 30_000 });
    if (r.code !== 0)
      throw new RestorelabError('MIRROR_TARGET_FAILED', `cannot create ${target}: ${r.stderr.trim()}`, {
        hint: 'check the target directory exists and has space',
      });
    await qmp.execute('blockdev-add', {
      driver: format,
      'node-name': `mirror-${disk}`,
      file: { driver: 'file', filename: target, aio: 'threads' },
    });
    const ready = qmp.waitEvent('BLOCK_JOB_READY', (e) => e.data?.device === `mirror-job-${disk}`, 24 * 3600_000);
    await qmp.execute('blockdev-mirror', {
      'job-id': `mirror-job-${disk}`,
      device: `disk-${disk}`,
      target: `mirror-${disk}`,
      sync: 'full',
    });
    await ready;
  }

  async pivot(disk: string): Promise<void> {
    await this.withMonitor((qmp) => this.pivotOn(qmp, disk), 10_000);
  }

  private async pivotOn(qmp: QmpClient, disk: string): Promise<void> {
    const done = qmp.waitEvent('BLOCK_JOB_COMPLETED', (e) => e.data?.device === `mirror-job-${disk}`, 600_000);
    await qmp.execute('job-complete', { id: `mirror-job-${disk}` });
    const ev = await done;
    if (ev.data?.error) throw new RestorelabError('PIVOT_FAILED', `pivot of ${disk} failed: ${String(ev.data.error)}`);
    // The source node came from -blockdev, so QEMU keeps it (and its file
    // open) after the pivot; a published source could then not be unmounted.
    await qmp.execute('blockdev-del', { 'node-name': `disk-${disk}` });
  }

  /** The job and node names are mirrorOn's; cancelling before READY leaves the source in use. */
  async abortMirror(disk: string): Promise<void> {
    await this.withMonitor(async (q) => {
      await q.execute('block-job-cancel', { device: `mirror-job-${disk}`, force: true }).catch(() => undefined);
      // The cancelled job lets go of its target node a moment later.
      await sleep(500);
      await q.execute('blockdev-del', { 'node-name': `mirror-${disk}` }).catch(() => undefined);
    }).catch(() => undefined);
  }

  /** By pid, never over QMP (see Domain.alive). */
  async alive(): Promise<boolean> {
    const pid = this.pid();
    return pid !== undefined && pidAlive(pid);
  }

  async exitReason(): Promise<string | undefined> {
    return this.outcome()?.reason;
  }

  /** Resolves when the QEMU process ends (only for domains this process started). */
  exited(): Promise<void> {
    return new Promise((resolve) => {
      // The child handle is unref'd, so a timer keeps the caller alive until it ends.
      const timer = setInterval(() => {
        const pid = this.pid();
        if (pid === undefined || !pidAlive(pid)) done();
      }, 200);
      const done = (): void => {
        clearInterval(timer);
        resolve();
      };
      this.exitWaiters.push(done);
    });
  }
}

/**
 * The `libvirt` driver: domains live in libvirtd (qemu:///system), so they
 * show up in virsh and virt-manager and survive restorelab entirely.
 *
 * Lifecycle goes through the @unraid/libvirt binding (define, start,
 * destroy, undefine, state, XML). What the binding lacks goes through
 * `virsh`, which is libvirt's own client of the same API, rather than
 * talking QMP behind libvirt's back (libvirt owns the monitor socket and
 * would see unexplained state changes): screenshots (`virsh screenshot`),
 * block copies (`virsh blockcopy` / `blockjob --pivot`) and the VGA text
 * buffer (`virsh qemu-monitor-command --hmp`, which libvirt allows and logs).
 *
 * Guest agent: libvirt itself connects to any channel whose target name is
 * org.qemu.guest_agent.0, and QEMU's chardev socket serves one client, so a
 * <channel> of that name would lock our QGA client out. We therefore add
 * the agent port through <qemu:commandline> (a chardev socket at a path we
 * choose + virtserialport named org.qemu.guest_agent.0). libvirt does not
 * know it is an agent, and our QgaClient talks to it exactly as with the
 * qemu driver. (Cost: `virsh qemu-agent-command` does not work for these
 * domains, and libvirt marks them "tainted: custom-argv".)
 *
 * Lab taps: libvirt's QEMU runs in the host namespace and opens taps by
 * name there. A lab tap lives inside the lab namespace, so for start we move
 * it to the host namespace, let QEMU open it (type='ethernet', managed='no'),
 * then move it back into the lab namespace and onto its bridge: an open tap
 * fd follows its device across namespaces.
 */
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { Hypervisor as LibvirtConnection, DomainState as LvState } from '@unraid/libvirt';
import { lendLabTaps } from './tap-handover.js';
import { RestorelabError, missingComponent } from '../errors.js';
import { exec, which } from '../host/exec.js';
import { probeAccel } from '../host/accel.js';
import { assertBridgesExist } from '../host/bridges.js';
import { processAlive } from '../host/process.js';
import { QgaClient } from './qga.js';
import { isNbdUrl, parseNbdUrl } from '../nbd/url.js';
import { VGA_XP_COMMAND, parseXpBytes } from './vga.js';
import { firmwareFor } from './firmware.js';
import type { Domain, DomainInfo, DomainSpec, DomainState, Hypervisor, NicAttachment } from './types.js';

export const LIBVIRT_URI = 'qemu:///system';
/** Where libvirtd's QEMU driver keeps the pidfile of each running domain's QEMU. */
const QEMU_PID_DIR = '/var/run/libvirt/qemu';
/** Domains we own carry this prefix so `list` never touches anyone else's. */
const PREFIX = 'rl-';

export interface LibvirtDriverOptions {
  stateDir: string;
  accel?: 'auto' | 'kvm' | 'tcg';
  /** libvirtd's socket; only tests change it. */
  socket?: string;
}

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/'/g, '&apos;').replace(/"/g, '&quot;');
}

/**
 * A local file, an `nfs://host/path` URL as a network disk that QEMU's
 * libnfs driver opens, or an NBD URL as a network disk of protocol nbd
 * (unix socket or TCP), which QEMU's own NBD client opens.
 */
function diskSource(path: string): string {
  if (isNbdUrl(path)) {
    const t = parseNbdUrl(path);
    const host =
      t.server.type === 'unix'
        ? `<host transport='unix' socket='${esc(t.server.path)}'/>`
        : `<host name='${esc(t.server.host)}' port='${t.server.port}'/>`;
    return `<source protocol='nbd' name='${esc(t.export)}'>${host}</source>`;
  }
  if (!path.startsWith('nfs://')) return `<source file='${esc(path)}'/>`;
  const url = new URL(path);
  return `<source protocol='nfs' name='${esc(decodeURIComponent(url.pathname))}'><host name='${esc(url.hostname)}'/></source>`;
}

export function domainXml(
  spec: DomainSpec,
  dir: string,
  accel: 'kvm' | 'tcg',
  hostTaps: string[],
  uefi?: { image: string; vars: string },
): string {
  const vm = spec.vm;
  const scsi = spec.disks.some((d) => vm.disks.find((x) => x.name === d.name)?.bus === 'scsi');
  const disks = spec.disks.map((d, i) => {
    const bus = vm.disks.find((x) => x.name === d.name)?.bus ?? 'virtio';
    const dev = bus === 'virtio' ? `vd${String.fromCharCode(97 + i)}` : `sd${String.fromCharCode(97 + i)}`;
    return `    <disk type='${d.path.startsWith('nfs://') || isNbdUrl(d.path) ? 'network' : 'file'}' device='disk'>
      <driver name='qemu' type='${d.format}'/>
      ${diskSource(d.path)}
      <target dev='${dev}' bus='${bus === 'virtio' || bus === 'scsi' ? bus : 'sata'}'/>
      <alias name='ua-${esc(d.name)}'/>${d.readOnly ? '\n      <readonly/>' : ''}
    </disk>`;
  });
  const nics = spec.nics.map((n, i) => {
    const model = n.model === 'e1000' ? 'e1000' : 'virtio';
    if (n.kind === 'bridge') {
      return `    <interface type='bridge'>
      <mac address='${n.mac}'/>
      <source bridge='${esc(n.bridge)}'/>
      <model type='${model}'/>
    </interface>`;
    }
    return `    <interface type='ethernet'>
      <mac address='${n.mac}'/>
      <target dev='${esc(hostTaps[i] ?? n.tap)}' managed='no'/>
      <model type='${model}'/>
    </interface>`;
  });
  const qga = join(dir, 'qga.sock');
  // The root PCI bus is pcie.0 on a q35 machine (pc-q35-*), pci.0 on i440fx (pc, pc-i440fx-*).
  const rootBus = /q35/.test(vm.machine ?? '') ? 'pcie.0' : 'pci.0';
  return `<domain type='${accel === 'kvm' ? 'kvm' : 'qemu'}' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>${PREFIX}${esc(vm.name)}</name>
  <memory unit='MiB'>${vm.memoryMiB}</memory>
  <vcpu>${vm.vcpus}</vcpu>
  <os>
    <type arch='x86_64' machine='${esc(vm.machine ?? 'pc')}'>hvm</type>${
      uefi ? `\n    <loader readonly='yes' type='pflash'>${esc(uefi.image)}</loader>\n    <nvram>${esc(uefi.vars)}</nvram>` : ''
    }
    <boot dev='hd'/>
  </os>
  <features><acpi/></features>${accel === 'kvm' ? "\n  <cpu mode='host-passthrough'/>" : ''}
  <on_crash>destroy</on_crash>
  <devices>
${disks.join('\n')}${scsi ? "\n    <controller type='scsi' index='0' model='virtio-scsi'/>" : ''}
${nics.join('\n')}
    <serial type='file'>
      <source path='${esc(join(dir, 'console.log'))}'/>
      <target port='0'/>
    </serial>
    <video><model type='vga'/></video>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-chardev'/>
    <qemu:arg value='socket,id=rlqga,path=${esc(qga)},server=on,wait=off'/>
    <!-- slot 0x1e: libvirt gives its own devices explicit low slots; QEMU's
         automatic choice would collide with them. -->
    <qemu:arg value='-device'/>
    <qemu:arg value='virtio-serial-pci,id=rlvser,bus=${rootBus},addr=0x1e'/>
    <qemu:arg value='-device'/>
    <qemu:arg value='virtserialport,bus=rlvser.0,chardev=rlqga,name=org.qemu.guest_agent.0'/>
  </qemu:commandline>
</domain>
`;
}

async function sh(cmd: string, args: string[], timeoutMs = 30_000): Promise<string> {
  const r = await exec(cmd, args, { timeoutMs });
  if (r.code !== 0)
    throw new RestorelabError('LIBVIRT_COMMAND_FAILED', `${cmd} ${args.join(' ')} failed: ${(r.stderr || r.stdout).trim()}`);
  return r.stdout;
}

export class LibvirtDriver implements Hypervisor {
  readonly driver = 'libvirt' as const;
  private conn: LibvirtConnection | undefined;

  constructor(private readonly opts: LibvirtDriverOptions) {}

  private async connection(): Promise<LibvirtConnection> {
    if (this.conn) return this.conn;
    const sock = this.opts.socket ?? '/var/run/libvirt/libvirt-sock';
    if (!existsSync(sock)) {
      throw new RestorelabError('LIBVIRTD_NOT_RUNNING', `libvirtd is not running (no ${sock})`, {
        hint: 'start it with scripts/libvirtd start (or systemctl start libvirtd), or use --driver qemu',
      });
    }
    const c = new LibvirtConnection({ uri: LIBVIRT_URI });
    try {
      await c.connectOpen();
    } catch (e) {
      throw new RestorelabError('LIBVIRTD_NOT_RUNNING', `cannot connect to libvirtd at ${LIBVIRT_URI}: ${(e as Error).message}`, {
        hint: 'start it with scripts/libvirtd start',
        cause: e,
      });
    }
    this.conn = c;
    return c;
  }

  async close(): Promise<void> {
    await this.conn?.connectClose();
    this.conn = undefined;
  }

  private vmDir(name: string): string {
    return join(this.opts.stateDir, 'libvirt', name);
  }

  async start(spec: DomainSpec): Promise<Domain> {
    if (!which('virsh')) throw missingComponent('virsh', 'apt-get install libvirt-clients');
    const c = await this.connection();
    const name = spec.vm.name;
    const existing = await this.attach(name);
    if (existing) {
      if ((await existing.state()) === 'running') {
        throw new RestorelabError('VM_ALREADY_RUNNING', `VM ${name} is already running under libvirt (${PREFIX}${name})`, {
          hint: 'stop it first',
        });
      }
      await existing.destroy();
    }
    const env = process.env.RESTORELAB_ACCEL;
    const want = spec.accel ?? (env === 'kvm' || env === 'tcg' ? env : undefined) ?? this.opts.accel ?? 'auto';
    const accel = want === 'auto' ? (await probeAccel({ cacheDir: this.opts.stateDir })).accel : want;
    await assertBridgesExist(spec.nics.flatMap((n) => (n.kind === 'bridge' ? [n.bridge] : [])));
    const dir = this.vmDir(name);
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(dir, { recursive: true });
    // Lab taps come to the host namespace for QEMU to open them; see the module doc.
    const lent = await lendLabTaps(spec.nics);
    try {
      const xml = domainXml(
        spec,
        dir,
        accel,
        lent.nics.map((n: NicAttachment) => (n.kind === 'tap' ? n.tap : '')),
        firmwareFor(spec, dir),
      );
      const dom = await c.domainDefineXML(xml);
      await c.domainCreate(dom);
    } catch (e) {
      await exec('virsh', ['-c', LIBVIRT_URI, 'undefine', '--nvram', `${PREFIX}${name}`]);
      await lent.giveBack().catch(() => undefined);
      throw new RestorelabError('VM_START_FAILED', `libvirt could not start VM ${name}: ${(e as Error).message}`, { cause: e });
    }
    await lent.giveBack();
    return new LibvirtDomain(name, dir, this);
  }

  async attach(name: string): Promise<LibvirtDomain | undefined> {
    const c = await this.connection();
    try {
      await c.domainLookupByName(`${PREFIX}${name}`);
    } catch {
      return undefined;
    }
    return new LibvirtDomain(name, this.vmDir(name), this);
  }

  async list(): Promise<DomainInfo[]> {
    const c = await this.connection();
    const out: DomainInfo[] = [];
    for (const d of await c.connectListAllDomains()) {
      const full = await c.domainGetName(d);
      if (!full.startsWith(PREFIX)) continue;
      const name = full.slice(PREFIX.length);
      out.push({ name, driver: 'libvirt', state: await this.stateOf(name) });
    }
    return out;
  }

  async stateOf(name: string): Promise<DomainState> {
    const c = await this.connection();
    let info;
    try {
      info = await c.domainGetInfo(await c.domainLookupByName(`${PREFIX}${name}`));
    } catch {
      return 'stopped';
    }
    switch (info.state) {
      case LvState.RUNNING:
      case LvState.BLOCKED:
        return 'running';
      case LvState.PAUSED:
      case LvState.PMSUSPENDED:
        return 'paused';
      case LvState.CRASHED:
        return 'failed';
      case LvState.SHUTOFF:
        return await this.shutoffReason(name);
      default:
        return 'defined';
    }
  }

  /** libvirt reports why a domain is off: "crashed"/"failed" are failures, the rest are stops. */
  private async shutoffReason(name: string): Promise<DomainState> {
    return /crashed|failed/.test((await this.stateReason(name)) ?? '') ? 'failed' : 'stopped';
  }

  /** libvirt's own words for the state and why ("shut off (crashed)"); undefined for a domain it does not know. */
  async stateReason(name: string): Promise<string | undefined> {
    const r = await exec('virsh', ['-c', LIBVIRT_URI, 'domstate', '--reason', `${PREFIX}${name}`], { timeoutMs: 10_000 });
    return r.code === 0 ? r.stdout.trim() : undefined;
  }

  async shutdown(name: string): Promise<void> {
    const c = await this.connection();
    await c.domainShutdown(await c.domainLookupByName(`${PREFIX}${name}`));
  }

  async destroyDomain(name: string): Promise<void> {
    const c = await this.connection();
    let dom;
    try {
      dom = await c.domainLookupByName(`${PREFIX}${name}`);
    } catch {
      return;
    }
    try {
      await c.domainDestroy(dom);
    } catch {
      // not running
    }
    // A UEFI domain keeps a variable store, which the binding's plain undefine refuses to leave behind.
    await c.domainUndefine(dom).catch(() => exec('virsh', ['-c', LIBVIRT_URI, 'undefine', '--nvram', `${PREFIX}${name}`]));
  }
}

export class LibvirtDomain implements Domain {
  readonly agentSocket: string;
  readonly consoleLog: string;
  readonly domainName: string;

  constructor(
    readonly name: string,
    readonly dir: string,
    private readonly driver: LibvirtDriver,
  ) {
    this.agentSocket = join(dir, 'qga.sock');
    this.consoleLog = join(dir, 'console.log');
    this.domainName = `${PREFIX}${name}`;
  }

  state(): Promise<DomainState> {
    return this.driver.stateOf(this.name);
  }

  async stop(timeoutMs = 30_000): Promise<void> {
    if ((await this.state()) !== 'running') return;
    await this.driver.shutdown(this.name).catch(() => undefined);
    const end = Date.now() + timeoutMs;
    while (Date.now() < end) {
      if ((await this.state()) !== 'running') return;
      await new Promise((r) => setTimeout(r, 250));
    }
    await sh('virsh', ['-c', LIBVIRT_URI, 'destroy', this.domainName]);
  }

  async destroy(): Promise<void> {
    await this.driver.destroyDomain(this.name);
    rmSync(this.dir, { recursive: true, force: true });
  }

  agent(timeoutMs = 10_000): Promise<QgaClient> {
    return QgaClient.connect(this.agentSocket, { timeoutMs });
  }

  async screendump(path: string): Promise<'ppm' | 'png'> {
    // libvirt asks QEMU for PNG when QEMU supports it, PPM otherwise.
    await sh('virsh', ['-c', LIBVIRT_URI, 'screenshot', this.domainName, path]);
    const head = Buffer.alloc(2);
    const fd = openSync(path, 'r');
    try {
      readSync(fd, head, 0, 2, 0);
    } finally {
      closeSync(fd);
    }
    return head.toString('latin1') === 'P6' ? 'ppm' : 'png';
  }

  /** Through libvirt's own monitor connection (HMP passthrough), as with screenshots: we never open its socket. */
  async readVgaText(): Promise<Uint8Array> {
    return parseXpBytes(await sh('virsh', ['-c', LIBVIRT_URI, 'qemu-monitor-command', '--hmp', this.domainName, VGA_XP_COMMAND], 15_000));
  }

  async blockMirror(disk: string, target: string, format: 'raw' | 'qcow2'): Promise<void> {
    const dev = await this.targetOf(disk);
    // --transient-job: libvirt refuses block copy on persistent domains otherwise.
    await sh(
      'virsh',
      ['-c', LIBVIRT_URI, 'blockcopy', this.domainName, dev, target, '--format', format, '--wait', '--transient-job'],
      24 * 3600_000,
    );
  }

  async pivot(disk: string): Promise<void> {
    const dev = await this.targetOf(disk);
    await sh('virsh', ['-c', LIBVIRT_URI, 'blockjob', this.domainName, dev, '--pivot'], 600_000);
  }

  /** Through libvirt's own job API, as the copy itself; a disk without a job is no error. */
  async abortMirror(disk: string): Promise<void> {
    try {
      await sh('virsh', ['-c', LIBVIRT_URI, 'blockjob', this.domainName, await this.targetOf(disk), '--abort'], 30_000);
    } catch {
      // best effort: nothing to cancel, or the domain is gone
    }
  }

  /** libvirtd writes the pid of the QEMU it runs for a domain beside its own, and removes it when QEMU ends. */
  pid(): number | undefined {
    try {
      const n = Number(readFileSync(join(QEMU_PID_DIR, `${this.domainName}.pid`), 'utf8').trim());
      return Number.isInteger(n) && n > 0 && processAlive(n) ? n : undefined;
    } catch {
      return undefined;
    }
  }

  async alive(): Promise<boolean> {
    const st = await this.state();
    return st === 'running' || st === 'paused';
  }

  async exitReason(): Promise<string | undefined> {
    if (await this.alive()) return undefined;
    return this.driver.stateReason(this.name);
  }

  private async targetOf(disk: string): Promise<string> {
    const xml = await sh('virsh', ['-c', LIBVIRT_URI, 'dumpxml', this.domainName]);
    const re = /<disk[\s\S]*?<target dev='([^']+)'[\s\S]*?<alias name='ua-([^']+)'\/>[\s\S]*?<\/disk>/g;
    for (const m of xml.matchAll(re)) if (m[2] === disk) return m[1] as string;
    throw new RestorelabError('DISK_NOT_FOUND', `VM ${this.name} has no disk ${disk}`);
  }
}

/**
 * Everything `recover` checks before it makes anything: an error here leaves
 * nothing behind because nothing exists yet.
 */
import { existsSync } from 'node:fs';
import { RestorelabError, badInput, missingComponent, notFound } from '../errors.js';
import { exec, which } from '../host/exec.js';
import type { RestorePoint } from '../repo/contract.js';
import type { VmDefinition } from '../vm/definition.js';
import { loadLab, readLabState, type LabDefinition } from '../lab/lab.js';
import { formatCidr, overlaps, parseCidr, type Cidr } from '../lab/ipv4.js';
import { assertBridgesExist } from '../host/bridges.js';
import { closeHypervisor, type SessionDeps } from './seam.js';
import type { SessionPublish } from './session.js';

export interface RecoverRequest {
  repo: string;
  vm: string;
  /** Restore point id; default: the latest point of the VM. */
  point?: string;
  /** Lab definition file: the VM runs in that virtual lab. */
  lab?: string;
  /** Host bridge: the VM runs on a production network. */
  network?: string;
  driver: 'qemu' | 'libvirt';
  stateDir: string;
  accel?: 'auto' | 'kvm' | 'tcg';
  /** How the disks reach the hypervisor; default FUSE. */
  publish?: SessionPublish;
  /** Key file of an encrypted repository (config/key-file.ts); recorded so the supervisor opens it too. */
  keyFile?: string;
  /**
   * The lab's masquerade subnets are carved from this pool instead of taken
   * from its file (a lab worker's --masquerade, src/lab/masquerade-pool.ts):
   * two workers on one host recover into the same lab side by side.
   */
  masqueradePool?: string;
}

export interface RecoveryPlan {
  point: RestorePoint;
  vm: VmDefinition;
  lab?: LabDefinition;
  /** The lab is already up: the session uses it and leaves it up. */
  labIsUp: boolean;
}

export async function planRecovery(req: RecoverRequest, deps: SessionDeps): Promise<RecoveryPlan> {
  if (req.driver !== 'qemu' && req.driver !== 'libvirt') {
    throw badInput('UNKNOWN_DRIVER', `unknown hypervisor driver "${String(req.driver)}"`, 'use --driver qemu or --driver libvirt');
  }
  if (req.lab && req.network) {
    throw badInput(
      'LAB_AND_NETWORK',
      'a recovery runs either in a lab (--lab) or on a production bridge (--network), not both',
      'drop one of the two options',
    );
  }
  const repo = await deps.openRepository(req.repo);
  let point: RestorePoint;
  if (req.point) {
    point = await repo.getPoint(req.point);
    if (point.vm.name !== req.vm) {
      throw notFound(
        'POINT_NOT_FOUND',
        `restore point ${req.point} belongs to VM ${point.vm.name}, not ${req.vm}`,
        `restorelab points --vm ${req.vm} lists that VM's points`,
      );
    }
  } else {
    const points = await repo.listPoints({ vm: req.vm });
    const latest = [...points].sort((a, b) => a.time.localeCompare(b.time)).at(-1);
    if (!latest) {
      throw notFound(
        'VM_NOT_FOUND',
        `the repository ${req.repo} has no restore point of a VM named ${req.vm}`,
        'check the VM name (restorelab points lists what the repository holds)',
      );
    }
    point = latest;
  }
  const vm = point.vm;

  let lab: LabDefinition | undefined;
  let labIsUp = false;
  if (req.lab) {
    if (!existsSync(req.lab))
      throw notFound('LAB_FILE_NOT_FOUND', `no lab definition at ${req.lab}`, 'pass --lab with a lab JSON file (see lab-templates/labs)');
    lab = loadLab(req.lab);
    const nets = new Set(lab.networks.map((n) => n.name));
    for (const nic of vm.nics) {
      if (!nets.has(nic.network)) {
        throw badInput(
          'LAB_NO_SUCH_NETWORK',
          `VM ${vm.name} has a NIC on network ${nic.network}, which lab ${lab.name} does not mirror`,
          `add a network named ${nic.network} to ${req.lab}`,
        );
      }
    }
    labIsUp = readLabState(req.stateDir, lab.name)?.ready === true;
    // With a pool, lab up carves free subnets itself (and says when none is left).
    if (!labIsUp && req.masqueradePool === undefined) await assertMasqueradeFree(lab);
  }
  if (req.network) {
    if (!which('ip')) throw missingComponent('ip (iproute2)', 'apt-get install iproute2');
    await assertBridgesExist([req.network]);
  }
  if (req.driver === 'qemu' && !which('qemu-system-x86_64'))
    throw missingComponent('qemu-system-x86_64', 'apt-get install qemu-system-x86');
  if (req.driver === 'libvirt') {
    const hv = deps.hypervisor('libvirt', { stateDir: req.stateDir });
    try {
      // Connecting is the check: it fails with a hint naming scripts/libvirtd.
      await hv.list();
    } finally {
      await closeHypervisor(hv);
    }
  }
  return { point, vm, ...(lab ? { lab } : {}), labIsUp };
}

/** The same check lab up makes, made before the publication exists. */
async function assertMasqueradeFree(lab: LabDefinition): Promise<void> {
  const r = await exec('ip', ['-4', '-j', 'route', 'show', 'table', 'all'], { timeoutMs: 10_000 });
  if (r.code !== 0) throw new RestorelabError('HOST_COMMAND_FAILED', `ip route failed: ${r.stderr.trim()}`);
  const routes: Cidr[] = [];
  for (const x of JSON.parse(r.stdout || '[]') as { dst?: string }[]) {
    if (!x.dst || x.dst === 'default') continue;
    try {
      routes.push(parseCidr(x.dst.includes('/') ? x.dst : `${x.dst}/32`, 'route'));
    } catch {
      // multicast and broadcast entries are not subnets we compare against
    }
  }
  for (const n of lab.networks) {
    const masq = parseCidr(n.masquerade, n.name);
    const clash = routes.find((c) => overlaps(c, masq));
    if (clash) {
      throw badInput(
        'LAB_MASQUERADE_OVERLAP',
        `lab ${lab.name}: masquerade subnet ${n.masquerade} of network ${n.name} overlaps the host route ${formatCidr(clash)}`,
        'pick a masquerade subnet no host route (or other running lab) uses, e.g. another 172.18.x.0/24',
      );
    }
  }
}

/**
 * The host capability probe behind `restorelab doctor`: what this machine can
 * do for restorelab, and what to install for what it cannot.
 */
import { existsSync, accessSync, constants } from 'node:fs';
import { exec, which } from './exec.js';
import { probeAccel, type AccelProbe } from './accel.js';
import { mountEntry } from './mounts.js';
import { OVMF_BUILDS } from './ovmf.js';

export interface Check {
  name: string;
  ok: boolean;
  detail: string;
  /** What to do when ok is false. */
  fix?: string;
  /** Whether restorelab can run its main job without it. */
  required: boolean;
}

export interface DoctorReport {
  ok: boolean;
  accel: AccelProbe['accel'];
  kvm: AccelProbe['kvm'];
  /** The accelerator verdict came from the per-host cache (`doctor --recheck` boots again). */
  cached: boolean;
  /** When the test boot behind the verdict ran. */
  accelCheckedAt?: string;
  /** How long the checks took in this process (the CLI's own start-up is not in it). */
  seconds: number;
  checks: Check[];
}

function tool(name: string, pkg: string, required: boolean, purpose: string): Check {
  const path = which(name);
  return path
    ? { name, ok: true, detail: path, required }
    : { name, ok: false, detail: `${name} not found (${purpose})`, fix: `apt-get install ${pkg}`, required };
}

async function netnsCheck(): Promise<Check> {
  const ns = `rl-doctor-${process.pid}`;
  const add = await exec('ip', ['netns', 'add', ns], { timeoutMs: 5000 });
  if (add.code !== 0) {
    return {
      name: 'netns',
      ok: false,
      detail: `ip netns add failed: ${add.stderr.trim()}`,
      fix: 'run as root with iproute2 installed (apt-get install iproute2)',
      required: false,
    };
  }
  await exec('ip', ['netns', 'delete', ns], { timeoutMs: 5000 });
  return { name: 'netns', ok: true, detail: 'network namespaces can be created', required: false };
}

function fuseCheck(): Check {
  if (!existsSync('/dev/fuse'))
    return {
      name: 'fuse',
      ok: false,
      detail: '/dev/fuse is missing',
      fix: 'modprobe fuse (or start the container with /dev/fuse)',
      required: false,
    };
  const lib = ['/usr/lib/x86_64-linux-gnu/libfuse.so.2', '/lib/x86_64-linux-gnu/libfuse.so.2'].find((p) => existsSync(p));
  if (!lib) return { name: 'fuse', ok: false, detail: 'libfuse2 is not installed', fix: 'apt-get install libfuse2 fuse3', required: false };
  if (!which('fusermount') && !which('fusermount3'))
    return { name: 'fuse', ok: false, detail: 'fusermount is missing', fix: 'apt-get install fuse3', required: false };
  return { name: 'fuse', ok: true, detail: `/dev/fuse and ${lib}`, required: false };
}

function loopCheck(): Check {
  try {
    accessSync('/dev/loop-control', constants.W_OK);
  } catch {
    return { name: 'loop', ok: false, detail: '/dev/loop-control is not writable', fix: 'modprobe loop and run as root', required: false };
  }
  return which('losetup')
    ? { name: 'loop', ok: true, detail: 'loop devices (offset/sizelimit) available', required: false }
    : { name: 'loop', ok: false, detail: 'losetup not found', fix: 'apt-get install mount', required: false };
}

/**
 * libvirt runs each QEMU in a mount namespace copied from the host's; with a
 * private root the copy keeps our loop and FUSE mounts alive after we
 * unmount them (docs/operations.md, "Mount propagation").
 */
function propagationCheck(): Check {
  const root = mountEntry('/');
  return root?.shared
    ? { name: 'mount-propagation', ok: true, detail: 'the root mount is shared', required: false }
    : {
        name: 'mount-propagation',
        ok: false,
        detail: "the root mount is private: QEMUs libvirt starts keep copies of restorelab's mounts after it unmounts them",
        fix: 'mount --make-rshared / (scripts/setup does it; systemd hosts have it)',
        required: false,
      };
}

function libvirtCheck(): Check {
  if (!which('libvirtd'))
    return {
      name: 'libvirtd',
      ok: false,
      detail: 'libvirtd not installed',
      fix: 'apt-get install libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients',
      required: false,
    };
  const running = existsSync('/var/run/libvirt/libvirt-sock') || existsSync('/run/libvirt/libvirt-sock');
  return running
    ? { name: 'libvirtd', ok: true, detail: 'libvirtd is running', required: false }
    : { name: 'libvirtd', ok: false, detail: 'libvirtd is installed but not running', fix: 'scripts/libvirtd start', required: false };
}

function qemuNfsCheck(): Check {
  const so = ['/usr/lib/x86_64-linux-gnu/qemu/block-nfs.so'].find((p) => existsSync(p));
  return so
    ? { name: 'qemu-nfs', ok: true, detail: so, required: false }
    : {
        name: 'qemu-nfs',
        ok: false,
        detail: "QEMU's nfs:// block driver is missing",
        fix: 'apt-get install qemu-block-extra',
        required: false,
      };
}

function ovmfCheck(): Check {
  const build = OVMF_BUILDS.find((b) => existsSync(b.image) && existsSync(b.varsTemplate));
  return build
    ? { name: 'uefi', ok: true, detail: build.image, required: false }
    : {
        name: 'uefi',
        ok: false,
        detail: 'no OVMF firmware (VMs defined with "firmware": "uefi")',
        fix: 'apt-get install ovmf',
        required: false,
      };
}

export async function runDoctor(opts: { cacheDir?: string; force?: boolean; guestsDir?: string } = {}): Promise<DoctorReport> {
  const started = performance.now();
  const accel = await probeAccel(opts);
  const checks: Check[] = [
    tool('qemu-system-x86_64', 'qemu-system-x86', true, 'boots VMs'),
    tool('qemu-img', 'qemu-utils', true, 'converts and restores images'),
    tool('qemu-nbd', 'qemu-utils', true, 'reads qcow2/vmdk/vdi/vhdx images'),
    {
      name: 'accel',
      ok: accel.tcg || accel.kvm === 'works',
      detail: accel.detail,
      fix: accel.tcg || accel.kvm === 'works' ? undefined : 'apt-get install qemu-system-x86 (TCG needs no hardware support)',
      required: true,
    },
    fuseCheck(),
    loopCheck(),
    libvirtCheck(),
    propagationCheck(),
    tool('virsh', 'libvirt-clients', false, 'libvirt driver'),
    tool('nfs-ls', 'libnfs-utils', false, 'NFS client tools for tests'),
    tool('nfs-cp', 'libnfs-utils', false, 'NFS client tools for tests'),
    qemuNfsCheck(),
    tool('ip', 'iproute2', false, 'virtual lab networks'),
    await netnsCheck(),
    tool('nft', 'nftables', false, 'lab masquerade NAT'),
    tool('losetup', 'mount', false, 'file-level restore'),
    tool('mount.ntfs-3g', 'ntfs-3g', false, 'file-level restore of NTFS where the kernel has no ntfs3'),
    ovmfCheck(),
  ];
  return {
    ok: checks.every((c) => c.ok || !c.required),
    accel: accel.accel,
    kvm: accel.kvm,
    cached: Boolean(accel.cached),
    ...(accel.checkedAt ? { accelCheckedAt: accel.checkedAt } : {}),
    seconds: Math.round(performance.now() - started) / 1000,
    checks,
  };
}

/**
 * SureBackup verification VMs whose run is gone: a `surebackup run` or a lab
 * worker killed mid-verification leaves its VM running in the lab, on a
 * publication nobody serves any more. Such a VM is disposable by design (a
 * verification discards its writes), so it is a safe item: its domain is
 * destroyed, its publication and taps removed, its work directory deleted.
 * Its lab is judged after it, so the namespace it kept busy can go too.
 */
import fs from 'node:fs';
import { processAlive } from '../host/process.js';
import type { PublicationRecord } from '../publish/publish.js';
import { listVerificationVms, type VerificationVm } from '../surebackup/vm-record.js';
import type { Found } from './stale.js';

/** A work directory without a record younger than this may be one a live run is setting up. */
const UNRECORDED_MIN_AGE_S = 60;

export interface VerificationVmCheck {
  items: Found[];
  /** Publications the items remove with their VM: not to be resumed or judged again. */
  publications: Set<string>;
  /** Processes of the stale VMs (QEMU): their lab counts as empty once they are gone. */
  pids: Set<number>;
}

export async function checkVerificationVms(stateDir: string, records: PublicationRecord[]): Promise<VerificationVmCheck> {
  const out: VerificationVmCheck = { items: [], publications: new Set(), pids: new Set() };
  const stale = listVerificationVms(stateDir).filter((vm) => !(vm.record && processAlive(vm.record.pid)));
  if (stale.length === 0) return out;
  const domains = await domainPids(stateDir, stale);
  for (const vm of stale) {
    const age = ageSeconds(vm.dir);
    if (!vm.record && age < UNRECORDED_MIN_AGE_S) continue;
    const pubs = records.filter((r) => r.owner?.kind === 'surebackup' && r.owner.id === vm.name);
    for (const p of pubs) out.publications.add(p.id);
    const pid = vm.record ? domains.get(vm.record.domain) : undefined;
    if (pid !== undefined) out.pids.add(pid);
    out.items.push({
      item: {
        id: `vm:${vm.name}`,
        kind: 'vm',
        name: vm.name,
        // Without a record nothing says which run it was: listed, and removed only when named.
        safe: vm.record !== undefined,
        ageSeconds: age,
        reason: vm.record
          ? `the SureBackup run (pid ${vm.record.pid}) that verified it is gone${pid !== undefined ? `; its VM ${vm.record.domain} (pid ${pid}) still runs` : ''}`
          : 'a verification VM work directory without a record (left by an older version or a crash)',
      },
      clean: async () => {
        await removeVm(stateDir, vm, pubs);
        return undefined;
      },
    });
  }
  return out;
}

/** The running QEMU of each recorded domain, through its driver. */
async function domainPids(stateDir: string, vms: VerificationVm[]): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  const drivers = new Set(vms.flatMap((v) => (v.record ? [v.record.driver] : [])));
  if (drivers.size === 0) return out;
  const { createHypervisor } = await import('../hypervisor/index.js');
  for (const driver of drivers) {
    const hv = createHypervisor(driver, { stateDir });
    try {
      for (const d of await hv.list()) if (d.pid !== undefined) out.set(d.name, d.pid);
    } catch {
      // a driver that cannot list (libvirtd down): its VMs are destroyed when cleaned, or the cleanup fails and says why
    } finally {
      await hv.close().catch(() => undefined);
    }
  }
  return out;
}

async function removeVm(stateDir: string, vm: VerificationVm, pubs: PublicationRecord[]): Promise<void> {
  const rec = vm.record;
  if (rec) {
    const { createHypervisor } = await import('../hypervisor/index.js');
    const hv = createHypervisor(rec.driver, { stateDir });
    try {
      await (await hv.attach(rec.domain))?.destroy();
    } finally {
      await hv.close().catch(() => undefined);
    }
    const { removeLabTap } = await import('../lab/lab.js');
    for (const tap of rec.taps) await removeLabTap(stateDir, rec.lab, tap);
  }
  const { removePublication } = await import('../publish/publish.js');
  // Its run's process is gone, so anyone may remove the run's publication (publish.ts, assertOwner).
  for (const p of pubs) await removePublication(stateDir, p.id, { discard: true, as: p.owner ?? { kind: 'surebackup', id: vm.name } });
  // A FUSE mount its publisher could not take down (QEMU still closing the disk when the publisher was told to
  // stop) outlives the publication; its publication is gone, so it is an orphan, and rm would fail on it (EISDIR).
  const { mountsUnder } = await import('../host/mounts.js');
  const { detachMount } = await import('../fuse/mounts.js');
  for (const m of mountsUnder(vm.dir).reverse()) if (m.fstype.startsWith('fuse')) await detachMount(m.mountPoint);
  fs.rmSync(vm.dir, { recursive: true, force: true });
}

function ageSeconds(dir: string): number {
  try {
    return Math.max(0, Math.round((Date.now() - fs.statSync(dir).mtimeMs) / 1000));
  } catch {
    return 0;
  }
}

/**
 * The real LabBackend: restore points published from the repository (the
 * session layer's seam: repository, publishing, hypervisor driver), VMs
 * started under the configured driver on taps in the job's virtual lab.
 *
 * Unlike `recover` (src/session), a SureBackup VM is handed to the tests as
 * soon as its domain starts: the heartbeat *test* decides whether it came up
 * (agent, IP, or boot time; src/verify/heartbeat.ts), so a VM without an agent
 * or one that never boots is still there for its screenshot. The run's process
 * serves the publications, and every VM is torn down by the runner (stop), on
 * cancel too; what a VM made is removed in reverse order even when a step of
 * its start failed.
 */
import { mkdirSync, openSync, readSync, closeSync, fstatSync, rmSync } from 'node:fs';
import { isAbsolute, join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import { addLabTap, labDown, labUp, loadLab, masqueradeAddress, parseLab, readLabState, removeLabTap, type LabDefinition, type LabState } from '../lab/lab.js';
import type { RepositoryReader } from '../repo/contract.js';
import type { RunningPublication } from '../publish/contract.js';
import type { Domain, NicAttachment } from '../hypervisor/types.js';
import { closeHypervisor, type SessionDeps } from '../session/seam.js';
import { depsWithKey, realDeps } from '../session/deps.js';
import { RestorelabError } from '../errors.js';
import type { LabBackend, RecoveredVm } from './runner.js';

export interface BackendOptions {
  repo: string;
  stateDir: string;
  driver: 'qemu' | 'libvirt';
  accel?: 'auto' | 'kvm' | 'tcg';
  /** Relative lab paths in a job are resolved against this (the job file's directory). */
  baseDir?: string;
  deps?: SessionDeps;
  /** Key file of an encrypted repository (config/key-file.ts). */
  keyFile?: string;
}

export interface RealLabBackend extends LabBackend {
  reader(): Promise<RepositoryReader>;
  close(): Promise<void>;
}

const SERIAL_TAIL_BYTES = 64 * 1024;

function tail(path: string, bytes: number): string {
  const fd = openSync(path, 'r');
  try {
    const size = fstatSync(fd).size;
    const len = Math.min(size, bytes);
    const buf = Buffer.alloc(len);
    readSync(fd, buf, 0, len, size - len);
    return buf.toString('utf8');
  } finally { closeSync(fd); }
}

export function createLabBackend(o: BackendOptions): RealLabBackend {
  const deps = o.deps ?? (o.keyFile === undefined ? realDeps : depsWithKey(o.keyFile));
  const hv = deps.hypervisor(o.driver, { stateDir: o.stateDir, ...(o.accel ? { accel: o.accel } : {}) });
  let repo: Promise<RepositoryReader> | undefined;
  const reader = (): Promise<RepositoryReader> => (repo ??= deps.openRepository(o.repo));
  let lab: LabState | undefined;
  let labCreated = false;
  const accel = o.accel === 'kvm' || o.accel === 'tcg' ? o.accel : undefined;

  return {
    reader,
    async close() { await closeHypervisor(hv); },

    async labUp(def: unknown) {
      const d: LabDefinition = typeof def === 'string'
        ? loadLab(isAbsolute(def) ? def : resolve(o.baseDir ?? process.cwd(), def))
        : parseLab(def, 'the job\'s inline lab');
      const existing = readLabState(o.stateDir, d.name);
      if (existing?.ready) { lab = existing; labCreated = false; } else { labCreated = true; lab = await labUp(d, { stateDir: o.stateDir, owner: { pid: process.pid, what: 'SureBackup run' } }); }
      return { netns: lab.netns };
    },

    async labDown() {
      if (lab && labCreated) await labDown(lab.name, { stateDir: o.stateDir, quietIfMissing: true });
      lab = undefined;
    },

    async listPoints(vm) {
      const points = await (await reader()).listPoints({ vm });
      return points.filter((p) => !p.damaged).sort((a, b) => a.time.localeCompare(b.time)).map((p) => ({ id: p.id, time: p.time }));
    },

    async listVms(tag) {
      const points = await (await reader()).listPoints();
      return [...new Set(points.filter((p) => tag === undefined || (p.vm.tags ?? []).includes(tag)).map((p) => p.vm.name))].sort();
    },

    async recover(vmName, pointId, opts) {
      if (!lab) throw new RestorelabError('LAB_NOT_UP', 'the lab is not up');
      const labState = lab;
      const point = await (await reader()).getPoint(pointId);
      const def = point.vm;
      const id = randomBytes(3).toString('hex');
      const work = join(o.stateDir, 'surebackup', 'vms', `${vmName}-${id}`);
      const undo: (() => Promise<void>)[] = [];
      const cleanup = async (): Promise<void> => {
        for (const f of undo.reverse()) await f().catch(() => undefined);
        undo.length = 0;
      };
      try {
        mkdirSync(work, { recursive: true });
        undo.push(async () => rmSync(work, { recursive: true, force: true }));
        const check = (): void => { if (opts.signal.aborted) throw opts.signal.reason; };
        // Owned by this VM's verification: a point the server exports over NFS gets a second
        // publication, so its clients' overlay is neither reset now nor discarded at the end.
        const pub: RunningPublication = await deps.startPublication({
          repo: o.repo, point: pointId, stateDir: o.stateDir, fuseDir: join(work, 'mnt'), owner: { kind: 'surebackup', id: `${vmName}-${id}` },
        });
        undo.push(() => pub.close({ discard: true }));
        check();
        const nics: NicAttachment[] = [];
        for (const nic of def.nics) {
          const { tap, netns } = await addLabTap(o.stateDir, labState.name, nic.network);
          undo.push(() => removeLabTap(o.stateDir, labState.name, tap));
          nics.push({ kind: 'tap', tap, netns, mac: nic.mac, model: nic.model === 'e1000' ? 'e1000' : 'virtio' });
        }
        const disks = def.disks.map((d) => {
          const path = pub.disks[d.name];
          if (!path) throw new RestorelabError('PUBLICATION_INCOMPLETE', `the publication of ${pointId} has no disk ${d.name}`);
          return { name: d.name, path, format: 'raw' as const };
        });
        check();
        const domain: Domain = await hv.start({ vm: { ...def, name: `sb-${vmName.slice(0, 30)}-${id}`, memoryMiB: opts.memoryMiB ?? def.memoryMiB }, disks, nics, ...(accel ? { accel } : {}) });
        undo.push(() => domain.destroy());
        check();
        const ip = def.nics.find((n) => n.ip)?.ip;
        if (!ip) throw new RestorelabError('VM_WITHOUT_ADDRESS', `VM ${vmName} has no NIC with an "ip" in its definition`, { hint: 'network tests need the production address of the VM' });
        let dumps = 0;
        const h: RecoveredVm = {
          ip, masqIp: masqueradeAddress(labState, ip) ?? ip, netns: labState.netns,
          agentPing: async () => {
            const c = await domain.agent(2000);
            try { await c.ping(2000); return true; } finally { c.close(); }
          },
          screendump: async () => { const p = join(work, `screen-${dumps++}.ppm`); await domain.screendump(p); return p; },
          serialLog: async () => tail(domain.consoleLog, SERIAL_TAIL_BYTES),
          stop: cleanup,
        };
        return h;
      } catch (err) {
        await cleanup();
        throw err;
      }
    },
  };
}

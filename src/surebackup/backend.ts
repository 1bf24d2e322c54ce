/**
 * The real LabBackend: restore points published from the repository (the
 * session layer's seam: repository, publishing, hypervisor driver), VMs
 * started under the configured driver on taps in the job's virtual lab.
 *
 * Each VM comes up through the one bring-up path `recover` uses too
 * (src/bringup): the same publication, taps, domain and heartbeat probes.
 * The one difference is a parameter: a verification does not wait for the
 * heartbeat there; the heartbeat *test* decides whether it came up (the same
 * decision, src/verify/heartbeat.ts), so a VM that never boots is still there
 * for its screenshot. The run's process serves the publications, and every
 * VM is torn down by the runner (stop), on cancel too, keeping its serial
 * console log (and the last screen of a failed VM) in the run's directory.
 */
import { mkdirSync, openSync, readSync, closeSync, fstatSync, rmSync } from 'node:fs';
import { isAbsolute, join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import { labDown, labUp, loadLab, parseLab, readLabState, type LabDefinition, type LabState } from '../lab/lab.js';
import type { RepositoryReader } from '../repo/contract.js';
import { closeHypervisor, type SessionDeps } from '../session/seam.js';
import { depsWithKey, realDeps } from '../session/deps.js';
import { RestorelabError } from '../errors.js';
import { bringUp, tearDown, type BringUpRequest, type BringUpResources, type KeptEvidence } from '../bringup/bringup.js';
import type { EvidencePaths } from '../bringup/evidence.js';
import type { LabBackend } from './runner.js';
import type { RecoveredVm } from '../verify/contract.js';
import { verificationVmsDir, writeVmRecord, type VerificationVmRecord } from './vm-record.js';

export interface BackendOptions {
  repo: string;
  stateDir: string;
  driver: 'qemu' | 'libvirt';
  accel?: 'auto' | 'kvm' | 'tcg';
  /** Relative lab paths in a job are resolved against this (the job file's directory). */
  baseDir?: string;
  /** FUSE access group for the VMs' publications (config fuse.group): QEMU running as another user. */
  fuseGroup?: string;
  deps?: SessionDeps;
  /** Key file of an encrypted repository (config/key-file.ts). */
  keyFile?: string;
  /** The catalog a job's `scan` gate keeps its verdicts in (default: `<stateDir>/catalog.sqlite`, the configured default). */
  catalog?: string;
  /** Mirror labs onto free subnets of this masquerade pool (a lab worker sharing its host: src/lab/masquerade-pool.ts). */
  masqueradePool?: string;
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
  } finally {
    closeSync(fd);
  }
}

/** Where a run keeps a VM's evidence: beside its report and screenshot, `<vm>.console.log` and `<vm>.png`. */
export function runEvidence(dir: string, vm: string, screenshot: boolean): EvidencePaths {
  return { console: join(dir, `${vm}.console.log`), ...(screenshot ? { screenshot: join(dir, `${vm}.png`) } : {}) };
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
    async close() {
      await closeHypervisor(hv);
    },

    async labUp(def: unknown, _signal, opts = {}) {
      const d: LabDefinition =
        typeof def === 'string'
          ? loadLab(isAbsolute(def) ? def : resolve(o.baseDir ?? process.cwd(), def))
          : parseLab(def, "the job's inline lab");
      if (opts.uplink === false) {
        // A quarantine lab is never shared: its own name, made and removed by this run.
        labCreated = true;
        lab = await labUp(
          { ...d, name: `${d.name.slice(0, 20)}-q${randomBytes(3).toString('hex')}` },
          { stateDir: o.stateDir, owner: { pid: process.pid, what: 'SureBackup run (quarantine)' }, uplink: false },
        );
        return { netns: lab.netns };
      }
      const existing = readLabState(o.stateDir, d.name);
      if (existing?.ready) {
        lab = existing;
        labCreated = false;
      } else {
        labCreated = true;
        lab = await labUp(d, {
          stateDir: o.stateDir,
          owner: { pid: process.pid, what: 'SureBackup run' },
          ...(o.masqueradePool !== undefined ? { masqueradePool: o.masqueradePool } : {}),
        });
      }
      return { netns: lab.netns };
    },

    async labDown() {
      if (lab && labCreated) await labDown(lab.name, { stateDir: o.stateDir, quietIfMissing: true });
      lab = undefined;
    },

    async listPoints(vm) {
      const points = await (await reader()).listPoints({ vm });
      return points
        .filter((p) => !p.damaged)
        .sort((a, b) => a.time.localeCompare(b.time))
        .map((p) => ({ id: p.id, time: p.time, ...(p.vm.role !== undefined ? { role: p.vm.role } : {}) }));
    },

    async listVms(tag) {
      const points = await (await reader()).listPoints();
      return [...new Set(points.filter((p) => tag === undefined || (p.vm.tags ?? []).includes(tag)).map((p) => p.vm.name))].sort();
    },

    async scan(_vm, pointId, rulesFile) {
      const { scanPoint, withRules } = await import('../scan/scan.js');
      const { connectCatalog } = await import('../catalog/catalog.js');
      const db = await connectCatalog(o.catalog ?? join(o.stateDir, 'catalog.sqlite'));
      try {
        const repo = await reader();
        const r = await withRules(o.stateDir, rulesFile, (rules) =>
          scanPoint({ repo, point: pointId, stateDir: o.stateDir, db, rules, ...(o.keyFile ? { keyFile: o.keyFile } : {}) }),
        );
        return { verdict: r.verdict, matches: r.matches, files: r.files };
      } finally {
        await db.close();
      }
    },

    async recover(vmName, pointId, opts) {
      if (!lab) throw new RestorelabError('LAB_NOT_UP', 'the lab is not up');
      const labState = lab;
      const point = await (await reader()).getPoint(pointId);
      const def = point.vm;
      const ip = def.nics.find((n) => n.ip)?.ip;
      if (!ip)
        throw new RestorelabError('VM_WITHOUT_ADDRESS', `VM ${vmName} has no NIC with an "ip" in its definition`, {
          hint: 'network tests need the production address of the VM',
        });
      const id = randomBytes(3).toString('hex');
      const work = join(verificationVmsDir(o.stateDir), `${vmName}-${id}`);
      mkdirSync(work, { recursive: true });
      // Without the run's directory (a caller that keeps nothing) the evidence would die with the work dir.
      const evidenceDir = opts.evidenceDir ?? join(o.stateDir, 'surebackup', 'evidence', `${vmName}-${id}`);
      const resources: BringUpResources = { taps: [] };
      const req = backendBringUpRequest({
        repo: o.repo,
        stateDir: o.stateDir,
        point: pointId,
        vm: def,
        vmName,
        id,
        work,
        lab: labState,
        evidenceDir,
        resources,
        ...(accel ? { accel } : {}),
        ...(o.fuseGroup !== undefined ? { fuseGroup: o.fuseGroup } : {}),
        ...(opts.memoryMiB !== undefined ? { memoryMiB: opts.memoryMiB } : {}),
        signal: opts.signal,
      });
      // Written before anything is started: if this process dies, cleanup knows whose VM it was.
      const record: VerificationVmRecord = { pid: process.pid, driver: o.driver, domain: req.domainName, lab: labState.name, taps: [] };
      writeVmRecord(work, record);
      const vm = await bringUp(req, hv, deps).catch((err: unknown) => {
        rmSync(work, { recursive: true, force: true });
        throw err;
      });
      writeVmRecord(work, { ...record, taps: resources.taps.map((t) => t.tap) });
      const domain = vm.domain;
      let dumps = 0;
      let stopped: Promise<KeptEvidence> | undefined;
      const h: RecoveredVm = {
        ip,
        masqIp: vm.addresses[`nic${def.nics.findIndex((n) => n.ip)}`] ?? ip,
        netns: labState.netns,
        ...(vm.probes.agentPing ? { agentPing: vm.probes.agentPing } : {}),
        screendump: async () => {
          const p = join(work, `screen-${dumps++}.ppm`);
          await domain.screendump(p);
          return p;
        },
        consoleText: () => domain.readVgaText(),
        serialLog: async () => tail(domain.consoleLog, SERIAL_TAIL_BYTES),
        // Stopped once, whoever asks first (the VM's end, or the run's end on cancel).
        stop: (how = {}) =>
          (stopped ??= (async () => {
            try {
              return await tearDown({
                hv,
                deps,
                stateDir: o.stateDir,
                owner: req.owner,
                resources,
                save: req.save,
                publication: vm.publication,
                domain,
                evidence: runEvidence(evidenceDir, vmName, how.screenshot === true),
              });
            } finally {
              rmSync(work, { recursive: true, force: true });
            }
          })()),
      };
      return h;
    },
  };
}

/** What a SureBackup VM passes to the one bring-up path (src/bringup). */
export function backendBringUpRequest(a: {
  repo: string;
  stateDir: string;
  point: string;
  vm: BringUpRequest['vm'];
  vmName: string;
  id: string;
  work: string;
  lab: LabState;
  evidenceDir: string;
  resources: BringUpResources;
  accel?: 'kvm' | 'tcg';
  fuseGroup?: string;
  memoryMiB?: number;
  signal?: AbortSignal;
}): BringUpRequest {
  return {
    repo: a.repo,
    stateDir: a.stateDir,
    point: a.point,
    vm: a.vm,
    // Owned by this VM's verification: a point the server exports over NFS gets a second
    // publication, so its clients' overlay is neither reset now nor discarded at the end.
    owner: { kind: 'surebackup', id: `${a.vmName}-${a.id}` },
    domainName: `sb-${a.vmName.slice(0, 30)}-${a.id}`,
    workDir: a.work,
    ...(a.fuseGroup !== undefined ? { fuseGroup: a.fuseGroup } : {}),
    network: { kind: 'lab', lab: a.lab },
    ...(a.accel ? { accel: a.accel } : {}),
    ...(a.memoryMiB !== undefined ? { memoryMiB: a.memoryMiB } : {}),
    // No heartbeat wait: the heartbeat test decides, and a VM that never boots stays for its screenshot.
    evidence: runEvidence(a.evidenceDir, a.vmName, true),
    resources: a.resources,
    save: () => undefined,
    ...(a.signal ? { signal: a.signal } : {}),
  };
}

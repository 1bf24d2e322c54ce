/**
 * LabBringUp: the one path that brings a restore point up as a running VM
 * and takes it down again. Instant recovery (`recover`, src/session/runner.ts)
 * and SureBackup verification (src/surebackup/backend.ts) both call it, so a
 * point cannot come up one way for one and another way for the other.
 *
 * Up, in this order, each resource written to the caller's record before it
 * is made (`resources` + `save`: the session's persisted record, so `stop`
 * after a supervisor crash knows what to remove; a run's in-memory one):
 *   1. an owned publication of the point (owner `session` or `surebackup`,
 *      FUSE at `<workDir>/mnt` with the configured access group, NFS, or
 *      NBD on a unix socket with the same access group);
 *   2. one tap per NIC in the lab (or the NIC on a host bridge);
 *   3. the domain, its disks on the published files;
 *   4. with `heartbeat`, the heartbeat decision of src/verify/heartbeat.ts,
 *      made on the same probes the SureBackup heartbeat test uses.
 * Down (tearDown), in reverse: evidence kept (console log, last screen),
 * domain, taps, publication. Bringing the lab itself up and down stays with
 * the caller: a run owns its lab for all its VMs, a session may share one.
 *
 * What differs between the callers is a parameter, not a copy:
 * `heartbeat` (recover waits for it; a verification gets the VM at once and
 * its heartbeat *test* decides, so a VM that never boots is still there for
 * its screenshot), and the names that say whose it is (`owner`,
 * `domainName`, `workDir`, `evidence`, `resources`/`save`). BRINGUP_CALLER_PARAMS
 * lists them; test/bringup/one-path.test.ts checks that nothing else differs.
 */
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { RestorelabError } from '../errors.js';
import { exec } from '../host/exec.js';
import { mountsUnder } from '../host/mounts.js';
import { addLabTap, masqueradeAddress, removeLabTap, type LabState } from '../lab/lab.js';
import type { Domain, Hypervisor, NicAttachment } from '../hypervisor/types.js';
import type { PublicationOwner, PublishOptions, RunningPublication } from '../publish/contract.js';
import type { VmDefinition } from '../vm/definition.js';
import { heartbeat, ipAnswers, type HeartbeatProbes } from '../verify/heartbeat.js';
import type { TestResult } from '../verify/contract.js';
import { describeEvidence, keepEvidence, type EvidencePaths, type KeptEvidence } from './evidence.js';

export type { KeptEvidence } from './evidence.js';

/** The layers below (the session seam's publishing half). */
export interface BringUpDeps {
  startPublication(opts: PublishOptions): Promise<RunningPublication>;
  /** Removes a publication whose serving process is gone, on behalf of `owner`; one already gone is no error. */
  removePublication(stateDir: string, id: string, owner: PublicationOwner): Promise<void>;
}

/** Where the VM's NICs go. */
export type BringUpNetwork =
  | { kind: 'lab'; lab: LabState }
  | { kind: 'bridge'; bridge: string }
  /** No NIC attached (a recovery with neither --lab nor --network). */
  | { kind: 'none' };

/** How the disks reach the hypervisor: FUSE (default), our NFSv3 server on these ports, or our NBD server on a unix socket. */
export type BringUpPublish = { via: 'fuse' } | { via: 'nfs'; port: number; mountPort: number; portmapPort: number | null } | { via: 'nbd' };

/** What a bring-up made, recorded before it is made. A session's SessionResources is one. */
export interface BringUpResources {
  publication?: { id: string; mount?: string };
  taps: { lab: string; tap: string }[];
  domain?: string;
}

export interface BringUpRequest {
  repo: string;
  stateDir: string;
  point: string;
  /** The VM definition stored with the point. */
  vm: VmDefinition;
  /** Who the publication belongs to: `session` (recover) or `surebackup` (a run's VM). */
  owner: PublicationOwner;
  /** The domain's name under the driver (unique: the same VM may run twice). */
  domainName: string;
  /** Scratch directory of this bring-up; a FUSE publication is mounted at `<workDir>/mnt`. */
  workDir: string;
  publish?: BringUpPublish;
  /** FUSE (and NBD socket) access group (config fuse.group), for a hypervisor whose QEMU runs as another user. */
  fuseGroup?: string;
  network: BringUpNetwork;
  accel?: 'kvm' | 'tcg';
  /** Overrides the definition's memory (a job's memoryMiB). */
  memoryMiB?: number;
  /**
   * Wait for the heartbeat before returning, at most `maxBootSeconds`
   * (recover). Absent: return once the domain runs (verification).
   */
  heartbeat?: { maxBootSeconds: number };
  /** Where tearDown keeps the evidence; `screenshot` only for a failure. */
  evidence: EvidencePaths;
  resources: BringUpResources;
  /** Persists `resources` (a session's record); called after every change. */
  save(): void;
  signal?: AbortSignal;
}

/**
 * The parameters in which `recover` and a SureBackup verification differ
 * (docs/architecture.md, "One bring-up path"). Everything else is the same
 * for the same point in the same lab; `publish`, `network` and `memoryMiB`
 * differ only when the user asks (recover --publish nfs / --network, a
 * job's memoryMiB).
 */
export const BRINGUP_CALLER_PARAMS = ['owner', 'domainName', 'workDir', 'evidence', 'resources', 'save', 'heartbeat', 'signal'] as const;

export type HeartbeatVerdict = TestResult & { path: string };

export interface LabVm {
  domain: Domain;
  publication: RunningPublication;
  /** Disk name → the file (or nfs:// or NBD URL) the domain runs on. */
  disks: Record<string, string>;
  /** NIC key (`nic0`, ...) → the address the host reaches it on. */
  addresses: Record<string, string>;
  /** The probes the heartbeat decision runs on (the same for recover and the heartbeat test). */
  probes: HeartbeatProbes;
  /** The VM's production address (first NIC with an `ip`) and the lab namespace, when in a lab. */
  ip?: string;
  netns?: string;
  /** The heartbeat verdict, when the bring-up waited for it. */
  heartbeat?: HeartbeatVerdict;
}

/** Unless its definition says `"agent": false`, a VM is expected to answer on its guest agent. */
export function agentExpected(vm: VmDefinition): boolean {
  return vm.agent !== false;
}

/**
 * The heartbeat probes of a running domain: the guest agent (only when one is
 * expected) and the production address seen from the lab (or the host for a
 * bridge). The SureBackup heartbeat test and `recover` both decide on these.
 */
export function heartbeatProbes(domain: Domain, vm: VmDefinition, network: BringUpNetwork): HeartbeatProbes {
  const ip = vm.nics.find((n) => n.ip)?.ip;
  const agentPing = async (): Promise<boolean> => {
    const c = await domain.agent(2000);
    try {
      await c.ping(2000);
      return true;
    } finally {
      c.close();
    }
  };
  const ipAnswer = async (): Promise<boolean> => {
    if (ip === undefined) return false;
    if (network.kind === 'lab') return ipAnswers(network.lab.netns, ip);
    if (network.kind === 'bridge') return (await exec('ping', ['-c', '1', '-W', '1', ip], { timeoutMs: 3000 })).code === 0;
    return false;
  };
  return { ...(agentExpected(vm) ? { agentPing } : {}), ipAnswer };
}

/**
 * Brings `req.point` up. On any failure what was made is removed (the
 * evidence kept first), and the error is rethrown with the kept paths in its
 * hint.
 */
export async function bringUp(req: BringUpRequest, hv: Hypervisor, deps: BringUpDeps): Promise<LabVm> {
  const res = req.resources;
  const check = (): void => {
    if (req.signal?.aborted) throw req.signal.reason;
  };
  let publication: RunningPublication | undefined;
  let domain: Domain | undefined;
  try {
    const via = req.publish ?? { via: 'fuse' as const };
    const mount = via.via === 'fuse' ? join(req.workDir, 'mnt') : undefined;
    if (mount) mkdirSync(mount, { recursive: true });
    res.publication = { id: '', ...(mount ? { mount } : {}) };
    req.save();
    // Owned: a point the server (or someone else) already exports gets a
    // publication of its own, whose overlay nobody else resets or discards.
    publication = await deps.startPublication({
      repo: req.repo,
      point: req.point,
      stateDir: req.stateDir,
      owner: req.owner,
      ...(mount ? { fuseDir: mount } : {}),
      ...((mount || via.via === 'nbd') && req.fuseGroup !== undefined ? { fuseGroup: req.fuseGroup } : {}),
      ...(via.via === 'nfs' ? { nfs: { port: via.port, mountPort: via.mountPort, portmapPort: via.portmapPort } } : {}),
      ...(via.via === 'nbd' ? { nbd: {} } : {}),
    });
    res.publication = { id: publication.id, ...(mount ? { mount } : {}) };
    req.save();
    check();

    const net = req.network;
    const nics: NicAttachment[] = [];
    for (const nic of req.vm.nics) {
      const model = nic.model === 'e1000' ? 'e1000' : 'virtio';
      if (net.kind === 'lab') {
        const { tap, netns } = await addLabTap(req.stateDir, net.lab.name, nic.network);
        res.taps.push({ lab: net.lab.name, tap });
        req.save();
        nics.push({ kind: 'tap', tap, netns, mac: nic.mac, model });
      } else if (net.kind === 'bridge') {
        nics.push({ kind: 'bridge', bridge: net.bridge, mac: nic.mac, model });
      }
    }
    const pub = publication;
    const disks = req.vm.disks.map((d) => {
      const path = via.via === 'nfs' ? pub.urls?.[d.name] : via.via === 'nbd' ? pub.nbd?.[d.name] : pub.disks[d.name];
      if (!path) throw new RestorelabError('PUBLICATION_INCOMPLETE', `the publication of ${req.point} has no disk ${d.name}`);
      return { name: d.name, path, format: 'raw' as const };
    });
    check();
    res.domain = req.domainName;
    req.save();
    domain = await hv.start({
      vm: { ...req.vm, name: req.domainName, memoryMiB: req.memoryMiB ?? req.vm.memoryMiB },
      disks,
      nics,
      ...(req.accel ? { accel: req.accel } : {}),
    });
    check();

    const ip = req.vm.nics.find((n) => n.ip)?.ip;
    const addresses: Record<string, string> = {};
    req.vm.nics.forEach((nic, i) => {
      if (!nic.ip) return;
      const addr = net.kind === 'lab' ? masqueradeAddress(net.lab, nic.ip) : net.kind === 'bridge' ? nic.ip : undefined;
      if (addr) addresses[`nic${i}`] = addr;
    });
    const vm: LabVm = {
      domain,
      publication,
      disks: Object.fromEntries(disks.map((d) => [d.name, d.path])),
      addresses,
      probes: heartbeatProbes(domain, req.vm, net),
      ...(ip ? { ip } : {}),
      ...(net.kind === 'lab' ? { netns: net.lab.netns } : {}),
    };
    if (req.heartbeat) {
      const verdict = await heartbeat(vm.probes, {
        maxBootSeconds: req.heartbeat.maxBootSeconds,
        ...(req.signal ? { signal: req.signal } : {}),
      });
      if (verdict.result === 'failed') {
        throw new RestorelabError(
          'NO_HEARTBEAT',
          `VM ${req.vm.name} was started from ${req.point} but gave no heartbeat: ${verdict.detail}`,
          {
            hint: agentExpected(req.vm)
              ? 'the guest needs qemu-guest-agent running (or "agent": false in its VM definition if it has none)'
              : 'the guest never answered on its address; check its network configuration',
          },
        );
      }
      vm.heartbeat = verdict;
    }
    return vm;
  } catch (e) {
    const kept: KeptEvidence = {};
    await tearDown({
      hv,
      deps,
      stateDir: req.stateDir,
      owner: req.owner,
      resources: res,
      save: req.save,
      ...(publication ? { publication } : {}),
      ...(domain ? { domain } : {}),
      evidence: req.evidence,
      kept,
    }).catch(() => undefined);
    throw withEvidence(e, kept);
  }
}

/** The error with the kept evidence named in its hint (the paths a person opens next). */
function withEvidence(e: unknown, kept: KeptEvidence): unknown {
  const said = describeEvidence(kept);
  if (!said || !(e instanceof RestorelabError)) return e;
  return RestorelabError.revive(
    { code: e.code, message: e.message, hint: e.hint ? `${e.hint}; ${said}` : said, exitCode: e.exitCode },
    { cause: e },
  );
}

export interface TearDownOptions {
  hv: Hypervisor;
  /** Needed only without a live `publication`: removes it by id. */
  deps?: BringUpDeps;
  stateDir: string;
  owner: PublicationOwner;
  resources: BringUpResources;
  save(): void;
  /** The live publication; absent when its serving process is gone (a dead supervisor). */
  publication?: RunningPublication;
  /** The live domain, when the caller holds it (otherwise re-attached by name). */
  domain?: Domain;
  /** Keep the console log (and, with `screenshot`, the last screen) here before the domain goes. */
  evidence?: EvidencePaths;
  /** Filled with what was kept, also when a later step fails. */
  kept?: KeptEvidence;
}

/**
 * Removes what `resources` says was made, in reverse order of creation.
 * Each step runs even when an earlier one failed; the first failure is
 * rethrown at the end. Idempotent: what is gone is no longer in the record.
 */
export async function tearDown(o: TearDownOptions): Promise<KeptEvidence> {
  const res = o.resources;
  const kept = o.kept ?? {};
  const failures: unknown[] = [];
  const step = async (f: () => Promise<void>): Promise<void> => {
    try {
      await f();
    } catch (e) {
      failures.push(e);
    }
  };
  // Without its live publication object the FUSE server is gone (the
  // supervisor died), yet QEMU inherited the /dev/fuse descriptor and keeps
  // the connection open: its I/O then waits forever, it cannot be killed,
  // and statfs of the mount hangs. Aborting the connection ends all that.
  const mount = res.publication?.mount;
  if (mount && !o.publication) await step(() => abortFuseConnections(mount));
  if (res.domain) {
    const name = res.domain;
    await step(async () => {
      const dom = o.domain?.name === name ? o.domain : await o.hv.attach(name);
      if (dom && o.evidence) Object.assign(kept, await keepEvidence(dom, o.evidence));
      await dom?.destroy();
      delete res.domain;
      o.save();
    });
  }
  for (const t of [...res.taps]) {
    await step(async () => {
      await removeLabTap(o.stateDir, t.lab, t.tap);
      res.taps = res.taps.filter((x) => x !== t);
      o.save();
    });
  }
  if (res.publication) {
    await step(async () => {
      if (o.publication) await o.publication.close({ discard: true });
      else {
        const id = res.publication?.id;
        if (id && o.deps)
          await o.deps.removePublication(o.stateDir, id, o.owner).catch((e: unknown) => {
            if (!(e instanceof RestorelabError && e.code === 'PUBLICATION_NOT_FOUND')) throw e;
          });
        if (mount) await unmountStale(mount);
      }
      delete res.publication;
      o.save();
    });
  }
  if (failures.length) throw failures[0];
  return kept;
}

const FUSE_CONNECTIONS = '/sys/fs/fuse/connections';

/** Aborts the kernel side of every FUSE mount at or below `mount` (see tearDown). */
export async function abortFuseConnections(mount: string): Promise<void> {
  for (const m of mountsUnder(mount)) {
    if (!m.fstype.startsWith('fuse')) continue;
    const minor = m.device.split(':')[1];
    if (!existsSync(FUSE_CONNECTIONS) || readdirSync(FUSE_CONNECTIONS).length === 0) {
      await exec('mount', ['-t', 'fusectl', 'fusectl', FUSE_CONNECTIONS], { timeoutMs: 10_000 });
    }
    const abort = join(FUSE_CONNECTIONS, String(minor), 'abort');
    if (minor && existsSync(abort)) writeFileSync(abort, '1');
  }
}

/** A publication whose serving process died leaves a dead FUSE mount ("transport endpoint is not connected"). */
export async function unmountStale(mount: string): Promise<void> {
  for (const { mountPoint: mp } of mountsUnder(mount)) {
    const r = await exec('fusermount', ['-u', '-z', mp], { timeoutMs: 10_000 });
    if (r.code !== 0) await exec('umount', ['-l', mp], { timeoutMs: 10_000 });
  }
}

/**
 * The in-process half of a session: bring it up and take it down. The
 * supervisor runs these. The bring-up itself (publication, taps, domain,
 * heartbeat) is the one SureBackup uses too (src/bringup); what is the
 * session's own is the lab it may bring up and share with other sessions,
 * and its record: every resource is written to it before it is created, so
 * teardown (here, or `stop` after a supervisor crash) knows what to remove.
 */
import { existsSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import { mountsUnder } from '../host/mounts.js';
import { join } from 'node:path';
import { badInput } from '../errors.js';
import { labDown, labUp, readLabState } from '../lab/lab.js';
import type { Domain, Hypervisor } from '../hypervisor/types.js';
import type { RunningPublication } from '../publish/contract.js';
import { bringUp as bringUpPoint, tearDown, type BringUpNetwork, type BringUpRequest, type KeptEvidence } from '../bringup/bringup.js';
import type { EvidencePaths } from '../bringup/evidence.js';
import type { RecoveryPlan } from './plan.js';
import { ACTIVE_STATES, type RecoverySession } from './session.js';
import type { SessionStore } from './store.js';
import type { SessionDeps } from './seam.js';

export { abortFuseConnections, unmountStale } from '../bringup/bringup.js';

export const HEARTBEAT_TIMEOUT_MS = 180_000;

export interface LiveSession {
  session: RecoverySession;
  hv: Hypervisor;
  domain: Domain;
  publication?: RunningPublication;
}

/**
 * Where a session keeps the evidence of its VM (console log, last screen):
 * its work directory, which teardown leaves alone.
 */
export function sessionEvidence(store: SessionStore, id: string, screenshot: boolean): EvidencePaths {
  const dir = join(store.workDir(id), 'evidence');
  return { console: join(dir, 'console.log'), ...(screenshot ? { screenshot: join(dir, 'screen.png') } : {}) };
}

/** What the session passes to the one bring-up path (src/bringup). */
export function sessionBringUpRequest(
  s: RecoverySession,
  plan: RecoveryPlan,
  store: SessionStore,
  network: BringUpNetwork,
  heartbeatTimeoutMs: number,
): BringUpRequest {
  return {
    repo: s.repo,
    stateDir: store.stateDir,
    point: s.point,
    vm: plan.vm,
    owner: { kind: 'session', id: s.id },
    domainName: s.domain,
    workDir: store.workDir(s.id),
    ...(s.publish ? { publish: s.publish } : {}),
    ...(s.fuseGroup !== undefined ? { fuseGroup: s.fuseGroup } : {}),
    network,
    ...(s.accel ? { accel: s.accel } : {}),
    // recover returns once the VM is up: it waits for the heartbeat here.
    heartbeat: { maxBootSeconds: heartbeatTimeoutMs / 1000 },
    evidence: sessionEvidence(store, s.id, true),
    resources: s.resources,
    save: () => store.save(s),
  };
}

/** Brings the session up; on any failure everything made so far is removed (evidence kept) and the error rethrown. */
export async function bringUp(
  s: RecoverySession,
  plan: RecoveryPlan,
  deps: SessionDeps,
  store: SessionStore,
  hv: Hypervisor,
  opts: { heartbeatTimeoutMs?: number } = {},
): Promise<LiveSession> {
  const res = s.resources;
  try {
    let network: BringUpNetwork = s.network ? { kind: 'bridge', bridge: s.network } : { kind: 'none' };
    if (plan.lab && s.quarantine && s.lab) {
      // An infected point allowed in: a copy of the lab under the session's own name, with no uplink (docs/secure-restore.md).
      res.labCreated = s.lab;
      store.save(s);
      network = {
        kind: 'lab',
        lab: await labUp(
          { ...plan.lab, name: s.lab },
          { stateDir: store.stateDir, owner: { pid: process.pid, what: `session ${s.id}` }, uplink: false },
        ),
      };
    } else if (plan.lab) {
      let lab = readLabState(store.stateDir, plan.lab.name);
      if (!lab?.ready) {
        res.labCreated = plan.lab.name;
        store.save(s);
        lab = await labUp(plan.lab, {
          stateDir: store.stateDir,
          owner: { pid: process.pid, what: `session ${s.id}` },
          ...(s.masqueradePool !== undefined ? { masqueradePool: s.masqueradePool } : {}),
        });
        writeFileSync(labMarker(store, plan.lab.name), s.id);
      }
      network = { kind: 'lab', lab };
    }
    const vm = await bringUpPoint(
      sessionBringUpRequest(s, plan, store, network, opts.heartbeatTimeoutMs ?? HEARTBEAT_TIMEOUT_MS),
      hv,
      deps,
    );
    const pid = vm.domain.pid();
    if (pid !== undefined) s.qemuPid = pid;
    s.disks = vm.disks;
    s.heartbeatSeconds = Math.round((Date.now() - Date.parse(s.createdAt)) / 100) / 10;
    if (vm.heartbeat) s.heartbeat = { path: vm.heartbeat.path, detail: vm.heartbeat.detail };
    s.addresses = vm.addresses;
    s.state = 'running';
    store.save(s);
    return { session: s, hv, domain: vm.domain, publication: vm.publication };
  } catch (e) {
    // The bring-up kept the evidence and removed what it made; the lab is the session's.
    const kept = evidenceOnDisk(store, s.id);
    if (kept.console || kept.screenshot) {
      s.evidence = kept;
      store.save(s);
    }
    await teardown(s, store, hv);
    throw e;
  }
}

/** The evidence files a session's work directory holds. */
export function evidenceOnDisk(store: SessionStore, id: string): KeptEvidence {
  const p = sessionEvidence(store, id, true);
  return {
    ...(existsSync(p.console) ? { console: p.console } : {}),
    ...(p.screenshot && existsSync(p.screenshot) ? { screenshot: p.screenshot } : {}),
  };
}

/**
 * Removes everything the record says the session made, in reverse order of
 * creation: the bring-up's resources (src/bringup: domain, taps,
 * publication; the console log kept first, and the screen too with
 * `screenshot`), then the lab if the session made it and nobody else runs
 * in it. Each step runs even when an earlier one failed; the first failure
 * is rethrown at the end. Migrated disks are production storage and are
 * never touched.
 */
export async function teardown(
  s: RecoverySession,
  store: SessionStore,
  hv: Hypervisor,
  publication?: RunningPublication,
  deps?: SessionDeps,
  opts: { screenshot?: boolean } = {},
): Promise<void> {
  const res = s.resources;
  const failures: unknown[] = [];
  const kept: KeptEvidence = {};
  await tearDown({
    hv,
    stateDir: store.stateDir,
    owner: { kind: 'session', id: s.id },
    resources: res,
    save: () => store.save(s),
    ...(deps ? { deps } : {}),
    ...(publication ? { publication } : {}),
    evidence: sessionEvidence(store, s.id, opts.screenshot === true),
    kept,
  }).catch((e: unknown) => failures.push(e));
  if (kept.console || kept.screenshot) {
    s.evidence = { ...s.evidence, ...kept };
    store.save(s);
  }
  // A lab a session brought up is taken down by the last live session in
  // it, whichever that is: the marker says recovery owns the lab (one the
  // user brought up with `lab up` has none and stays).
  const labName = res.labCreated ?? s.lab;
  if (labName && (res.labCreated || existsSync(labMarker(store, labName)))) {
    const shared = store.list().some((o) => o.id !== s.id && o.lab === labName && ACTIVE_STATES.includes(o.state));
    try {
      if (!shared) {
        await labDown(labName, { stateDir: store.stateDir, quietIfMissing: true });
        rmSync(labMarker(store, labName), { force: true });
      }
      delete res.labCreated;
      store.save(s);
    } catch (e) {
      failures.push(e);
    }
  }
  if (failures.length) throw failures[0];
}

function labMarker(store: SessionStore, lab: string): string {
  return join(store.dir, `lab-${lab}.owned`);
}

/** Whether anything is mounted at `path` or below it. */
export function isMounted(path: string): boolean {
  return mountsUnder(path).length > 0;
}

/** Throws when `dir` cannot hold `bytes` more (the disks' virtual size: a full mirror may allocate all of it). */
export function assertFreeSpace(dir: string, bytes: number): void {
  if (!existsSync(dir)) throw badInput('MIGRATE_TARGET_MISSING', `migrate target ${dir} does not exist`, 'create the directory first');
  const st = statfsSync(dir);
  const free = st.bavail * st.bsize;
  if (free < bytes) {
    throw badInput(
      'MIGRATE_NO_SPACE',
      `migrate target ${dir} has ${free} bytes free, the disks need ${bytes}`,
      "pick a target directory on a filesystem with at least the disks' virtual size free",
    );
  }
}

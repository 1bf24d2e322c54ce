/**
 * The in-process half of a session: bring it up (publish, lab, taps,
 * domain, heartbeat) and take it down. The supervisor runs these; every
 * resource is written to the session record before it is created, so
 * teardown (here, or `stop` after a supervisor crash) knows what to remove.
 */
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { RestorelabError, badInput } from '../errors.js';
import { exec } from '../host/exec.js';
import { addLabTap, labDown, labUp, masqueradeAddress, readLabState, removeLabTap } from '../lab/lab.js';
import { waitForAgent } from '../hypervisor/qga.js';
import { QemuDomain } from '../hypervisor/qemu.js';
import type { Domain, Hypervisor, NicAttachment } from '../hypervisor/types.js';
import type { RunningPublication } from '../publish/contract.js';
import type { RecoveryPlan } from './plan.js';
import { ACTIVE_STATES, type RecoverySession } from './session.js';
import type { SessionStore } from './store.js';
import type { SessionDeps } from './seam.js';

export const HEARTBEAT_TIMEOUT_MS = 180_000;

export interface LiveSession {
  session: RecoverySession;
  hv: Hypervisor;
  domain: Domain;
  publication?: RunningPublication;
}

/** Brings the session up; on any failure everything made so far is removed and the error rethrown. */
export async function bringUp(
  s: RecoverySession, plan: RecoveryPlan, deps: SessionDeps, store: SessionStore, hv: Hypervisor,
  opts: { heartbeatTimeoutMs?: number } = {},
): Promise<LiveSession> {
  const res = s.resources;
  let publication: RunningPublication | undefined;
  try {
    const via = s.publish ?? { via: 'fuse' as const };
    const mount = via.via === 'fuse' ? join(store.workDir(s.id), 'mnt') : undefined;
    if (mount) mkdirSync(mount, { recursive: true });
    res.publication = { id: '', ...(mount ? { mount } : {}) };
    store.save(s);
    // Owned by the session: a point the server already exports gets a publication of its own.
    publication = await deps.startPublication({
      repo: s.repo, point: s.point, stateDir: store.stateDir, owner: { kind: 'session', id: s.id },
      ...(mount ? { fuseDir: mount } : {}),
      ...(via.via === 'nfs' ? { nfs: { port: via.port, mountPort: via.mountPort, portmapPort: via.portmapPort } } : {}),
    });
    res.publication = { id: publication.id, ...(mount ? { mount } : {}) };
    store.save(s);

    const nics: NicAttachment[] = [];
    let lab = plan.lab ? readLabState(store.stateDir, plan.lab.name) : undefined;
    if (plan.lab && !lab?.ready) {
      res.labCreated = plan.lab.name;
      store.save(s);
      lab = await labUp(plan.lab, { stateDir: store.stateDir, owner: { pid: process.pid, what: `session ${s.id}` } });
      writeFileSync(labMarker(store, plan.lab.name), s.id);
    }
    for (const nic of plan.vm.nics) {
      const model = nic.model === 'e1000' ? 'e1000' : 'virtio';
      if (lab) {
        const { tap, netns } = await addLabTap(store.stateDir, lab.name, nic.network);
        res.taps.push({ lab: lab.name, tap });
        store.save(s);
        nics.push({ kind: 'tap', tap, netns, mac: nic.mac, model });
      } else if (s.network) {
        nics.push({ kind: 'bridge', bridge: s.network, mac: nic.mac, model });
      }
    }
    const disks = plan.vm.disks.map((d) => {
      const path = via.via === 'nfs' ? publication?.urls?.[d.name] : publication?.disks[d.name];
      if (!path) throw new RestorelabError('PUBLICATION_INCOMPLETE', `the publication of ${s.point} has no disk ${d.name}`);
      return { name: d.name, path, format: 'raw' as const };
    });
    s.disks = Object.fromEntries(disks.map((d) => [d.name, d.path]));
    res.domain = s.domain;
    store.save(s);
    const domain = await hv.start({ vm: { ...plan.vm, name: s.domain }, disks, nics, ...(s.accel ? { accel: s.accel } : {}) });
    if (domain instanceof QemuDomain) {
      const pid = domain.pid();
      if (pid !== undefined) s.qemuPid = pid;
    }
    store.save(s);

    const agent = await waitForAgent(domain.agentSocket, opts.heartbeatTimeoutMs ?? HEARTBEAT_TIMEOUT_MS)
      .catch((e: unknown) => {
        throw new RestorelabError('NO_HEARTBEAT', `VM ${s.vm} booted from ${s.point} but its guest agent never answered: ${(e as Error).message}`,
          { hint: `the guest needs qemu-guest-agent running; its console is in ${domain.consoleLog}` });
      });
    agent.close();
    s.heartbeatSeconds = Math.round((Date.now() - Date.parse(s.createdAt)) / 100) / 10;
    s.addresses = {};
    plan.vm.nics.forEach((nic, i) => {
      if (!nic.ip) return;
      const addr = lab ? masqueradeAddress(lab, nic.ip) : s.network ? nic.ip : undefined;
      if (addr) s.addresses[`nic${i}`] = addr;
    });
    s.state = 'running';
    store.save(s);
    return { session: s, hv, domain, ...(publication ? { publication } : {}) };
  } catch (e) {
    await teardown(s, store, hv, publication);
    throw e;
  }
}

/**
 * Removes everything the record says the session made, in reverse order of
 * creation. Each step runs even when an earlier one failed; the first
 * failure is rethrown at the end. Migrated disks are production storage and
 * are never touched.
 */
export async function teardown(s: RecoverySession, store: SessionStore, hv: Hypervisor, publication?: RunningPublication, deps?: SessionDeps): Promise<void> {
  const res = s.resources;
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
  if (mount && !publication) await step(() => abortFuseConnections(mount));
  if (res.domain) {
    await step(async () => {
      const dom = await hv.attach(res.domain as string);
      await dom?.destroy();
      delete res.domain;
      store.save(s);
    });
  }
  for (const t of [...res.taps]) {
    await step(async () => {
      await removeLabTap(store.stateDir, t.lab, t.tap);
      res.taps = res.taps.filter((x) => x !== t);
      store.save(s);
    });
  }
  // A lab a session brought up is taken down by the last live session in
  // it, whichever that is: the marker says recovery owns the lab (one the
  // user brought up with `lab up` has none and stays).
  const labName = res.labCreated ?? s.lab;
  if (labName && (res.labCreated || existsSync(labMarker(store, labName)))) {
    const shared = store.list().some((o) => o.id !== s.id && o.lab === labName && ACTIVE_STATES.includes(o.state));
    await step(async () => {
      if (!shared) {
        await labDown(labName, { stateDir: store.stateDir, quietIfMissing: true });
        rmSync(labMarker(store, labName), { force: true });
      }
      delete res.labCreated;
      store.save(s);
    });
  }
  if (res.publication) {
    await step(async () => {
      if (publication) await publication.close({ discard: true });
      else {
        const id = res.publication?.id;
        if (id && deps) await deps.removePublication(store.stateDir, id, { kind: 'session', id: s.id }).catch((e: unknown) => {
          if (!(e instanceof RestorelabError && e.code === 'PUBLICATION_NOT_FOUND')) throw e;
        });
        if (mount) await unmountStale(mount);
      }
      delete res.publication;
      store.save(s);
    });
  }
  if (failures.length) throw failures[0];
}

function labMarker(store: SessionStore, lab: string): string {
  return join(store.dir, `lab-${lab}.owned`);
}

const FUSE_CONNECTIONS = '/sys/fs/fuse/connections';

/** Aborts the kernel side of every FUSE mount at or below `mount` (see teardown). */
export async function abortFuseConnections(mount: string): Promise<void> {
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const parts = line.split(' ');
    const sep = parts.indexOf('-');
    const mp = parts[4];
    const fstype = sep >= 0 ? parts[sep + 1] : undefined;
    if (!mp || !fstype?.startsWith('fuse') || (mp !== mount && !mp.startsWith(`${mount}/`))) continue;
    const minor = parts[2]?.split(':')[1];
    if (!existsSync(FUSE_CONNECTIONS) || readdirSync(FUSE_CONNECTIONS).length === 0) {
      await exec('mount', ['-t', 'fusectl', 'fusectl', FUSE_CONNECTIONS], { timeoutMs: 10_000 });
    }
    const abort = join(FUSE_CONNECTIONS, String(minor), 'abort');
    if (minor && existsSync(abort)) writeFileSync(abort, '1');
  }
}

/** A publication whose serving process died leaves a dead FUSE mount ("transport endpoint is not connected"). */
export async function unmountStale(mount: string): Promise<void> {
  const mounts = readFileSync('/proc/mounts', 'utf8');
  for (const line of mounts.split('\n')) {
    const mp = line.split(' ')[1];
    if (mp && (mp === mount || mp.startsWith(`${mount}/`))) {
      const r = await exec('fusermount', ['-u', '-z', mp], { timeoutMs: 10_000 });
      if (r.code !== 0) await exec('umount', ['-l', mp], { timeoutMs: 10_000 });
    }
  }
}

export function isMounted(path: string): boolean {
  return readFileSync('/proc/mounts', 'utf8').split('\n').some((l) => {
    const mp = l.split(' ')[1];
    return mp !== undefined && (mp === path || mp.startsWith(`${path}/`));
  });
}

/** Throws when `dir` cannot hold `bytes` more (the disks' virtual size: a full mirror may allocate all of it). */
export function assertFreeSpace(dir: string, bytes: number): void {
  if (!existsSync(dir)) throw badInput('MIGRATE_TARGET_MISSING', `migrate target ${dir} does not exist`, 'create the directory first');
  const st = statfsSync(dir);
  const free = st.bavail * st.bsize;
  if (free < bytes) {
    throw badInput('MIGRATE_NO_SPACE', `migrate target ${dir} has ${free} bytes free, the disks need ${bytes}`,
      'pick a target directory on a filesystem with at least the disks\' virtual size free');
  }
}

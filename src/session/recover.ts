/**
 * The client side of recovery sessions, as the CLI (and later the daemon)
 * calls it: recover starts a supervisor and waits for the heartbeat; stop
 * and migrate ask the supervisor; sessions lists the records, noticing
 * supervisors that died.
 */
import { longRunningEnv } from '../host/malloc.js';
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdirSync, openSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import { RestorelabError, badInput } from '../errors.js';
import { projectPath } from '../paths.js';
import { controlSocket, fromSessionError, requestControl } from './control.js';
import { depsWithKey, realDeps, sharedPublisherEnabled } from './deps.js';
import { startPublisherEarly } from '../publish/shared-client.js';
import { closeHypervisor, type SessionDeps } from './seam.js';
import { checkMigration } from './migrate.js';
import { planRecovery, type RecoverRequest, type RecoveryPlan } from './plan.js';
import { HEARTBEAT_TIMEOUT_MS, teardown } from './runner.js';
import { describeEvidence } from '../bringup/evidence.js';
import { ACTIVE_STATES, type RecoverySession, type SessionScan } from './session.js';
import { SessionStore } from './store.js';
import { flushSessionCatalog, SESSIONS_CATALOG_ENV, sharedSessionsUrl } from './catalog.js';
import { processAlive as pidAlive } from '../host/process.js';
import type { Catalog } from '../catalog/sql.js';
import type { CompiledRules, ScanProgress } from '../scan/scan.js';
import { resolveRepository } from '../repo/open.js';

export interface RecoverOptions extends RecoverRequest {
  heartbeatTimeoutMs?: number;
  /**
   * Scan the point with these YARA rules before anything starts (the
   * recovery gate, docs/secure-restore.md): an infected point is refused,
   * or with `allowInfected` recovered into a lab with no uplink at all.
   */
  scan?: RecoveryScan;
  /** FUSE access group for the session's publication (config fuse.group): QEMU running as another user. */
  fuseGroup?: string;
  /** The lab worker running this recovery for a server (its name goes into the record and the shared catalog). */
  worker?: string;
  /** The shared catalog to record the session in (default: from the environment, src/session/catalog.ts). */
  sharedCatalog?: string;
}

/** The recovery gate's rules and where its verdicts go. */
export interface RecoveryScan {
  /**
   * A rule file (the CLI: the admin's own, compiled here), or rules the
   * caller compiled and disposes (the API: source text that passed the API's
   * rule policy, compiled before its 202).
   */
  rules: string | CompiledRules;
  allowInfected?: boolean;
  /** The catalog file (opened for the scan), or an open catalog (the server's, so its verdict cache and point status are shared). */
  catalog: string | Catalog;
  onProgress?: ScanProgress;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Domain names must be unique per driver: the same VM can be recovered twice at once. */
function domainName(vm: string, id: string): string {
  return `${vm.slice(0, 40)}-${id.slice(0, 6)}`;
}

/**
 * Validates, then starts `restorelab session-supervise <id>` detached and
 * waits until it reports the session running (heartbeat seen) or failed.
 * The returned session keeps running under that supervisor.
 */
export async function recover(opts: RecoverOptions, deps: SessionDeps = depsWithKey(opts.keyFile)): Promise<RecoverySession> {
  const createdAt = new Date().toISOString();
  const plan = await planRecovery(opts, deps);
  const store = new SessionStore(opts.stateDir, undefined, opts.sharedCatalog ?? sharedSessionsUrl());
  try {
    return await startSession(opts, plan, store, deps, createdAt);
  } finally {
    await flushSessionCatalog();
  }
}

async function startSession(
  opts: RecoverOptions,
  plan: RecoveryPlan,
  store: SessionStore,
  deps: SessionDeps,
  createdAt: string,
): Promise<RecoverySession> {
  const id = randomBytes(4).toString('hex');
  const gate = opts.scan ? await scanGate(opts, plan, opts.scan, deps, id) : undefined;
  const accel = opts.accel === 'kvm' || opts.accel === 'tcg' ? opts.accel : undefined;
  const s: RecoverySession = {
    id,
    vm: plan.vm.name,
    point: plan.point.id,
    repo: resolveRepository(opts.repo),
    ...(opts.keyFile ? { keyFile: resolve(opts.keyFile) } : {}),
    driver: opts.driver,
    ...(accel ? { accel } : {}),
    ...(opts.lab && plan.lab ? { labFile: resolve(opts.lab), lab: gate?.quarantineLab ?? plan.lab.name } : {}),
    ...(opts.lab && opts.masqueradePool !== undefined ? { masqueradePool: opts.masqueradePool } : {}),
    ...(gate ? { scan: gate.scan } : {}),
    ...(gate?.quarantine ? { quarantine: true } : {}),
    ...(opts.network ? { network: opts.network } : {}),
    ...(opts.publish ? { publish: opts.publish } : {}),
    ...(opts.fuseGroup !== undefined ? { fuseGroup: opts.fuseGroup } : {}),
    ...(opts.worker !== undefined ? { worker: opts.worker } : {}),
    memoryMiB: plan.vm.memoryMiB,
    domain: domainName(plan.vm.name, id),
    state: 'starting',
    createdAt,
    updatedAt: createdAt,
    addresses: {},
    disks: {},
    diskBytes: Object.fromEntries(plan.point.disks.map((d) => [d.name, d.size])),
    resources: { taps: [] },
  };
  store.save(s);
  const work = store.workDir(id);
  // The shared publisher starts alongside the supervisor, not after it (a cold start costs both a node start-up).
  if (s.publish?.via === 'nbd' && sharedPublisherEnabled()) await startPublisherEarly(store.stateDir);
  const child = startSupervisor(store, id, opts.heartbeatTimeoutMs);
  const deadline = Date.now() + (opts.heartbeatTimeoutMs ?? HEARTBEAT_TIMEOUT_MS) + 120_000;
  for (;;) {
    await sleep(200);
    const cur = store.get(id);
    if (cur.state === 'running') return cur;
    if (cur.state === 'failed' || cur.state === 'stopped') {
      throw cur.error ? fromSessionError(cur.error) : new RestorelabError('RECOVER_FAILED', `session ${id} ended during start`);
    }
    const supervisorGone = child.exitCode !== null || child.signalCode !== null;
    if (supervisorGone || Date.now() > deadline) {
      if (!supervisorGone) child.kill('SIGKILL');
      const why = supervisorGone
        ? `the session supervisor exited during start (see ${join(work, 'supervisor.log')})`
        : 'the session did not come up in time';
      const left = await cleanupOrphan(cur, store, deps, why);
      const kept = describeEvidence(left.evidence ?? {});
      throw new RestorelabError('RECOVER_FAILED', `recovery of ${s.vm} failed: ${why}`, kept ? { hint: kept } : {});
    }
  }
}

/**
 * The recovery gate: scans the planned point before anything is made. Clean
 * passes; infected is refused (POINT_INFECTED, exit 3) unless allowed, and
 * an allowed infected point never touches a production bridge and gets its
 * own lab with no uplink (a copy of the given lab under the session's name).
 */
async function scanGate(
  opts: RecoverOptions,
  plan: RecoveryPlan,
  gate: NonNullable<RecoverOptions['scan']>,
  deps: SessionDeps,
  id: string,
): Promise<{ scan: SessionScan; quarantine: boolean; quarantineLab?: string }> {
  const { scanPoint, withRules } = await import('../scan/scan.js');
  const { connectCatalog } = await import('../catalog/catalog.js');
  const db = typeof gate.catalog === 'string' ? await connectCatalog(gate.catalog) : gate.catalog;
  let result;
  try {
    const repo = await deps.openRepository(opts.repo);
    const scan = (rules: CompiledRules): ReturnType<typeof scanPoint> =>
      scanPoint({
        repo,
        point: plan.point.id,
        stateDir: opts.stateDir,
        db,
        rules,
        ...(opts.keyFile ? { keyFile: opts.keyFile } : {}),
        ...(gate.onProgress ? { onProgress: gate.onProgress } : {}),
      });
    result = typeof gate.rules === 'string' ? await withRules(opts.stateDir, gate.rules, scan) : await scan(gate.rules);
  } finally {
    if (db !== gate.catalog) await db.close();
  }
  const scan: SessionScan = { verdict: result.verdict, ruleset: result.ruleset, matches: result.matches, files: result.files };
  if (result.verdict === 'clean') return { scan, quarantine: false };
  const named =
    result.matches
      .slice(0, 3)
      .map((m) => `${m.rule} in ${m.disk} p${m.partition} ${m.path}`)
      .join('; ') + (result.matches.length > 3 ? `; and ${result.matches.length - 3} more` : '');
  if (!gate.allowInfected) {
    throw new RestorelabError(
      'POINT_INFECTED',
      `restore point ${plan.point.id} of ${plan.vm.name} is infected (${named}); it was not recovered`,
      {
        hint:
          typeof gate.rules === 'string'
            ? `find the newest clean point with \`restorelab scan --last-clean ${plan.vm.name} --yara ${gate.rules}\`, or recover it isolated with --allow-infected (a lab with no uplink)`
            : `scan older points with the same rules (POST /api/v1/points/<id>/scan, or \`restorelab scan --last-clean ${plan.vm.name}\` on the server), or recover it isolated with allowInfected (a lab with no uplink)`,
      },
    );
  }
  if (opts.network) {
    throw badInput(
      'INFECTED_ON_NETWORK',
      `restore point ${plan.point.id} is infected (${named}); --allow-infected never puts it on a production bridge (--network ${opts.network})`,
      'recover it into a lab (--lab F): it then runs in a copy of that lab with no uplink, or without --lab and --network: no NIC at all',
    );
  }
  return { scan, quarantine: true, ...(plan.lab ? { quarantineLab: quarantineLabName(plan.lab.name, id) } : {}) };
}

/** The name of a session's quarantine lab: its own, so it never shares (or is) a lab with an uplink. */
function quarantineLabName(lab: string, id: string): string {
  return `${lab.slice(0, 20)}-q${id}`;
}

/** `restorelab session-supervise <id>`, detached in its own session so it outlives the CLI. */
function startSupervisor(store: SessionStore, id: string, heartbeatTimeoutMs?: number): ChildProcess {
  const work = store.workDir(id);
  mkdirSync(work, { recursive: true });
  const log = openSync(join(work, 'supervisor.log'), 'a');
  const args = [projectPath('bin', 'restorelab.js'), 'session-supervise', id, '--state-dir', store.stateDir];
  if (heartbeatTimeoutMs) args.push('--heartbeat-timeout', String(heartbeatTimeoutMs));
  // The supervisor records the session where this process does (the shared catalog's URL in its environment, never in argv).
  const env = longRunningEnv(store.shared !== undefined ? { ...process.env, [SESSIONS_CATALOG_ENV]: store.shared } : process.env);
  const child = spawn(process.execPath, args, { detached: true, stdio: ['ignore', log, log], env });
  closeSync(log);
  child.unref();
  return child;
}

/** Removes what a session whose supervisor is gone left behind, and marks it failed. */
async function cleanupOrphan(
  s: RecoverySession,
  store: SessionStore,
  deps: SessionDeps,
  why: string,
  final: 'failed' | 'stopped' = 'failed',
): Promise<RecoverySession> {
  const hv = deps.hypervisor(s.driver, { stateDir: store.stateDir });
  try {
    await teardown(s, store, hv, undefined, deps);
  } finally {
    await closeHypervisor(hv);
  }
  s.state = final;
  if (final === 'failed') s.error ??= { code: 'SUPERVISOR_GONE', message: why };
  store.save(s);
  return s;
}

/**
 * The records, with sessions whose supervisor died dealt with. A running
 * session is marked failed: nobody serves its publication any more, so its
 * disks are gone. A migrated session no longer needs the publication, so a
 * new supervisor re-attaches to its VM (the qemu driver through pidfile and
 * QMP, libvirt by name) and it stays migrated.
 */
export async function listSessions(stateDir: string): Promise<RecoverySession[]> {
  try {
    return await listLocal(stateDir);
  } finally {
    await flushSessionCatalog();
  }
}

async function listLocal(stateDir: string): Promise<RecoverySession[]> {
  const store = new SessionStore(stateDir);
  const out: RecoverySession[] = [];
  for (const s of store.list()) {
    if (ACTIVE_STATES.includes(s.state) && s.state !== 'starting' && !pidAlive(s.supervisorPid)) {
      if (s.state === 'migrated') {
        out.push(await reattach(store, s));
        continue;
      }
      s.state = 'failed';
      s.error ??= { code: 'SUPERVISOR_GONE', message: `the session supervisor (pid ${s.supervisorPid}) is gone` };
      store.save(s);
    }
    out.push(s);
  }
  return out;
}

async function reattach(store: SessionStore, s: RecoverySession): Promise<RecoverySession> {
  const old = s.supervisorPid;
  const child = startSupervisor(store, s.id);
  const end = Date.now() + 30_000;
  for (;;) {
    await sleep(100);
    const cur = store.get(s.id);
    if (cur.state !== 'migrated' || (cur.supervisorPid !== old && cur.controlSocket)) return cur;
    if (child.exitCode !== null || Date.now() > end) return store.get(s.id);
  }
}

/**
 * Powers the VM off, removes it, its taps and the lab it made, and closes
 * the publication discarding every write. The repository is never written.
 * Idempotent: stopping a stopped session succeeds and changes nothing.
 */
export async function stopSession(stateDir: string, id: string, deps: SessionDeps = realDeps): Promise<RecoverySession> {
  try {
    return await stopLocal(stateDir, id, deps);
  } finally {
    await flushSessionCatalog();
  }
}

async function stopLocal(stateDir: string, id: string, deps: SessionDeps): Promise<RecoverySession> {
  const store = new SessionStore(stateDir);
  const s = store.get(id);
  if (pidAlive(s.supervisorPid) && ACTIVE_STATES.includes(s.state) && !s.controlSocket) {
    // Still starting: the supervisor serves no requests yet. It dies here and
    // the record says what to remove.
    process.kill(s.supervisorPid as number, 'SIGKILL');
    const end = Date.now() + 10_000;
    while (pidAlive(s.supervisorPid) && Date.now() < end) await sleep(100);
  } else if (pidAlive(s.supervisorPid) && ACTIVE_STATES.includes(s.state)) {
    try {
      await requestControl(controlSocket(store.workDir(id)), { op: 'stop' }, 180_000);
    } catch (e) {
      // The supervisor may close the socket as it exits; the record is what counts.
      if (!(e instanceof RestorelabError && e.code === 'SUPERVISOR_GONE')) throw e;
    }
    const end = Date.now() + 30_000;
    while (pidAlive(s.supervisorPid) && Date.now() < end) await sleep(100);
    if (pidAlive(s.supervisorPid)) process.kill(s.supervisorPid as number, 'SIGKILL');
  }
  const cur = store.get(id);
  const leftovers = cur.resources.domain || cur.resources.taps.length || cur.resources.labCreated || cur.resources.publication;
  if (ACTIVE_STATES.includes(cur.state) || leftovers) {
    return cleanupOrphan(cur, store, deps, 'stopped after its supervisor was gone', cur.state === 'failed' ? 'failed' : 'stopped');
  }
  return cur;
}

/** Mirrors every disk of a running session to `dir`, pivots, and unpublishes. */
export async function migrateSession(stateDir: string, id: string, dir: string, format: 'raw' | 'qcow2'): Promise<RecoverySession> {
  const store = new SessionStore(stateDir);
  const s = (await listSessions(stateDir)).find((x) => x.id === id) ?? store.get(id);
  // Checked here too, so a bad target fails fast with nothing started.
  checkMigration(s, dir, format);
  return requestControl(controlSocket(store.workDir(id)), { op: 'migrate', to: resolve(dir), format }, 24 * 3600_000);
}

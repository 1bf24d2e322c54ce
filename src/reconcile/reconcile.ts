/**
 * Reconcile: the state directory's records checked against the host.
 *
 * The records (publications, sessions, labs) outlive their processes, so after
 * a crash, a `kill -9` or a deleted repository they can name things that are
 * gone, or leave things behind that nothing names any more. Reconcile looks at
 * each one: publisher alive, point and repository present, supervisor and
 * QEMU alive, namespace present, FUSE mount answering. Then:
 *
 * - resumable: a publication whose publisher is gone and whose point still
 *   exists (the server serves it again; `publish --resume` does too);
 * - stale: dead, with the reason. A stale item is `safe` when removing it loses
 *   nothing (a dead publisher's mount, the leftovers of a session whose
 *   supervisor died, a lab whose owner died and in which nothing runs, an
 *   empty overlay); cleanup removes those. Overlays that hold writes are
 *   never removed unless one is named explicitly with `discardWrites`.
 *
 * `restorelab server` runs it at start (never fatal), `restorelab cleanup`
 * on demand, `doctor` and the API's GET /state/stale as a dry run.
 */
import fs from 'node:fs';
import path from 'node:path';
import { RestorelabError, badInput, notFound } from '../errors.js';
import { processAlive } from '../host/process.js';
import { writeFileAtomicSync } from '../host/atomic-file.js';
import { exec } from '../host/exec.js';
import { listNetns, netnsPids } from '../host/netns.js';
import { detachMount, isStaleFuseMount } from '../fuse/mounts.js';
import { mountEntry, mountsUnder } from '../host/mounts.js';
import type { PublicationRecord } from '../publish/publish.js';
import { openRepository } from '../repo/repository.js';
import { isObjectStorage } from '../repo/open.js';
import { SessionStore } from '../session/store.js';
import { ACTIVE_STATES, type RecoverySession } from '../session/session.js';
import type { LabState } from '../lab/lab.js';
import type { Found, StaleItem } from './stale.js';
import { checkVerificationVms } from './verification-vms.js';
// publish, session/recover and lab load FUSE, the hypervisors and ajv (about
// a second): they are imported when something is to be done with them, so
// that `doctor` and a dry run stay quick.

export type { StaleKind, StaleItem } from './stale.js';

export interface ReconcileReport {
  stateDir: string;
  checkedAt: string;
  dryRun: boolean;
  /** Publications no live process serves whose restore point is still there. */
  resumable: Array<{ id: string; point: string; publisherDied: boolean }>;
  stale: StaleItem[];
}

export interface ReconcileOptions {
  stateDir: string;
  /** Check and report only: nothing is written, removed or restarted. */
  dryRun?: boolean;
  /** Key file of encrypted repositories (the configured one). */
  keyFile?: string;
  /** Act on these item ids only, safe or not; default: every safe item. */
  only?: string[];
  /** With `only`: an overlay (or publication) that holds writes is discarded too. */
  discardWrites?: boolean;
  log?: (line: string) => void;
}

const MOUNT_CHECK_MS = 5000;
/** Unrecorded `rl-*` namespaces younger than this are left out: another state directory's lab may be coming up. */
const UNRECORDED_NETNS_MIN_AGE_S = 600;
const ITEM_ID = /^(publication|session|lab|netns|mount|overlay|vm):.{1,4096}$/;

/** Checks every record of `o.stateDir` against the host, and (unless a dry run) cleans up. */
export async function reconcile(o: ReconcileOptions): Promise<ReconcileReport> {
  for (const id of o.only ?? []) {
    if (!ITEM_ID.test(id))
      throw badInput(
        'BAD_STALE_ITEM',
        `"${id}" is not a stale item id`,
        'ids look like publication:<id>, session:<id>, vm:<vm-id>, lab:<name>, netns:<name>, mount:<dir>, overlay:<dir>; restorelab cleanup --dry-run lists them',
      );
  }
  const checkedAt = new Date().toISOString();
  const { items, resumable } = await check(o);
  const report: ReconcileReport = {
    stateDir: o.stateDir,
    checkedAt,
    dryRun: Boolean(o.dryRun),
    resumable,
    stale: items.map((i) => i.item),
  };
  const missing = (o.only ?? []).filter((id) => !items.some((i) => i.item.id === id));
  if (missing.length > 0) {
    throw notFound(
      'STALE_ITEM_NOT_FOUND',
      `nothing stale is named ${missing.join(', ')} (it may be cleaned already, or alive)`,
      'restorelab cleanup --dry-run lists what is stale',
    );
  }
  if (o.dryRun) return report;
  for (const { item, clean } of items) {
    const named = o.only?.includes(item.id) ?? false;
    if (o.only && !named) continue;
    if (!item.safe && !named) {
      item.outcome = { action: 'kept', detail: keptWhy(item) };
      continue;
    }
    try {
      const detail = await clean(named && Boolean(o.discardWrites));
      item.outcome = detail === undefined ? { action: 'removed' } : { action: 'kept', detail };
      o.log?.(`${item.id}: ${item.outcome.action}${detail ? ` (${detail})` : ''}; it was stale: ${item.reason}`);
    } catch (err) {
      item.outcome = { action: 'failed', detail: err instanceof Error ? err.message : String(err) };
      o.log?.(`${item.id}: cleanup failed: ${item.outcome.detail}`);
    }
  }
  writeLastReport(o.stateDir, report);
  return report;
}

function keptWhy(item: StaleItem): string {
  if (item.bytes) return `holds ${item.bytes} bytes of writes; name it (cleanup --item ${item.id} --discard-writes) to discard them`;
  return `not removed automatically; name it (cleanup --item ${item.id}) to remove it`;
}

/** The last reconcile's verdict, beside the records it judged (`<stateDir>/reconcile.json`). */
function writeLastReport(stateDir: string, report: ReconcileReport): void {
  fs.mkdirSync(stateDir, { recursive: true });
  writeFileAtomicSync(stateDir, 'reconcile.json', JSON.stringify(report, null, 2) + '\n');
}

async function check(o: ReconcileOptions): Promise<{ items: Found[]; resumable: ReconcileReport['resumable'] }> {
  // Outside a dry run, listSessions marks sessions with a dead supervisor
  // failed and restarts the supervisor of a migrated one (that is resuming it).
  const sessions = o.dryRun ? new SessionStore(o.stateDir).list() : await (await import('../session/recover.js')).listSessions(o.stateDir);
  const records = publicationRecords(o.stateDir);
  // Verification VMs first: cleaning one removes its publication and mount, and empties its lab.
  const vms = await checkVerificationVms(o.stateDir, records);
  const others = records.filter((r) => !vms.publications.has(r.id));
  const pubs = await checkPublications(o, others);
  const items: Found[] = [
    ...checkSessions(o.stateDir, sessions),
    ...vms.items,
    ...pubs.items,
    ...(await checkMounts(
      o.stateDir,
      others,
      sessions,
      new Set(records.filter((r) => vms.publications.has(r.id)).flatMap((r) => r.fuseDir ?? [])),
    )),
    ...(await checkLabs(o.stateDir, sessions, vms.pids, o.dryRun ? 0 : LAB_STRAGGLER_WAIT_MS)),
    ...checkOrphanOverlays(o.stateDir, records),
  ];
  return { items, resumable: pubs.resumable };
}

// --- publications -----------------------------------------------------------

/**
 * The records as src/publish/publish.ts writes them
 * (`<stateDir>/publications/<id>/publication.json`), read here without
 * loading the publisher; an unreadable one is skipped as it is there.
 */
function publicationRecords(stateDir: string): PublicationRecord[] {
  const dir = path.join(stateDir, 'publications');
  if (!fs.existsSync(dir)) return [];
  const out: PublicationRecord[] = [];
  for (const id of fs.readdirSync(dir).sort()) {
    try {
      out.push(JSON.parse(fs.readFileSync(path.join(dir, id, 'publication.json'), 'utf8')) as PublicationRecord);
    } catch {
      // not a publication directory (.next-number), or a record being written
    }
  }
  return out;
}

/** Why the point of `rec` cannot be opened, or undefined when it can (or the check itself cannot tell). */
async function pointGone(rec: PublicationRecord, keyFile?: string): Promise<string | undefined> {
  // An object-storage repository has no local path: opening it below tells (a gateway that is down tells nothing).
  if (!isObjectStorage(rec.repo) && !fs.existsSync(rec.repo)) return `its repository ${rec.repo} is gone`;
  try {
    const repo = await openRepository(rec.repo, { keyFile });
    await repo.getPoint(rec.point);
    return undefined;
  } catch (err) {
    if (err instanceof RestorelabError && ['POINT_NOT_FOUND', 'REPO_NOT_FOUND', 'NOT_A_REPOSITORY'].includes(err.code)) {
      return err.code === 'POINT_NOT_FOUND' ? `its restore point ${rec.point} is no longer in ${rec.repo}` : `${rec.repo}: ${err.message}`;
    }
    // A missing key or a damaged file is for `repo verify` to judge, not a reason to drop the record.
    return undefined;
  }
}

async function checkPublications(
  o: ReconcileOptions,
  records: PublicationRecord[],
): Promise<{ items: Found[]; resumable: ReconcileReport['resumable'] }> {
  const items: Found[] = [];
  const resumable: ReconcileReport['resumable'] = [];
  for (const rec of records) {
    if (rec.pid !== undefined && processAlive(rec.pid)) continue;
    const why = await pointGone(rec, o.keyFile);
    if (!why) {
      resumable.push({ id: rec.id, point: rec.point, publisherDied: rec.pid !== undefined && rec.pid !== process.pid });
      continue;
    }
    const overlay = overlayUse(path.join(rec.overlayDir, rec.id));
    const item: StaleItem = {
      id: `publication:${rec.id}`,
      kind: 'publication',
      name: rec.id,
      reason: why,
      safe: overlay.bytes === 0,
      bytes: overlay.bytes,
      ageSeconds: overlay.ageSeconds ?? ageOf(rec.created),
    };
    items.push({
      item,
      clean: async (discardWrites) => {
        const keep = overlayUse(path.join(rec.overlayDir, rec.id)).bytes > 0 && !discardWrites;
        if (keep) return keptWhy({ ...item, bytes: overlayUse(path.join(rec.overlayDir, rec.id)).bytes });
        const { removePublication, LOCAL_USER } = await import('../publish/publish.js');
        // Its publisher is dead and its point gone: nobody is left to serve it, so cleanup acts for its owner.
        await removePublication(o.stateDir, rec.id, { discard: true, as: rec.owner ?? LOCAL_USER });
        return undefined;
      },
    });
  }
  return { items, resumable };
}

// --- sessions ---------------------------------------------------------------

function qemuAlive(pid: number | undefined): boolean {
  if (!pid) return false;
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('qemu-system');
  } catch {
    return false;
  }
}

function leftovers(s: RecoverySession): string[] {
  const r = s.resources;
  return [
    ...(r.domain ? [`domain ${r.domain}`] : []),
    ...(r.taps.length ? [`${r.taps.length} tap(s) in lab ${r.taps[0]?.lab}`] : []),
    ...(r.labCreated ? [`lab ${r.labCreated}`] : []),
    ...(r.publication ? [`publication ${r.publication.id}${r.publication.mount ? ` (mount ${r.publication.mount})` : ''}`] : []),
  ];
}

function checkSessions(stateDir: string, sessions: RecoverySession[]): Found[] {
  const items: Found[] = [];
  for (const s of sessions) {
    if (processAlive(s.supervisorPid)) continue;
    const active = ACTIVE_STATES.includes(s.state);
    // A migrated session runs on its own disks: restarting its supervisor resumes it (listSessions does).
    if (s.state === 'migrated') continue;
    const left = leftovers(s);
    if (!active && left.length === 0) continue;
    const qemu =
      s.driver === 'qemu' && s.qemuPid
        ? `; QEMU (pid ${s.qemuPid}) ${qemuAlive(s.qemuPid) ? 'still runs on disks nobody serves' : 'is gone'}`
        : '';
    const was = active ? `was ${s.state}, ` : '';
    items.push({
      item: {
        id: `session:${s.id}`,
        kind: 'session',
        name: s.id,
        safe: true,
        ageSeconds: ageOf(s.createdAt),
        reason: `${was}its supervisor${s.supervisorPid ? ` (pid ${s.supervisorPid})` : ''} is gone${qemu}${left.length ? `; left behind: ${left.join(', ')}` : ''}`,
      },
      // A session's writes are discarded by design when it stops, so nothing of value is lost.
      clean: async () => {
        await (await import('../session/recover.js')).stopSession(stateDir, s.id);
        return undefined;
      },
    });
  }
  return items;
}

// --- labs and namespaces ----------------------------------------------------

function labOwner(stateDir: string, lab: LabState, sessions: RecoverySession[]): { what: string; alive: boolean } | undefined {
  const live = sessions.filter((s) => s.lab === lab.name && ACTIVE_STATES.includes(s.state) && processAlive(s.supervisorPid));
  if (live.length > 0) return { what: `session ${live[0]?.id}`, alive: true };
  const marker = fs.existsSync(path.join(stateDir, 'sessions', `lab-${lab.name}.owned`));
  if (lab.owner) return { what: `${lab.owner.what} (pid ${lab.owner.pid})`, alive: processAlive(lab.owner.pid) };
  if (marker || sessions.some((s) => s.resources.labCreated === lab.name))
    return { what: 'the recovery sessions that brought it up', alive: false };
  return undefined;
}

/**
 * How long a lab whose owner died may take to empty. A worker or run killed
 * with -9 leaves its probes running in the lab for a few seconds (a `ping -W`,
 * a probe script); the owner coming back at once would otherwise find them
 * there and keep the lab, whose route then blocks the next lab on its subnet.
 */
const LAB_STRAGGLER_WAIT_MS = 15_000;

/** Processes in `netns` other than `goingPids`, after waiting up to `waitMs` for them to end. */
async function labPids(netns: string, goingPids: ReadonlySet<number>, waitMs: number): Promise<number[]> {
  const until = Date.now() + waitMs;
  for (;;) {
    const pids = (await netnsPids(netns)).filter((p) => !goingPids.has(p));
    if (pids.length === 0 || Date.now() >= until) return pids;
    await new Promise((r) => setTimeout(r, 500));
  }
}

/**
 * `goingPids`: processes of stale verification VMs, removed before the labs are (checkVerificationVms).
 * `stragglerWaitMs`: how long to wait for the other processes of an ownerless lab to end (none in a dry run).
 */
async function checkLabs(
  stateDir: string,
  sessions: RecoverySession[],
  goingPids: ReadonlySet<number>,
  stragglerWaitMs: number,
): Promise<Found[]> {
  const items: Found[] = [];
  const labsDir = path.join(stateDir, 'labs');
  const hasLabs = fs.existsSync(labsDir) && fs.readdirSync(labsDir).some((f) => f.endsWith('.json'));
  const labs = hasLabs ? (await import('../lab/lab.js')).listLabs(stateDir) : [];
  const present = new Set(await listNetns());
  for (const lab of labs) {
    const owner = labOwner(stateDir, lab, sessions);
    const down = async (): Promise<undefined> => {
      await (await import('../lab/lab.js')).labDown(lab.name, { stateDir, quietIfMissing: true });
      return undefined;
    };
    const base = { id: `lab:${lab.name}`, kind: 'lab' as const, name: lab.name, ageSeconds: ageOf(lab.createdAt) };
    if (!present.has(lab.netns)) {
      items.push({
        item: { ...base, safe: true, reason: `its namespace ${lab.netns} is gone (host reboot or removed by hand)` },
        clean: down,
      });
      continue;
    }
    if (owner?.alive) continue;
    if (!owner && lab.ready) continue; // brought up with `lab up`: the user's to take down
    const pids = await labPids(lab.netns, goingPids, stragglerWaitMs);
    const why = !lab.ready
      ? `it was left half built${owner ? ` by ${owner.what}` : ''}`
      : `${owner?.what ?? 'its owner'} is gone and no live session uses it`;
    items.push({
      item: {
        ...base,
        safe: pids.length === 0,
        reason:
          pids.length === 0
            ? `${why}; its namespace ${lab.netns} is empty`
            : `${why}; processes ${pids.join(', ')} still run in ${lab.netns}`,
      },
      clean: down,
    });
  }
  // Namespaces named like ours that no lab record here names: another state
  // directory may own them, so they are listed, and removed only when named.
  // A young one is most likely being set up right now, so only old ones are listed.
  const known = new Set(labs.map((l) => l.netns));
  for (const ns of present) {
    if (!ns.startsWith('rl-') || ns.startsWith('rl-doctor-') || known.has(ns)) continue;
    const age = netnsAgeSeconds(ns);
    if (age === undefined || age < UNRECORDED_NETNS_MIN_AGE_S) continue;
    items.push({
      item: {
        id: `netns:${ns}`,
        kind: 'netns',
        name: ns,
        safe: false,
        ageSeconds: age,
        reason: `no lab record in ${stateDir} names namespace ${ns} (left by a crash, or another state directory's lab)`,
      },
      clean: async () => {
        const pids = await netnsPids(ns);
        if (pids.length > 0)
          throw new RestorelabError('NETNS_BUSY', `processes ${pids.join(', ')} still run in ${ns}`, { hint: 'stop them first' });
        const r = await exec('ip', ['netns', 'del', ns], { timeoutMs: 10_000 });
        if (r.code !== 0) throw new RestorelabError('NETNS_DELETE_FAILED', `ip netns del ${ns}: ${r.stderr.trim()}`);
        return undefined;
      },
    });
  }
  return items;
}

/** Seconds since `ip netns add` made `ns` (its bind-mount file under /run/netns). */
function netnsAgeSeconds(ns: string): number | undefined {
  try {
    return Math.max(0, Math.round((Date.now() - fs.statSync(path.join('/run/netns', ns)).ctimeMs) / 1000));
  } catch {
    return undefined;
  }
}

// --- FUSE mounts ------------------------------------------------------------

/** Whether a FUSE mount's server is gone; 'unknown' when statfs does not answer in time. */
async function mountDead(dir: string): Promise<boolean | 'unknown'> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<'unknown'>((resolve) => {
    timer = setTimeout(() => resolve('unknown'), MOUNT_CHECK_MS);
  });
  try {
    return await Promise.race([isStaleFuseMount(dir), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function fuseMountsUnder(root: string): string[] {
  return mountsUnder(root)
    .filter((m) => m.fstype.startsWith('fuse'))
    .map((m) => m.mountPoint);
}

/** `skip`: mounts of publications a verification VM item removes. */
async function checkMounts(
  stateDir: string,
  records: PublicationRecord[],
  sessions: RecoverySession[],
  skip: ReadonlySet<string>,
): Promise<Found[]> {
  const root = path.resolve(stateDir);
  const sessionsDir = path.join(root, 'sessions');
  const candidates = new Set<string>();
  for (const rec of records) {
    if (rec.fuseDir && !(rec.pid !== undefined && processAlive(rec.pid)) && mountEntry(rec.fuseDir)) candidates.add(rec.fuseDir);
  }
  for (const mp of fuseMountsUnder(root)) candidates.add(mp);
  const liveDirs = new Set(records.filter((r) => r.fuseDir && r.pid !== undefined && processAlive(r.pid)).map((r) => r.fuseDir));
  // A session's mount is its supervisor's, and a stale session's cleanup
  // aborts it first (QEMU may hold its connection): left to the session.
  const sessionOwned = (mp: string): boolean =>
    sessions.some((s) => mp === path.join(sessionsDir, s.id) || mp.startsWith(`${path.join(sessionsDir, s.id)}/`));
  const items: Found[] = [];
  for (const dir of candidates) {
    if (liveDirs.has(dir) || sessionOwned(dir) || skip.has(dir)) continue;
    const dead = await mountDead(dir);
    if (dead === false) continue;
    items.push({
      item: {
        id: `mount:${dir}`,
        kind: 'mount',
        name: dir,
        safe: dead === true,
        reason:
          dead === true
            ? 'a FUSE mount whose serving process is gone (transport endpoint is not connected)'
            : `a FUSE mount that did not answer statfs within ${MOUNT_CHECK_MS / 1000} s`,
      },
      clean: async () => {
        if (!(await detachMount(dir)))
          throw new RestorelabError('UNMOUNT_FAILED', `${dir} is still mounted after fusermount -uz and umount -l`);
        return undefined;
      },
    });
  }
  return items;
}

// --- overlays ---------------------------------------------------------------

/** Allocated bytes of an overlay's data files, and seconds since its last write. */
export function overlayUse(dir: string): { bytes: number; ageSeconds?: number } {
  if (!fs.existsSync(dir)) return { bytes: 0 };
  let bytes = 0;
  let newest = 0;
  for (const f of fs.readdirSync(dir)) {
    const st = fs.statSync(path.join(dir, f));
    if (f.endsWith('.data')) bytes += st.blocks * 512;
    newest = Math.max(newest, st.mtimeMs);
  }
  return { bytes, ...(newest > 0 ? { ageSeconds: Math.max(0, Math.round((Date.now() - newest) / 1000)) } : {}) };
}

/** Overlay directories no publication record names (the record was removed by hand, or a crash). */
function checkOrphanOverlays(stateDir: string, records: PublicationRecord[]): Found[] {
  const roots = new Set([path.resolve(stateDir, 'overlays'), ...records.map((r) => r.overlayDir)]);
  const named = new Set(records.map((r) => path.join(r.overlayDir, r.id)));
  const items: Found[] = [];
  for (const root of roots) {
    if (!fs.existsSync(root)) continue;
    for (const e of fs.readdirSync(root, { withFileTypes: true })) {
      const dir = path.join(root, e.name);
      if (!e.isDirectory() || named.has(dir)) continue;
      const use = overlayUse(dir);
      const item: StaleItem = {
        id: `overlay:${dir}`,
        kind: 'overlay',
        name: dir,
        safe: use.bytes === 0,
        bytes: use.bytes,
        ...(use.ageSeconds !== undefined ? { ageSeconds: use.ageSeconds } : {}),
        reason: `no publication record names this overlay${use.bytes > 0 ? ' (it holds writes)' : ' (empty)'}`,
      };
      items.push({
        item,
        clean: async (discardWrites) => {
          const now = overlayUse(dir).bytes;
          if (now > 0 && !discardWrites) return keptWhy({ ...item, bytes: now });
          fs.rmSync(dir, { recursive: true, force: true });
          return undefined;
        },
      });
    }
  }
  return items;
}

function ageOf(iso: string): number | undefined {
  const t = Date.parse(iso);
  return Number.isNaN(t) ? undefined : Math.max(0, Math.round((Date.now() - t) / 1000));
}

/** One line per stale item, for the CLI and logs. */
export function renderStale(r: ReconcileReport): string {
  const lines: string[] = [];
  for (const p of r.resumable) lines.push(`resumable  publication:${p.id}${p.publisherDied ? ' (its publisher died)' : ''}`);
  for (const s of r.stale) {
    const size = s.bytes ? `, ${s.bytes} bytes of writes` : '';
    const age = s.ageSeconds !== undefined ? `, ${s.ageSeconds} s old` : '';
    const did = s.outcome
      ? ` -> ${s.outcome.action}${s.outcome.detail ? `: ${s.outcome.detail}` : ''}`
      : s.safe
        ? ' (safe to remove)'
        : ' (kept unless named)';
    lines.push(`stale      ${s.id}: ${s.reason}${size}${age}${did}`);
  }
  return lines.length > 0 ? lines.join('\n') : 'nothing stale';
}

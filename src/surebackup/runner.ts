/**
 * The runner: application group first, in order (honouring waitForPrevious),
 * then the VMs under test with the job's concurrency cap and the global
 * Limiter. A failed group VM fails later VMs as a *dependency failure*. The
 * lab is always torn down (cancel, timeout, error) unless keepLabOnFailure
 * and the run failed.
 */
import type { DnsQuery, RecoveredVm, Role, RunResult, TestResult, TestRunner, TestSpec, Verdict, VmResult } from '../verify/contract.js';
import { resolveRole } from './roles.js';
import { Limiter, mapLimited } from './limiter.js';
import { RestorelabError, notFound } from '../errors.js';
import { resolveScript } from '../verify/script.js';

/** What a job's `scan` gate found for one VM's point (src/scan). */
export interface PointScanVerdict {
  verdict: 'clean' | 'infected';
  matches: { rule: string; disk: string; partition: number; path: string }[];
  files: { scanned: number; cached: number };
}

/** What the lead implements with the real hypervisor / lab / publish pieces. */
export interface LabBackend {
  /** `uplink: false`: a quarantine lab, with nothing connecting it to the host (an infected point allowed in). */
  labUp(lab: unknown, signal: AbortSignal, opts?: { uplink?: boolean }): Promise<{ netns: string }>;
  labDown(): Promise<void>;
  /** Restore points of a VM, newest last; used by the point selector. */
  /** `role`: the one the VM's definition names, stored with the point. */
  listPoints(vm: string): Promise<{ id: string; time: string; role?: string }[]>;
  /** Names of every VM (for "all") or those carrying a tag. */
  listVms(tag?: string): Promise<string[]>;
  /** `evidenceDir`: where the VM's console log and last screen are kept when it stops (the run's directory). */
  recover(vm: string, pointId: string, opts: { memoryMiB?: number; signal: AbortSignal; evidenceDir?: string }): Promise<RecoveredVm>;
  /** Scans a point with a YARA rule file (a job's `scan`); backends without it cannot run such jobs. */
  scan?(vm: string, pointId: string, rules: string, signal: AbortSignal): Promise<PointScanVerdict>;
}

export interface GroupVm {
  name: string;
  role?: string;
  tests?: TestSpec[];
  maxBootSeconds?: number;
  appInitSeconds?: number;
  memoryMiB?: number;
  waitForPrevious?: boolean;
  /** The question the `dns` role asks (roles.ts). */
  dns?: DnsQuery;
}
export interface Job {
  name: string;
  lab: unknown;
  applicationGroup: GroupVm[];
  verify: {
    vms?: string[] | 'all';
    tag?: string;
    role?: string;
    tests?: TestSpec[];
    dns?: DnsQuery;
    maxBootSeconds?: number;
    appInitSeconds?: number;
    memoryMiB?: number;
    /** Per-VM overrides, by VM name. */
    overrides?: Record<string, Omit<GroupVm, 'name' | 'waitForPrevious'>>;
  };
  point: 'latest' | string;
  concurrency: number;
  keepLabOnFailure?: boolean;
  /**
   * Scan every VM's point first (docs/secure-restore.md): an infected one is
   * not booted and fails, unless `allowInfected`: then the whole run's lab
   * comes up with no uplink at all, and the VM's `scan` test says so.
   */
  scan?: { rules: string; allowInfected?: boolean };
}

const NEEDS_NETWORK = new Set(['ping', 'tcp', 'http', 'dns', 'script']);

interface Planned {
  vm: GroupVm;
  role: Role;
  point: string;
  group: boolean;
}
const now = (): number => Date.now();

export function selectPoint(points: { id: string; time: string }[], sel: string): string | undefined {
  if (sel === 'latest') return points.at(-1)?.id;
  const t = Date.parse(sel);
  return points.filter((p) => Date.parse(p.time) <= t).at(-1)?.id;
}

/**
 * Every VM of the job with its role, tests and restore point; every bad input
 * (no VM selected, a VM with no tests, no matching point) is thrown here, before
 * anything boots. A run through lab workers plans on the server first, so bad
 * input is refused there instead of failing every retry on the workers.
 */
export async function planJob(
  job: Job,
  backend: Pick<LabBackend, 'listVms' | 'listPoints'>,
): Promise<{ groupPlan: Planned[]; testPlan: Planned[] }> {
  const underTestNames = job.verify.vms === 'all' || job.verify.vms === undefined ? await backend.listVms(job.verify.tag) : job.verify.vms;
  // A run that verified nothing must not read as a success.
  if (underTestNames.length === 0) {
    throw notFound(
      'NO_VMS_TO_VERIFY',
      `job ${job.name} selects no VM to verify${job.verify.tag === undefined ? '' : ` (no backed-up VM carries tag "${job.verify.tag}")`}`,
      'back up the VMs the job should verify, or change verify.vms / verify.tag',
    );
  }
  const plan = async (g: GroupVm, group: boolean): Promise<Planned> => {
    const points = await backend.listPoints(g.name);
    const point = selectPoint(points, job.point);
    if (point === undefined) {
      throw notFound('NO_RESTORE_POINT', `VM ${g.name} has no restore point matching "${job.point}"`, 'back it up first or change "point"');
    }
    // A job that names neither role nor tests verifies the VM as its definition says (`role` in the VM's JSON).
    const own = g.tests === undefined ? points.find((p) => p.id === point)?.role : undefined;
    const role = resolveRole(g.name, g.role ?? own, {
      tests: g.tests,
      maxBootSeconds: g.maxBootSeconds,
      appInitSeconds: g.appInitSeconds,
      dns: g.dns,
    });
    const tests = role.tests.map((t) => (t.kind === 'script' ? { ...t, path: resolveScript(t.path, process.cwd(), `VM ${g.name}`) } : t));
    role.tests = tests;
    return { vm: g, role, point, group };
  };
  const groupPlan: Planned[] = [];
  for (const g of job.applicationGroup) groupPlan.push(await plan(g, true));
  const testPlan: Planned[] = [];
  for (const n of underTestNames) {
    const v = job.verify;
    const over = v.overrides?.[n] ?? {};
    testPlan.push(
      await plan(
        {
          name: n,
          role: over.role ?? v.role,
          tests: over.tests ?? v.tests,
          maxBootSeconds: over.maxBootSeconds ?? v.maxBootSeconds,
          appInitSeconds: over.appInitSeconds ?? v.appInitSeconds,
          memoryMiB: over.memoryMiB ?? v.memoryMiB,
          dns: over.dns ?? v.dns,
        },
        false,
      ),
    );
  }

  return { groupPlan, testPlan };
}

export async function runJob(
  job: Job,
  backend: LabBackend,
  runTest: TestRunner,
  opts: { limiter?: Limiter; signal?: AbortSignal; evidenceDir?: string } = {},
): Promise<RunResult> {
  const limiter = opts.limiter ?? new Limiter(64, Number.MAX_SAFE_INTEGER);
  const ctl = new AbortController();
  opts.signal?.addEventListener('abort', () => ctl.abort(opts.signal?.reason), { once: true });
  const signal = ctl.signal;

  const { groupPlan, testPlan } = await planJob(job, backend);

  const scans = job.scan ? await scanPlanned(job.scan, [...groupPlan, ...testPlan], backend, signal) : new Map<string, TestResult>();
  const quarantine = [...scans.values()].some((r) => r.result === 'warning');

  const handles = new Set<RecoveredVm>();
  /** The result each live handle's evidence goes to when it stops. */
  const resultOf = new Map<RecoveredVm, VmResult>();
  const results: VmResult[] = [];
  // A failed VM also keeps its last screen, unless its screenshot test already took one.
  const stopVm = async (h: RecoveredVm, r: VmResult | undefined): Promise<void> => {
    handles.delete(h);
    const failed = r !== undefined && !passedVm(r);
    const kept = await h.stop({ screenshot: failed && r.screenshot === null }).catch(() => undefined);
    if (!r || !kept) return;
    r.console = kept.console ?? r.console ?? null;
    r.screenshot ??= kept.screenshot ?? null;
  };
  let labUp = false;
  let kept: boolean;
  const verifyOne = async (p: Planned, keepRunning: boolean): Promise<VmResult> => {
    const start = now();
    const r: VmResult = {
      name: p.vm.name,
      point: p.point,
      group: p.group,
      result: 'success',
      tests: [],
      startedAt: start,
      endedAt: start,
      screenshot: null,
      console: null,
      bootToHeartbeatSeconds: null,
      toFirstAnswerSeconds: null,
      recoverySeconds: 0,
    };
    const release = await limiter.acquire(p.vm.memoryMiB ?? 1024, signal);
    let h: RecoveredVm | undefined;
    const watches: (TestResult['settle'] | undefined)[] = [];
    const judge = (tr: TestResult): void => {
      r.result = vmVerdict(r.result, tr.result);
    };
    try {
      r.startedAt = now();
      const scanned = scans.get(`${p.vm.name}@${p.point}`);
      if (scanned) {
        r.tests.push(scanned);
        judge(scanned);
        // Refused: an infected point is never booted without allowInfected.
        if (scanned.result === 'failed') return r;
      }
      h = await backend.recover(p.vm.name, p.point, {
        memoryMiB: p.vm.memoryMiB,
        signal,
        ...(opts.evidenceDir ? { evidenceDir: opts.evidenceDir } : {}),
      });
      handles.add(h);
      resultOf.set(h, r);
      let down: string | undefined;
      const watching: number[] = [];
      for (const spec of p.role.tests) {
        if (signal.aborted) throw signal.reason;
        // Network and application tests of a VM that never came up would only
        // wait out their own timeouts; the console and the chunks still tell a story.
        if (down !== undefined && NEEDS_NETWORK.has(spec.kind)) {
          r.tests.push({ name: spec.kind, kind: spec.kind, result: 'skipped', seconds: 0, detail: `not run: ${down}` });
          continue;
        }
        const tr = await runTest(spec, { name: p.vm.name, pointId: p.point, role: p.role, handle: h }, signal);
        if (tr.settle) {
          watches.push(tr.settle);
          watching.push(r.tests.length);
        }
        const { settle: _s, ...plain } = tr;
        r.tests.push(plain);
        if (spec.kind === 'heartbeat' && tr.result === 'failed') down = 'heartbeat failed';
        if (tr.artifact !== undefined && spec.kind === 'screenshot') r.screenshot = tr.artifact;
        const el = (now() - r.startedAt) / 1000;
        if (spec.kind === 'heartbeat' && tr.result !== 'failed') r.bootToHeartbeatSeconds = el;
        if (spec.kind !== 'heartbeat' && spec.kind !== 'screenshot' && spec.kind !== 'integrity' && tr.result === 'passed')
          r.toFirstAnswerSeconds ??= el;
        judge(tr);
      }
      // The test window ends here: a watching test (the heartbeat) gives its final verdict.
      for (const [k, i] of watching.entries()) {
        const settle = watches[k]!;
        watches[k] = undefined;
        const { settle: _s, ...final } = await settle();
        r.tests[i] = final;
        judge(final);
      }
    } catch (err) {
      if (signal.aborted) throw err;
      r.result = 'failed';
      r.tests.push({
        name: 'recover',
        kind: 'recover',
        result: 'failed',
        seconds: (now() - start) / 1000,
        detail: String(err instanceof Error ? err.message : err),
      });
    } finally {
      for (const w of watches) if (w) await w({ abandon: true }).catch(() => undefined);
      if (h && runTest.vmDone) {
        for (const tr of await runTest.vmDone({ name: p.vm.name, handle: h }, signal).catch(() => [])) {
          r.tests.push(tr);
          judge(tr);
        }
      }
      r.endedAt = now();
      r.recoverySeconds = (r.endedAt - r.startedAt) / 1000;
      if (h && !keepRunning) await stopVm(h, r);
      release();
    }
    return r;
  };

  try {
    await backend.labUp(job.lab, signal, quarantine ? { uplink: false } : {});
    labUp = true;
    let groupFailed: string | undefined;
    let pending: Promise<VmResult>[] = [];
    for (const p of groupPlan) {
      if (p.vm.waitForPrevious !== false) {
        for (const x of await Promise.all(pending)) {
          results.push(x);
          if (x.result === 'failed') groupFailed ??= x.name;
        }
        pending = [];
      }
      if (groupFailed !== undefined) {
        results.push(depFail(p, groupFailed));
        continue;
      }
      pending.push(verifyOne(p, true));
    }
    for (const x of await Promise.all(pending)) {
      results.push(x);
      if (x.result === 'failed') groupFailed ??= x.name;
    }
    if (groupFailed !== undefined) for (const p of testPlan) results.push(depFail(p, groupFailed));
    else results.push(...(await mapLimited(testPlan, job.concurrency, (p) => verifyOne(p, false))));
  } finally {
    kept = Boolean(job.keepLabOnFailure) && !signal.aborted && results.some((x) => !passedVm(x));
    if (!kept) {
      for (const h of [...handles]) await stopVm(h, resultOf.get(h));
      if (labUp) await backend.labDown();
    }
  }
  return { result: runVerdict(results), vms: results, labKept: kept };
}

/** A VM's result after one more test: a failed test fails it, a warning marks a success; skipped and passed change nothing. */
export function vmVerdict(current: VmResult['result'], test: Verdict): VmResult['result'] {
  if (test === 'failed') return 'failed';
  if (test === 'warning' && current === 'success') return 'warning';
  return current;
}

/** Success and warning are a VM that passed; failed and dependency-failed are not. */
export const passedVm = (v: Pick<VmResult, 'result'>): boolean => v.result === 'success' || v.result === 'warning';

/** The run's result: failed when any VM did not pass, warning when any warned, else success. */
export function runVerdict(vms: Pick<VmResult, 'result'>[]): RunResult['result'] {
  if (vms.some((v) => !passedVm(v))) return 'failed';
  return vms.some((v) => v.result === 'warning') ? 'warning' : 'success';
}

/** The scan gate: one `scan` test result per planned VM, before anything boots. */
async function scanPlanned(
  gate: NonNullable<Job['scan']>,
  planned: Planned[],
  backend: LabBackend,
  signal: AbortSignal,
): Promise<Map<string, TestResult>> {
  if (!backend.scan)
    throw new RestorelabError('SCAN_UNSUPPORTED', 'this job has a "scan" gate, but its lab backend cannot scan restore points');
  const out = new Map<string, TestResult>();
  for (const p of planned) {
    const key = `${p.vm.name}@${p.point}`;
    if (out.has(key)) continue;
    const t0 = now();
    const v = await backend.scan(p.vm.name, p.point, gate.rules, signal);
    const seconds = (now() - t0) / 1000;
    const counts = `${v.files.scanned} file(s) scanned, ${v.files.cached} from the cache`;
    if (v.verdict === 'clean') {
      out.set(key, { name: 'scan', kind: 'scan', result: 'passed', seconds, detail: `clean: ${counts}` });
      continue;
    }
    const named =
      v.matches
        .slice(0, 3)
        .map((m) => `${m.rule} in ${m.disk} p${m.partition} ${m.path}`)
        .join('; ') + (v.matches.length > 3 ? `; and ${v.matches.length - 3} more` : '');
    out.set(
      key,
      gate.allowInfected
        ? {
            name: 'scan',
            kind: 'scan',
            result: 'warning',
            seconds,
            detail: `INFECTED (${named}); verified in a lab with NO uplink at all (allowInfected)`,
          }
        : {
            name: 'scan',
            kind: 'scan',
            result: 'failed',
            seconds,
            detail: `INFECTED (${named}); not booted (set "allowInfected" to verify it in a lab with no uplink)`,
          },
    );
  }
  return out;
}

function depFail(p: { vm: GroupVm; point: string; group: boolean }, on: string): VmResult {
  const t = now();
  return {
    name: p.vm.name,
    point: p.point,
    group: p.group,
    result: 'dependency-failed',
    startedAt: t,
    endedAt: t,
    screenshot: null,
    console: null,
    tests: [{ name: 'dependency', kind: 'dependency', result: 'skipped', seconds: 0, detail: `application group VM ${on} failed` }],
    bootToHeartbeatSeconds: null,
    toFirstAnswerSeconds: null,
    recoverySeconds: 0,
  };
}

/**
 * The TestRunner the SureBackup runner calls for every test of every VM: it
 * dispatches on the test kind to the modules of src/verify.
 *
 * Application tests (tcp, http, dns) are retried every APP_RETRY_MS until they
 * pass or the VM's application initialisation time (role appInitSeconds) is
 * used up: a service that starts 20 s after the heartbeat is healthy, one that
 * never starts is not. Scripts run once, with their own timeout, because a
 * user script may not be safe to repeat.
 */
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { RepositoryReader } from '../repo/contract.js';
import type { RecoveredVm, TestRunner, TestResult, TestSpec } from './contract.js';
import { heartbeat, ipAnswers, realClock, watchHeartbeat, type Clock, type WatchOptions } from './heartbeat.js';
import { dnsTest, httpTest, pingTest, tcpTest } from './network.js';
import { scriptTest, type ScriptPolicy } from './script.js';
import { screenshotTest, type ScreenBaseline } from './screenshot.js';
import { ConsoleWatch, describeFindings, SUSPECT_WAIT_MS } from './console.js';
import { ocrText } from './ocr.js';
import { decodeVgaText, dedupeVgaRows } from '../hypervisor/vga.js';
import { integrityTest } from './integrity.js';

export const APP_RETRY_MS = 2000;

export interface TestRunnerOptions {
  /** Repository the points come from (integrity). */
  repo: () => Promise<RepositoryReader>;
  /** Directory for this run's screenshots; one PNG per VM. */
  screenshotDir: string;
  /** How the heartbeat watch after a pass judges a loss (tests shorten it). */
  heartbeatWatch?: Omit<WatchOptions, 'signal'>;
  /** Overrides APP_RETRY_MS (tests). */
  appRetryMs?: number;
  /** Confines script tests (jobs the server runs); absent for the CLI. */
  scripts?: ScriptPolicy;
  /** The VM's screenshot from its last passing run, to compare with (src/surebackup/history.ts). */
  baseline?: (vm: string) => ScreenBaseline | undefined;
  /** OCR the screenshot (default true; tesseract-ocr). */
  ocr?: boolean;
  /** Overrides the console watch's poll interval (tests). */
  consoleIntervalMs?: number;
  /** Overrides how long a VM with a failure line seen twice is watched for a third (SUSPECT_WAIT_MS). */
  consoleSuspectWaitMs?: number;
}

/**
 * An application test, tried every `retryMs` until it passes or `windowMs`
 * (the role's appInitSeconds) is used up; the last answer is the verdict, and
 * its detail says how many attempts it took.
 */
export async function untilPassed(
  once: () => Promise<TestResult>,
  o: { windowMs: number; retryMs: number; signal: AbortSignal; clock?: Clock },
): Promise<TestResult> {
  const clock = o.clock ?? realClock;
  const t0 = clock.now();
  const until = t0 + o.windowMs;
  let tries = 0;
  for (;;) {
    const r = await once();
    tries++;
    if (r.result === 'passed' || clock.now() >= until) {
      return { ...r, seconds: (clock.now() - t0) / 1000, detail: tries > 1 ? `${r.detail} (attempt ${tries})` : r.detail };
    }
    await clock.sleep(o.retryMs, o.signal);
  }
}

export function createTestRunner(o: TestRunnerOptions): TestRunner {
  // One console watch per VM that has a screenshot test, from its first test to vmDone.
  const watches = new WeakMap<RecoveredVm, ConsoleWatch>();
  const watchOf = (h: RecoveredVm, wanted: boolean, signal: AbortSignal): ConsoleWatch | undefined => {
    let w = watches.get(h);
    if (w || !wanted || (!h.consoleText && !h.serialLog)) return w;
    const vga = h.consoleText;
    w = new ConsoleWatch(
      {
        ...(vga ? { vga: async () => dedupeVgaRows(decodeVgaText(await vga())) } : {}),
        ...(h.serialLog ? { serial: h.serialLog } : {}),
      },
      { intervalMs: o.consoleIntervalMs, signal },
    ).start();
    watches.set(h, w);
    return w;
  };
  const run: TestRunner = async (spec, vm, signal) => {
    const h = vm.handle;
    const watch = watchOf(
      h,
      vm.role.tests.some((t) => t.kind === 'screenshot'),
      signal,
    );
    const withName = (r: TestResult): TestResult => ({ ...r, name: testName(spec) });
    const app = (once: () => Promise<TestResult>): Promise<TestResult> =>
      untilPassed(once, { windowMs: vm.role.appInitSeconds * 1000, retryMs: o.appRetryMs ?? APP_RETRY_MS, signal });
    switch (spec.kind) {
      case 'heartbeat': {
        const ipAnswer = (): Promise<boolean> => ipAnswers(h.netns, h.ip);
        const { path, ...r } = await heartbeat(
          { agentPing: h.agentPing, ipAnswer },
          {
            maxBootSeconds: vm.role.maxBootSeconds,
            signal,
            stability:
              spec.stablePings !== undefined || spec.stableSeconds !== undefined
                ? { pings: spec.stablePings ?? 3, seconds: spec.stableSeconds ?? 4 }
                : undefined,
          },
        );
        if (r.result !== 'passed') return withName(r);
        // Passed: keep probing the same path until the runner ends the VM's test window.
        const watch =
          path === 'agent' && h.agentPing
            ? watchHeartbeat(h.agentPing, 'the guest agent', { ...o.heartbeatWatch, signal })
            : watchHeartbeat(ipAnswer, `${h.ip} (ICMP)`, { ...o.heartbeatWatch, signal });
        const first = withName(r);
        return {
          ...first,
          settle: async (so) => {
            const w = await watch.settle(so);
            return { ...first, result: w.held ? 'passed' : 'failed', seconds: first.seconds, detail: `${first.detail}; ${w.detail}` };
          },
        };
      }
      case 'ping':
        return withName(await pingTest(h.netns, h.ip));
      case 'tcp':
        return withName(await app(() => tcpTest(h.netns, h.ip, spec.port, spec.banner)));
      case 'http':
        return withName(await app(() => httpTest(h.netns, h.ip, spec)));
      case 'dns':
        return withName(await app(() => dnsTest(h.netns, h.ip, spec.name, spec.expect)));
      case 'script':
        return withName(await scriptTest(spec, { netns: h.netns, name: vm.name, ip: h.ip, masqIp: h.masqIp }, signal, o.scripts));
      case 'screenshot': {
        mkdirSync(o.screenshotDir, { recursive: true });
        await watch?.poll();
        const ppm = await h.screendump();
        const png = join(o.screenshotDir, `${vm.name}.png`);
        // Without a watch (a handle with no console readers) the screen's own text is all there is.
        const vgaDump = !watch && h.consoleText ? await h.consoleText().catch(() => undefined) : undefined;
        const ocr = o.ocr === false ? undefined : await ocrText(ppm);
        const baseline = o.baseline?.(vm.name);
        try {
          const { findings, ...r } = screenshotTest(ppm, png, {
            findings: watch?.take() ?? [],
            ocr,
            ...(vgaDump ? { vgaDump } : {}),
            ...(baseline ? { baseline } : {}),
          });
          // What this test reported is not reported again at the end of the VM.
          watch?.add(findings);
          watch?.take();
          return { ...withName(r), artifact: png };
        } finally {
          rmSync(ppm, { force: true });
        }
      }
      case 'integrity': {
        const { corrupt: _c, chunks: _n, ...r } = await integrityTest(await o.repo(), vm.pointId, { signal });
        return withName(r);
      }
    }
  };
  run.vmDone = async (vm, signal) => {
    const w = watches.get(vm.handle);
    if (!w) return [];
    watches.delete(vm.handle);
    if (signal.aborted) return [];
    const t0 = Date.now();
    await w.stop({ suspectWaitMs: o.consoleSuspectWaitMs ?? SUSPECT_WAIT_MS });
    const late = w.take();
    if (late.length === 0) return [];
    return [
      {
        name: 'console',
        kind: 'console',
        result: 'failed',
        seconds: (Date.now() - t0) / 1000,
        detail: `${describeFindings(late)} (seen after the screenshot test, or with no screenshot taken)`,
      },
    ];
  };
  return run;
}

/** A readable test name: the kind plus what it targets (e.g. "tcp:5432", "dns:web.lab.test"). */
export function testName(spec: TestSpec): string {
  switch (spec.kind) {
    case 'tcp':
      return `tcp:${spec.port}`;
    case 'http':
      return `http:${spec.port ?? 80}${spec.path ?? '/'}`;
    case 'dns':
      return `dns:${spec.name}`;
    case 'script':
      return `script:${spec.path.split('/').at(-1) ?? spec.path}`;
    default:
      return spec.kind;
  }
}

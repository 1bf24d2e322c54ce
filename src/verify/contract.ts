/**
 * The words of verification, shared by every layer that runs or reports a
 * test: a *test spec* says what to check (heartbeat, ping, tcp, http, dns,
 * script, screenshot, integrity), a *role* bundles default specs and time
 * windows, a *recovered VM* is the handle a test checks through, and a
 * *test result* carries the verdict. The runner that orders VMs and tests
 * (src/surebackup/runner.ts) and the reports above it use these; the tests
 * in this folder implement them.
 */

export type TestSpec =
  | { kind: 'heartbeat'; stablePings?: number; stableSeconds?: number }
  | { kind: 'ping' }
  | { kind: 'tcp'; port: number; banner?: string }
  | { kind: 'http'; port?: number; path?: string; status?: number; body?: string }
  | { kind: 'dns'; name: string; expect?: string }
  | { kind: 'script'; path: string; args?: string[]; timeoutSeconds?: number }
  | { kind: 'screenshot' }
  | { kind: 'integrity' };

export interface Role {
  name: string;
  tests: TestSpec[];
  maxBootSeconds: number;
  appInitSeconds: number;
}
/** The question a `dns` role VM must answer: `name`'s A record is `expect`. */
export interface DnsQuery {
  name: string;
  expect: string;
}

export type Verdict = 'passed' | 'failed' | 'skipped' | 'warning';
export interface TestResult {
  name: string;
  kind: string;
  result: Verdict;
  seconds: number;
  detail: string;
  /** A file the test produced (the screenshot PNG). */
  artifact?: string;
  /** The screenshot of the VM's last passing run, when this one looks very different from it. */
  baseline?: string;
  /**
   * A test that keeps watching for the rest of the VM's test window (the
   * heartbeat): called once the VM's other tests are done, it gives the final
   * verdict that replaces this one. `abandon` asks for it at once (cancel, error).
   */
  settle?: (o?: { abandon?: boolean }) => Promise<TestResult>;
}

/** A VM recovered into the lab. */
export interface RecoveredVm {
  ip: string;
  masqIp: string;
  /** Network namespace of the lab, for tests that run "inside" it. */
  netns: string;
  /** Guest agent ping; undefined if the VM has no agent. */
  agentPing?: () => Promise<boolean>;
  /** QMP screendump to a PPM file; returns its path. */
  screendump(): Promise<string>;
  /** The VGA text memory (char/attr pairs from 0xB8000), when the console is in text mode. */
  consoleText?: () => Promise<Uint8Array>;
  /** What the guest wrote on its serial console so far. */
  serialLog?: () => Promise<string>;
  /**
   * Powers the VM off and removes what its bring-up made; idempotent. Keeps
   * its serial console log (and with `screenshot`, its last screen) in the
   * evidence directory first and says where.
   */
  stop(how?: { screenshot?: boolean }): Promise<Evidence | void>;
}

/** Files kept of a VM when it was stopped (src/bringup/evidence.ts). */
export interface Evidence {
  console?: string;
  screenshot?: string;
}

/** Runs one test against a recovered VM; src/verify provides the real ones. */
export type TestRunner = ((
  spec: TestSpec,
  vm: { name: string; pointId: string; role: Role; handle: RecoveredVm },
  signal: AbortSignal,
) => Promise<TestResult>) & {
  /**
   * Called once per recovered VM after its tests, before it stops: results
   * of what watched the VM the whole time (the console watch), if it saw
   * something after the tests that report it had run.
   */
  vmDone?: (vm: { name: string; handle: RecoveredVm }, signal: AbortSignal) => Promise<TestResult[]>;
};

/** One verified VM: its tests and timings; `group`: it belongs to the application group. */
export interface VmResult {
  name: string;
  point: string;
  group: boolean;
  result: 'success' | 'warning' | 'failed' | 'dependency-failed';
  tests: TestResult[];
  startedAt: number;
  endedAt: number;
  /** PNG of the console: the screenshot test's, or the last screen of a failed VM. */
  screenshot: string | null;
  /** The VM's serial console log, kept in the run's directory (absent in rows from before it was kept). */
  console?: string | null;
  bootToHeartbeatSeconds: number | null;
  toFirstAnswerSeconds: number | null;
  recoverySeconds: number;
  /** The lab worker that ran this VM, when the run went through workers (src/workers). */
  worker?: string;
}
export interface RunResult {
  result: 'success' | 'warning' | 'failed';
  vms: VmResult[];
  labKept: boolean;
}

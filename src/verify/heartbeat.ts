/**
 * The heartbeat test: is the recovered VM up, and does it stay up?
 *
 * "Stable" means `pings` consecutive successful answers (default 3) spread
 * over at least `seconds` (default 4 s, so one probe every 2 s): one lucky
 * answer from a guest that is still bringing services up, or about to reboot,
 * is not enough. A failed answer restarts the count.
 *
 * What counts as an answer depends on what the VM definition promises
 * (`"agent"`, default true; src/vm/definition.ts):
 * - `agent`: a VM that should have a guest agent passes only when the agent
 *   answers guest-ping stably. Its address answering is not enough: a guest
 *   whose agent cannot start (a corrupt loader, a broken libc, a full disk)
 *   may still answer ICMP and even serve static pages, and is not healthy.
 *   Silent until its maximum boot time: failed, and the detail says whether
 *   the address answered.
 * - `ip`: a VM with `"agent": false` passes when its address answers ICMP echo
 *   stably from inside the lab namespace. A neighbour (ARP) entry is not an
 *   answer: the kernel keeps it REACHABLE for a while after the guest died.
 * - `boot-time`: an agent-less VM that never answered ICMP is given the benefit
 *   of the doubt once its maximum boot time has passed: "warning", never "passed".
 *
 * A pass is not the end: `watchHeartbeat` keeps probing the same path for the
 * rest of the VM's test window, and a heartbeat lost there fails the test.
 */
import { exec } from '../host/exec.js';
import type { TestResult } from './contract.js';

export interface Stability {
  pings: number;
  seconds: number;
}
export const DEFAULT_STABILITY: Stability = { pings: 3, seconds: 4 };
/**
 * Lost = this many consecutive misses spanning at least this long. Looser than
 * stability: under TCG a busy guest's agent may miss one ping, a dead one misses all.
 */
export const DEFAULT_LOSS: Stability = { pings: 3, seconds: 10 };

export interface HeartbeatProbes {
  /** Guest-agent ping; undefined when the VM has no agent ("agent": false). */
  agentPing?: () => Promise<boolean>;
  /** One ICMP echo from the VM's address on the lab bridge. */
  ipAnswer: () => Promise<boolean>;
}

export interface HeartbeatOptions {
  maxBootSeconds: number;
  stability?: Stability;
  signal?: AbortSignal;
  /** Default realClock. */
  clock?: Clock;
}

export type HeartbeatPath = 'agent' | 'ip' | 'boot-time';

/**
 * Time as the heartbeat sees it. The real one is the wall clock; unit tests
 * pass a virtual one so a 600 s boot window is decided in milliseconds.
 */
export interface Clock {
  now(): number;
  /** Resolves after `ms`; rejects with the signal's reason when it aborts first. */
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
}

export const realClock: Clock = {
  now: () => Date.now(),
  sleep: (ms, signal) =>
    new Promise((resolve, reject) => {
      if (signal?.aborted) {
        reject(signal.reason);
        return;
      }
      // Timers count from the event loop's cached time, which can lag the
      // wall clock under load, so a timer may fire before `ms` have passed by
      // Date.now(); re-arm for the rest, or a stability span comes up 1 ms short.
      const until = Date.now() + ms;
      const fire = (): void => {
        const left = until - Date.now();
        if (left > 0) {
          tm = setTimeout(fire, left);
          return;
        }
        signal?.removeEventListener('abort', onAbort);
        resolve();
      };
      let tm = setTimeout(fire, ms);
      const onAbort = (): void => {
        clearTimeout(tm);
        reject(signal?.reason);
      };
      signal?.addEventListener('abort', onAbort, { once: true });
    }),
};

/** A probe that hangs counts as a miss after `ms`: it must not stall the loop. */
const bounded = (p: Promise<boolean>, ms: number, clock: Clock): Promise<boolean> => {
  const timer = new AbortController();
  const late = clock.sleep(ms, timer.signal).then(
    () => false,
    () => false,
  );
  return Promise.race([p.catch(() => false), late]).finally(() => timer.abort());
};

/** Counts a run of equal outcomes; complete once `pings` of them span `seconds`. */
class RunCounter {
  private firstAt: number | undefined;
  private count = 0;
  constructor(
    private readonly s: Stability,
    private readonly want: boolean,
  ) {}
  record(ok: boolean, at: number): boolean {
    if (ok !== this.want) {
      this.count = 0;
      this.firstAt = undefined;
      return false;
    }
    this.firstAt ??= at;
    this.count++;
    return this.count >= this.s.pings && at - this.firstAt >= this.s.seconds * 1000;
  }
  get running(): boolean {
    return this.count > 0;
  }
}

const intervalOf = (s: Stability): number => (s.pings > 1 ? (s.seconds * 1000) / (s.pings - 1) : 1000);
const secs = (ms: number): string => (ms / 1000).toFixed(1);

export async function heartbeat(probes: HeartbeatProbes, o: HeartbeatOptions): Promise<TestResult & { path: HeartbeatPath | 'none' }> {
  const stability = o.stability ?? DEFAULT_STABILITY;
  const intervalMs = intervalOf(stability);
  const probeMs = Math.max(intervalMs, 1000);
  const clock = o.clock ?? realClock;
  const t0 = clock.now();
  const deadline = t0 + o.maxBootSeconds * 1000;
  const agent = new RunCounter(stability, true);
  const ip = new RunCounter(stability, true);
  let agentSeenAt: number | undefined;
  let ipSeenAt: number | undefined;
  let ipStableAt: number | undefined;
  const done = (
    result: TestResult['result'],
    path: HeartbeatPath | 'none',
    detail: string,
  ): TestResult & { path: HeartbeatPath | 'none' } => ({
    name: 'heartbeat',
    kind: 'heartbeat',
    result,
    seconds: (clock.now() - t0) / 1000,
    detail,
    path,
  });
  const stableText = `${stability.pings} consecutive answers over ≥${stability.seconds} s`;

  for (;;) {
    const roundStart = clock.now();
    // The address is probed for an agent VM too: only to say in a failure whether the guest ran at all.
    const [a, i] = await Promise.all([
      probes.agentPing ? bounded(probes.agentPing(), probeMs, clock) : Promise.resolve(false),
      ipStableAt === undefined ? bounded(probes.ipAnswer(), probeMs, clock) : Promise.resolve(true),
    ]);
    const at = clock.now();
    // A run's span is measured between the moments the probes were sent:
    // their answer times jitter with load, and a slow first answer would
    // make three answers two seconds apart look shorter than four seconds.
    if (a) agentSeenAt ??= at;
    if (i) ipSeenAt ??= at;
    if (probes.agentPing) {
      if (agent.record(a, roundStart)) return done('passed', 'agent', `via guest agent: ${stableText}, after ${secs(at - t0)} s`);
    } else if (ip.record(i, roundStart)) {
      return done('passed', 'ip', `via ICMP on the lab bridge (VM has no guest agent): ${stableText}, after ${secs(at - t0)} s`);
    }
    if (probes.agentPing && ipStableAt === undefined && ip.record(i, roundStart)) ipStableAt = at;
    if (at >= deadline) {
      if (!probes.agentPing) {
        const seen = ipSeenAt === undefined ? 'no ICMP answer' : 'no stable ICMP answer';
        return done(
          'warning',
          'boot-time',
          `no guest agent and ${seen} on the lab bridge; waited out the maximum boot time (${o.maxBootSeconds} s)`,
        );
      }
      const agentText =
        agentSeenAt !== undefined
          ? `the guest agent answered (first after ${secs(agentSeenAt - t0)} s) but never ${stableText}`
          : 'the guest agent never answered';
      const ipText =
        ipStableAt !== undefined
          ? `its address answered ICMP stably after ${secs(ipStableAt - t0)} s, so the guest runs but is not healthy`
          : ipSeenAt !== undefined
            ? `its address answered ICMP (first after ${secs(ipSeenAt - t0)} s) but not stably`
            : 'its address did not answer ICMP either';
      return done(
        'failed',
        'none',
        `${agentText} within the maximum boot time (${o.maxBootSeconds} s); ${ipText}` +
          ' (the VM definition expects an agent; a guest without one needs "agent": false)',
      );
    }
    await clock.sleep(Math.max(0, Math.min(intervalMs - (clock.now() - roundStart), deadline - clock.now())), o.signal);
  }
}

export interface HeartbeatWatch {
  /**
   * Ends the watch and says whether the heartbeat held. A miss streak under
   * way is first decided (probing on until an answer or a loss), unless
   * `abandon` (cancel, teardown after an error) asks for an answer now.
   */
  settle(o?: { abandon?: boolean }): Promise<{ held: boolean; detail: string }>;
}

export interface WatchOptions {
  loss?: Stability;
  /** Time between probes (default 2 s). */
  intervalMs?: number;
  /** A probe that takes longer is a miss (default 5 s). */
  probeTimeoutMs?: number;
  signal?: AbortSignal;
  /** Default realClock. */
  clock?: Clock;
}

/**
 * Keeps probing `answer` (the path the heartbeat passed on) in the background
 * for the VM's test window: an address that answered and then stopped
 * (guest crashed, rebooted, lost its network) is a lost heartbeat.
 */
export function watchHeartbeat(answer: () => Promise<boolean>, what: string, o: WatchOptions = {}): HeartbeatWatch {
  const loss = o.loss ?? DEFAULT_LOSS;
  const intervalMs = o.intervalMs ?? 2000;
  const probeTimeoutMs = o.probeTimeoutMs ?? 5000;
  const clock = o.clock ?? realClock;
  const stop = new AbortController();
  const onAbort = (): void => stop.abort(o.signal?.reason);
  o.signal?.addEventListener('abort', onAbort, { once: true });
  const t0 = clock.now();
  const misses = new RunCounter(loss, false);
  let probes = 0;
  let lostAt: number | undefined;
  let settling = false;

  const loop = (async (): Promise<void> => {
    while (!stop.signal.aborted && lostAt === undefined) {
      const roundStart = clock.now();
      const ok = await bounded(answer(), probeTimeoutMs, clock);
      probes++;
      if (misses.record(ok, roundStart)) {
        lostAt = clock.now();
        break;
      }
      // Settling waits only for a miss streak to be decided.
      if (settling && !misses.running) break;
      try {
        await clock.sleep(Math.max(0, intervalMs - (clock.now() - roundStart)), stop.signal);
      } catch {
        break;
      }
    }
  })();

  return {
    async settle(so = {}) {
      settling = true;
      if (so.abandon) stop.abort(new Error('heartbeat watch abandoned'));
      await loop;
      o.signal?.removeEventListener('abort', onAbort);
      stop.abort(new Error('heartbeat watch settled'));
      if (lostAt !== undefined) {
        return {
          held: false,
          detail: `lost during the test window: ${what} stopped answering (${loss.pings} consecutive misses over ≥${loss.seconds} s), ${secs(lostAt - t0)} s after the heartbeat passed`,
        };
      }
      return { held: true, detail: `${what} kept answering through the test window (${secs(clock.now() - t0)} s, ${probes} probes)` };
    },
  };
}

// Stryker disable all: ping inside a lab namespace; test/verify/lab-tests.test.ts runs it for real.
/**
 * One ICMP echo reply from `ip`, seen from inside `netns`. Only a reply counts:
 * a neighbour entry can stay REACHABLE for tens of seconds after the guest died.
 */
export async function ipAnswers(netns: string, ip: string): Promise<boolean> {
  const ping = await exec('ip', ['netns', 'exec', netns, 'ping', '-c', '1', '-W', '1', ip], { timeoutMs: 3000 });
  return ping.code === 0;
}

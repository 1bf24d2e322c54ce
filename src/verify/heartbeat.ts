/**
 * The heartbeat test: is the recovered VM up?
 *
 * "Stable" means `pings` consecutive successful answers (default 3) spread
 * over at least `seconds` (default 4 s, so one ping every 2 s): one lucky
 * answer from a guest that is still bringing services up, or about to reboot,
 * is not enough. A failed answer restarts the count.
 *
 * Paths, in order of preference (the detail names the one used):
 * - `agent`: the guest agent answers guest-ping stably.
 * - `ip`: the VM's address answers stably on the lab bridge (ICMP echo, or
 *   a resolved ARP neighbour entry for guests that drop ICMP), seen from
 *   inside the lab namespace. A VM that should have an agent gets
 *   `agentGraceSeconds` more for its agent before the IP answer is accepted.
 * - `boot-time`: a VM without an agent that never answered on its address
 *   is given the benefit of the doubt once its maximum boot time has passed:
 *   result "warning", never "passed". A VM that *should* have an agent and
 *   answered nothing by then failed to boot.
 */
import { exec } from '../host/exec.js';
import type { TestResult } from '../surebackup/runner.js';

export interface Stability { pings: number; seconds: number }
export const DEFAULT_STABILITY: Stability = { pings: 3, seconds: 4 };

export interface HeartbeatProbes {
  /** Guest-agent ping; undefined when the VM has no agent. */
  agentPing?: () => Promise<boolean>;
  /** One attempt at an answer from the VM's address on the lab bridge. */
  ipAnswer: () => Promise<boolean>;
}

export interface HeartbeatOptions {
  maxBootSeconds: number;
  stability?: Stability;
  agentGraceSeconds?: number;
  signal?: AbortSignal;
}

export type HeartbeatPath = 'agent' | 'ip' | 'boot-time';

const sleep = (ms: number, signal?: AbortSignal): Promise<void> => new Promise((resolve, reject) => {
  if (signal?.aborted) { reject(signal.reason); return; }
  const tm = setTimeout(() => { signal?.removeEventListener('abort', onAbort); resolve(); }, ms);
  const onAbort = (): void => { clearTimeout(tm); reject(signal?.reason); };
  signal?.addEventListener('abort', onAbort, { once: true });
});

/** Counts consecutive successes; stable once `pings` of them span `seconds`. */
class StableCounter {
  private firstAt: number | undefined;
  private count = 0;
  seen = false;
  constructor(private readonly s: Stability) {}
  record(ok: boolean, at: number): boolean {
    if (!ok) { this.count = 0; this.firstAt = undefined; return false; }
    this.seen = true;
    this.firstAt ??= at;
    this.count++;
    return this.count >= this.s.pings && at - this.firstAt >= this.s.seconds * 1000;
  }
}

export async function heartbeat(probes: HeartbeatProbes, o: HeartbeatOptions): Promise<TestResult & { path: HeartbeatPath | 'none' }> {
  const stability = o.stability ?? DEFAULT_STABILITY;
  const intervalMs = stability.pings > 1 ? (stability.seconds * 1000) / (stability.pings - 1) : 1000;
  const t0 = Date.now();
  const deadline = t0 + o.maxBootSeconds * 1000;
  const graceMs = (o.agentGraceSeconds ?? 30) * 1000;
  const agent = new StableCounter(stability);
  const ip = new StableCounter(stability);
  let ipStableAt: number | undefined;
  const done = (result: TestResult['result'], path: HeartbeatPath | 'none', detail: string): TestResult & { path: HeartbeatPath | 'none' } =>
    ({ name: 'heartbeat', kind: 'heartbeat', result, seconds: (Date.now() - t0) / 1000, detail, path });
  const stableText = `${stability.pings} consecutive answers over ≥${stability.seconds} s`;

  for (;;) {
    const roundStart = Date.now();
    // A hung probe must not stall the loop past the deadline.
    const bounded = (p: Promise<boolean>): Promise<boolean> =>
      Promise.race([p.catch(() => false), sleep(Math.max(intervalMs, 1000), o.signal).then(() => false)]);
    const [a, i] = await Promise.all([
      probes.agentPing ? bounded(probes.agentPing()) : Promise.resolve(false),
      ipStableAt === undefined ? bounded(probes.ipAnswer()) : Promise.resolve(true),
    ]);
    const at = Date.now();
    if (probes.agentPing && agent.record(a, at)) {
      return done('passed', 'agent', `via guest agent: ${stableText}, after ${((at - t0) / 1000).toFixed(1)} s`);
    }
    if (ipStableAt === undefined && ip.record(i, at)) ipStableAt = at;
    if (ipStableAt !== undefined && (!probes.agentPing || (!agent.seen && at - ipStableAt >= graceMs) || at >= deadline)) {
      const why = probes.agentPing ? `guest agent silent for ${graceMs / 1000} s after the address answered` : 'VM has no guest agent';
      return done('passed', 'ip', `via IP on the lab bridge (${why}): ${stableText}, after ${((ipStableAt - t0) / 1000).toFixed(1)} s`);
    }
    if (at >= deadline) {
      if (!probes.agentPing) {
        return done('warning', 'boot-time', `no guest agent and no answer on the lab bridge; waited out the maximum boot time (${o.maxBootSeconds} s)`);
      }
      const seen = agent.seen ? 'the guest agent answered but never stably' : 'no answer from the guest agent or on the lab bridge';
      return done('failed', 'none', `${seen} within the maximum boot time (${o.maxBootSeconds} s)`);
    }
    await sleep(Math.max(0, Math.min(intervalMs - (Date.now() - roundStart), deadline - Date.now())), o.signal);
  }
}

/**
 * One answer from `ip` seen from inside `netns`: an ICMP echo reply, or else a
 * neighbour entry the kernel resolved by ARP (the guest owns the address even
 * if its firewall drops ICMP).
 */
export async function ipAnswers(netns: string, ip: string): Promise<boolean> {
  const ping = await exec('ip', ['netns', 'exec', netns, 'ping', '-c', '1', '-W', '1', ip], { timeoutMs: 3000 });
  if (ping.code === 0) return true;
  const neigh = await exec('ip', ['-n', netns, 'neigh', 'show', ip], { timeoutMs: 3000 });
  return /lladdr \S+ .*REACHABLE/.test(neigh.stdout);
}

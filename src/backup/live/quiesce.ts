/**
 * Quiescing: the guest's filesystems frozen for the instant the
 * point-in-time view is taken, so the point holds what the guest had
 * flushed, not a half-written journal.
 *
 * - `filesystem`: the guest agent's guest-fsfreeze-freeze, then the
 *   snapshot, then guest-fsfreeze-thaw.
 * - `application`: the same; the agent runs the guest's fsfreeze hook
 *   scripts (qemu-ga --fsfreeze-hook) around it, and the backup runs the
 *   host's preFreeze script before and postThaw script after.
 *
 * The freeze is bounded: the agent gets FREEZE_TIMEOUT_MS to freeze, the
 * snapshot its own timeout, and thaw is sent on every path, the failing ones
 * included (a thaw of an unfrozen guest is harmless). When quiescing fails
 * the backup goes on crash-consistent and says why, unless the caller
 * requires the consistency it asked for.
 */
import { performance } from 'node:perf_hooks';
import { exec } from '../../host/exec.js';
import { QgaClient } from '../../hypervisor/qga.js';
import { RestorelabError } from '../../errors.js';
import type { Consistency } from '../../repo/contract.js';
import type { VirshRunner } from './monitor.js';

export const FREEZE_TIMEOUT_MS = 10_000;
export const THAW_TIMEOUT_MS = 10_000;
export const AGENT_CONNECT_TIMEOUT_MS = 3_000;
export const HOST_SCRIPT_TIMEOUT_MS = 60_000;
/** The longest the guest may stay frozen while the snapshot is taken; past it we thaw and fail. */
export const FROZEN_LIMIT_MS = 20_000;

/** The guest agent as the quiescing step needs it. */
export interface GuestFreezer {
  readonly where: string;
  /** Resolves with the number of filesystems frozen. */
  freeze(timeoutMs: number): Promise<number>;
  thaw(timeoutMs: number): Promise<number>;
  close(): void;
}

export async function qgaFreezer(socket: string): Promise<GuestFreezer> {
  const qga = await QgaClient.connect(socket, { timeoutMs: AGENT_CONNECT_TIMEOUT_MS });
  return {
    where: `guest agent ${socket}`,
    freeze: (ms) => qga.execute<number>('guest-fsfreeze-freeze', undefined, ms),
    thaw: (ms) => qga.execute<number>('guest-fsfreeze-thaw', undefined, ms),
    close: () => qga.close(),
  };
}

/** libvirt's own agent connection (virsh domfsfreeze / domfsthaw). */
/** The freeze through libvirt's agent channel, with the monitor's virsh session (`virsh`, see monitor.ts). */
export function libvirtFreezer(domain: string, virsh: VirshRunner): Promise<GuestFreezer> {
  const run = async (cmd: string, ms: number): Promise<number> => {
    const r = await virsh([cmd, domain], ms).catch((err: Error) => {
      throw new Error(`${err.message} (guest agent hung?)`);
    });
    if (!r.ok)
      throw new Error(
        r.stderr
          .trim()
          .replace(/^error: /gm, '')
          .replace(/\s*\n\s*/g, ': ') || `virsh ${cmd} failed`,
      );
    return Number(/(\d+)/.exec(r.stdout)?.[1] ?? 0);
  };
  return Promise.resolve({
    where: `libvirt guest agent of ${domain}`,
    freeze: (ms) => run('domfsfreeze', ms),
    thaw: (ms) => run('domfsthaw', ms),
    close: () => undefined,
  });
}

export interface HostScripts {
  preFreeze?: string;
  postThaw?: string;
}

export interface QuiesceOptions {
  wanted: Consistency;
  requireConsistency?: boolean;
  /** Opens the agent; undefined when the source has none (then freezing fails with `noAgentReason`). */
  freezer?: () => Promise<GuestFreezer>;
  noAgentReason?: string;
  hostScripts?: HostScripts;
  /** Environment for the host scripts (RESTORELAB_VM, ...). */
  scriptEnv: Record<string, string>;
  onWarning?: (m: string) => void;
}

export interface Quiesced<T> {
  value: T;
  achieved: Consistency;
  reason?: string;
  freezeMs?: number;
}

/** Runs a host script without a shell, bounded; rejects with what it printed. */
export async function runHostScript(path: string, phase: string, env: Record<string, string>): Promise<void> {
  const r = await exec(path, [], { timeoutMs: HOST_SCRIPT_TIMEOUT_MS, env: { ...process.env, ...env, RESTORELAB_PHASE: phase } });
  if (r.timedOut) throw new Error(`${phase} script ${path} did not finish within ${HOST_SCRIPT_TIMEOUT_MS / 1000} s (killed)`);
  if (r.code !== 0)
    throw new Error(
      `${phase} script ${path} failed (exit ${r.code ?? r.signal}): ${(r.stderr || r.stdout).trim().split('\n').slice(-3).join(' | ')}`,
    );
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

const RANK: Record<Consistency, number> = { crash: 0, filesystem: 1, application: 2 };

/**
 * Runs `snapshot` with the guest quiesced as well as it can be. Throws
 * LIVE_CONSISTENCY_NOT_REACHED (before `snapshot` runs) when the caller
 * requires the consistency and it cannot be had.
 */
export async function quiesced<T>(o: QuiesceOptions, snapshot: () => Promise<T>): Promise<Quiesced<T>> {
  if (o.wanted === 'crash') return { value: await snapshot(), achieved: 'crash' };
  const reasons: string[] = [];
  let achieved: Consistency = o.wanted;
  const lower = (to: Consistency, why: string): void => {
    reasons.push(why);
    if (RANK[to] < RANK[achieved]) achieved = to;
  };
  const preRan = o.wanted === 'application' && o.hostScripts?.preFreeze !== undefined;
  let freezer: GuestFreezer | undefined;
  try {
    if (preRan && o.hostScripts?.preFreeze) {
      await runHostScript(o.hostScripts.preFreeze, 'pre-freeze', o.scriptEnv).catch((err: Error) => lower('filesystem', err.message));
    }
    try {
      if (!o.freezer) throw new Error(o.noAgentReason ?? 'no guest agent');
      freezer = await withTimeout(o.freezer(), AGENT_CONNECT_TIMEOUT_MS + 1000, 'guest agent');
    } catch (err) {
      lower('crash', `guest agent not reachable: ${(err as Error).message}`);
    }
    refuseIfRequired(o, achieved, reasons);
    if (freezer) {
      const started = performance.now();
      let frozen = false;
      try {
        await freezer.freeze(FREEZE_TIMEOUT_MS);
        frozen = true;
      } catch (err) {
        lower('crash', `guest-fsfreeze-freeze failed: ${(err as Error).message}`);
        // It may have frozen some filesystems before failing (or after our timeout): thaw to be sure.
        await thaw(freezer, (m) => reasons.push(m));
        refuseIfRequired(o, achieved, reasons);
      }
      if (frozen) {
        // From here the guest is frozen: nothing but the snapshot, bounded, then thaw whatever happens.
        let value: T;
        try {
          value = await withTimeout(snapshot(), FROZEN_LIMIT_MS, 'taking the snapshot while the guest is frozen');
        } finally {
          await thaw(freezer, o.onWarning);
        }
        const freezeMs = Math.round(performance.now() - started);
        return { value, achieved, ...(reasons.length ? { reason: reasons.join('; ') } : {}), freezeMs };
      }
    }
    return { value: await snapshot(), achieved, reason: reasons.join('; ') };
  } finally {
    freezer?.close();
    if (preRan && o.hostScripts?.postThaw) {
      // The point is taken (or refused); the script's failure is the application's business, but the user must hear of it.
      await runHostScript(o.hostScripts.postThaw, 'post-thaw', o.scriptEnv).catch((err: Error) => o.onWarning?.(err.message));
    }
  }
}

function refuseIfRequired(o: QuiesceOptions, achieved: Consistency, reasons: string[]): void {
  if (o.requireConsistency && RANK[achieved] < RANK[o.wanted]) {
    throw new RestorelabError(
      'LIVE_CONSISTENCY_NOT_REACHED',
      `${o.wanted} consistency was required but only ${achieved} can be had: ${reasons.join('; ')}`,
      {
        hint: 'check that qemu-guest-agent runs in the guest and its socket is given (--qga), or drop --require-consistency to accept a crash-consistent point',
      },
    );
  }
}

/** Thaws, retrying: a guest left frozen hangs every writer in it. */
async function thaw(f: GuestFreezer, onWarning?: (m: string) => void): Promise<void> {
  let last: unknown;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      await f.thaw(THAW_TIMEOUT_MS);
      return;
    } catch (err) {
      last = err;
    }
  }
  onWarning?.(
    `could not thaw the guest's filesystems through ${f.where}: ${(last as Error).message}; check the guest (guest-fsfreeze-status) and thaw it by hand`,
  );
}

/**
 * The QEMU monitor a live backup talks to, whoever owns the VM:
 * - `qmp`: a QMP unix socket (a VM restorelab started, or any QEMU started
 *   with `-qmp unix:...,server=on`);
 * - `libvirt`: libvirt's own QMP connection to the domain, through
 *   `virsh qemu-monitor-command` (QMP pass-through; docs/backup.md says why
 *   not libvirt's backup API).
 * Both answer `execute` with QMP's `return` value or reject with a QmpError.
 */
import { exec, which } from '../../host/exec.js';
import { QmpClient, QmpError } from '../../hypervisor/qmp.js';
import { RestorelabError, missingComponent } from '../../errors.js';
import { VirshSession, type VirshReply } from './virsh-session.js';

export interface BlockMonitor {
  /** For messages: "QMP /run/vm.qmp", "libvirt domain web". */
  readonly where: string;
  execute<T = unknown>(command: string, args?: Record<string, unknown>, timeoutMs?: number): Promise<T>;
  /** A libvirt monitor runs other virsh commands (the guest freeze) through its session too. */
  virsh?: VirshRunner;
  close(): Promise<void>;
}

export type VirshRunner = (args: string[], timeoutMs: number) => Promise<VirshReply>;

export const MONITOR_TIMEOUT_MS = 30_000;

export async function openQmpMonitor(socket: string): Promise<BlockMonitor> {
  let qmp: QmpClient;
  try {
    qmp = await QmpClient.connect(socket, { timeoutMs: 10_000 });
  } catch (err) {
    throw new RestorelabError('LIVE_SOURCE_UNREACHABLE', `cannot talk QMP on ${socket}: ${(err as Error).message}`, {
      hint: 'give the QMP socket of the running VM (QEMU started with -qmp unix:PATH,server=on,wait=off); QEMU accepts one QMP client per socket',
      cause: err,
    });
  }
  return {
    where: `QMP ${socket}`,
    execute: (command, args, timeoutMs = MONITOR_TIMEOUT_MS) => qmp.execute(command, args, timeoutMs),
    close: () => qmp.close(),
  };
}

export async function openLibvirtMonitor(domain: string, uri = 'qemu:///system'): Promise<BlockMonitor> {
  if (!which('virsh')) throw missingComponent('virsh', 'apt-get install libvirt-clients');
  // One virsh process for all commands when the domain name can be quoted; else (or once the session ended) one per command.
  const session = VirshSession.quotable(domain) ? new VirshSession(uri) : undefined;
  const virsh: VirshRunner = async (args, timeoutMs) => {
    if (session && !session.ended && args.every(VirshSession.quotable)) return session.run(args, timeoutMs);
    const r = await exec('virsh', ['-c', uri, ...args], { timeoutMs });
    if (r.timedOut) throw new Error(`virsh ${args[0] ?? ''}: no answer within ${timeoutMs} ms`);
    return { ok: r.code === 0, stdout: r.stdout, stderr: r.stderr };
  };
  try {
    const state = await virsh(['domstate', domain], 30_000);
    if (!state.ok) {
      throw new RestorelabError('LIVE_SOURCE_UNREACHABLE', `libvirt (${uri}) does not know domain ${domain}: ${state.stderr.trim()}`, {
        hint: 'name a defined, running domain (virsh list), and start libvirtd if it is down (scripts/libvirtd start)',
      });
    }
    if (!/running|paused/.test(state.stdout)) {
      throw new RestorelabError('LIVE_SOURCE_UNREACHABLE', `domain ${domain} is not running (${state.stdout.trim()})`, {
        hint: 'a live backup needs the VM running; back up its image files with --disk while it is shut off',
      });
    }
  } catch (err) {
    session?.close();
    throw err;
  }
  return {
    where: `libvirt domain ${domain}`,
    async execute<T>(command: string, args?: Record<string, unknown>, timeoutMs = MONITOR_TIMEOUT_MS): Promise<T> {
      // \u0027 keeps the JSON free of single quotes, so it can be quoted for virsh's shell.
      const msg = JSON.stringify(args === undefined ? { execute: command } : { execute: command, arguments: args }).replace(
        /'/g,
        '\\u0027',
      );
      const r = await virsh(['qemu-monitor-command', domain, msg], timeoutMs);
      let reply: { return?: unknown; error?: { class?: string; desc?: string } } | undefined;
      try {
        reply = JSON.parse(r.stdout) as typeof reply;
      } catch {
        reply = undefined;
      }
      if (reply?.error) throw new QmpError(command, reply.error.class ?? 'GenericError', reply.error.desc ?? 'unknown error');
      if (!r.ok || !reply) {
        // libvirt refuses some commands itself (and reports QEMU's errors on stderr in older versions).
        const said = r.stderr
          .trim()
          .replace(/^error: /gm, '')
          .replace(/\s*\n\s*/g, ': ');
        throw new QmpError(command, 'GenericError', said || 'virsh printed no reply');
      }
      return reply.return as T;
    },
    virsh,
    close: () => {
      session?.close();
      return Promise.resolve();
    },
  };
}

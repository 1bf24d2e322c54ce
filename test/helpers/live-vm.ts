/**
 * A test guest running under a QEMU the test starts itself, with plain
 * `-drive` options, a QMP socket and a guest-agent socket: the "any QEMU VM"
 * a live backup is pointed at (not a VM restorelab started). Also what the
 * live-backup tests do with the guest (guest-exec through the agent) and with
 * a restored point (e2fsck, reading files with debugfs, no mounts).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createReadStream, createWriteStream, existsSync } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import { join } from 'node:path';
import { exec, which } from '../../src/host/exec.js';
import { QgaClient, waitForAgent } from '../../src/hypervisor/qga.js';
import { QmpClient } from '../../src/hypervisor/qmp.js';
import { restoreDisk } from '../../src/backup/restore.js';
import type { Repository } from '../../src/repo/api.js';
import { guestImage } from './guests.js';

/** The guests' root partition starts at sector 2048 (docs/guests.md, Recipe). */
export const ROOT_PARTITION_OFFSET = 2048 * 512;

export interface LiveVm {
  qmp: string;
  qga: string;
  disk: string;
  pid: number;
  child: ChildProcess;
  /** Runs `sh -c script` in the guest and waits for it. */
  sh(script: string, timeoutMs?: number): Promise<{ exitcode: number; stdout: string; stderr: string }>;
  /** Starts `sh -c script` in the guest and does not wait. */
  spawnInGuest(script: string): Promise<void>;
  /** QEMU's run state through a fresh QMP connection (the backup closed its own). */
  status(): Promise<string>;
  stop(): Promise<void>;
}

export interface LiveVmOptions {
  variant?: string;
  format: 'qcow2' | 'raw';
  /** Size of the disk: the guest image is grown to it (the partition stays 64 MiB). */
  sizeBytes?: number;
  /** Wait for the guest agent (false for a guest without one). */
  agent?: boolean;
}

export async function startLiveVm(dir: string, opts: LiveVmOptions): Promise<LiveVm> {
  const qemu = which('qemu-system-x86_64');
  if (!qemu) throw new Error('qemu-system-x86_64 is missing: apt-get install qemu-system-x86');
  const base = await guestImage(opts.variant ?? 'web');
  const disk = join(dir, `disk.${opts.format}`);
  // A standalone copy (no backing file), so the VM's disk is one image like a production one.
  const conv = await exec('qemu-img', ['convert', '-f', 'raw', '-O', opts.format, base, disk], { timeoutMs: 120_000 });
  if (conv.code !== 0) throw new Error(`qemu-img convert: ${conv.stderr}`);
  if (opts.sizeBytes) {
    const r = await exec('qemu-img', ['resize', '-f', opts.format, disk, String(opts.sizeBytes)], { timeoutMs: 60_000 });
    if (r.code !== 0) throw new Error(`qemu-img resize: ${r.stderr}`);
  }
  const qmp = join(dir, 'qmp.sock');
  const qga = join(dir, 'qga.sock');
  const child = spawn(
    qemu,
    [
      '-accel',
      'tcg',
      '-m',
      '256',
      '-smp',
      '1',
      '-nodefaults',
      '-display',
      'none',
      '-no-user-config',
      '-serial',
      `file:${join(dir, 'console.log')}`,
      '-drive',
      `file=${disk},format=${opts.format},if=virtio,id=root`,
      '-qmp',
      `unix:${qmp},server=on,wait=off`,
      '-chardev',
      `socket,id=qga0,path=${qga},server=on,wait=off`,
      '-device',
      'virtio-serial',
      '-device',
      'virtserialport,chardev=qga0,name=org.qemu.guest_agent.0',
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  const deadline = Date.now() + 10_000;
  while (!existsSync(qmp)) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`qemu did not start: ${stderr}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  const stop = async (): Promise<void> => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const gone = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await gone;
  };
  try {
    if (opts.agent !== false) (await waitForAgent(qga, 300_000)).close();
  } catch (err) {
    await stop();
    throw err;
  }
  const withAgent = async <T>(f: (c: QgaClient) => Promise<T>): Promise<T> => {
    const c = await QgaClient.connect(qga, { timeoutMs: 10_000 });
    try {
      return await f(c);
    } finally {
      c.close();
    }
  };
  return {
    qmp,
    qga,
    disk,
    pid: child.pid as number,
    child,
    stop,
    sh: (script, timeoutMs = 60_000) => withAgent((c) => c.exec('/bin/sh', ['-c', script], { timeoutMs })),
    spawnInGuest: (script) =>
      withAgent(async (c) => {
        await c.execute('guest-exec', { path: '/bin/sh', arg: ['-c', script] });
      }),
    async status() {
      const q = await QmpClient.connect(qmp);
      try {
        return (await q.execute<{ status: string }>('query-status')).status;
      } finally {
        await q.close();
      }
    },
  };
}

export interface RestoredRoot {
  /** e2fsck -fn exit code (0: clean) and its output. */
  fsck: { code: number | null; out: string };
  /** File contents read with debugfs; undefined when the file is not there. */
  read(path: string): Promise<string | undefined>;
}

/** Restores a point's root disk, cuts out its ext4 partition and checks it without mounting anything. */
export async function restoredRoot(repo: Repository, point: string, dir: string, disk = 'root'): Promise<RestoredRoot> {
  for (const tool of ['e2fsck', 'debugfs']) if (!which(tool)) throw new Error(`${tool} is missing: apt-get install e2fsprogs`);
  const raw = join(dir, `${point}.raw`);
  const part = join(dir, `${point}.part`);
  await restoreDisk({ repo, point, disk, to: raw, format: 'raw' });
  await pipeline(
    createReadStream(raw, { start: ROOT_PARTITION_OFFSET, end: ROOT_PARTITION_OFFSET + 63 * 1024 * 1024 - 1 }),
    createWriteStream(part),
  );
  const f = await exec('e2fsck', ['-fn', part], { timeoutMs: 120_000 });
  return {
    fsck: { code: f.code, out: f.stdout + f.stderr },
    async read(path) {
      const r = await exec('debugfs', ['-R', `cat ${path}`, part], { timeoutMs: 30_000 });
      if (/File not found/.test(r.stderr)) return undefined;
      return r.stdout;
    },
  };
}

/** A libvirt domain's guest, through libvirt's own agent channel (`virsh qemu-agent-command`). */
export interface LibvirtGuest {
  agent<T>(command: string, args?: Record<string, unknown>): Promise<T>;
  /** Runs `sh -c script` in the guest and returns its stdout; rejects on a non-zero exit. */
  sh(script: string, timeoutMs?: number): Promise<string>;
  /** Polls guest-ping until the agent answers. */
  waitAgent(timeoutMs?: number): Promise<void>;
}

export async function virsh(uri: string, ...args: string[]): Promise<string> {
  const r = await exec('virsh', ['-c', uri, ...args], { timeoutMs: 120_000 });
  if (r.code !== 0) throw new Error(`virsh ${args.join(' ')}: ${r.stderr.trim()}`);
  return r.stdout;
}

export function libvirtGuest(uri: string, domain: string): LibvirtGuest {
  const agent = async <T>(command: string, args?: Record<string, unknown>): Promise<T> => {
    const out = await virsh(
      uri,
      'qemu-agent-command',
      domain,
      JSON.stringify(args ? { execute: command, arguments: args } : { execute: command }),
    );
    return (JSON.parse(out) as { return: T }).return;
  };
  return {
    agent,
    async sh(script, timeoutMs = 600_000) {
      const { pid } = await agent<{ pid: number }>('guest-exec', { path: '/bin/sh', arg: ['-c', script], 'capture-output': true });
      const deadline = Date.now() + timeoutMs;
      while (Date.now() < deadline) {
        const st = await agent<{ exited: boolean; exitcode?: number; 'out-data'?: string; 'err-data'?: string }>('guest-exec-status', {
          pid,
        });
        if (st.exited) {
          if (st.exitcode !== 0)
            throw new Error(`guest: ${script} exited ${st.exitcode}: ${Buffer.from(st['err-data'] ?? '', 'base64').toString()}`);
          return Buffer.from(st['out-data'] ?? '', 'base64').toString();
        }
        await new Promise((r) => setTimeout(r, 200));
      }
      throw new Error(`guest: ${script} did not finish within ${timeoutMs} ms`);
    },
    async waitAgent(timeoutMs = 300_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        try {
          await agent('guest-ping');
          return;
        } catch (err) {
          if (Date.now() > deadline) throw err;
          await new Promise((r) => setTimeout(r, 1000));
        }
      }
    },
  };
}

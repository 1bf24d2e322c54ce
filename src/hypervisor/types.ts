/**
 * The hypervisor seam: what restorelab needs from QEMU or libvirt to run a
 * recovered VM. Words:
 * - Domain: one running (or defined) VM under a driver, named by a VM name
 *   unique within the driver's state directory.
 * - Attachment: how a VM NIC reaches a network: a tap (optionally inside a
 *   lab's network namespace) or a host bridge.
 * - Heartbeat: the first answer of the guest agent to guest-ping.
 * Every method is safe to call again after a restorelab restart: drivers keep
 * their state on disk (pidfile, sockets, libvirt's own database).
 */
import type { VmDefinition } from '../vm/definition.js';
import type { QgaClient } from './qga.js';

export type DomainState = 'defined' | 'running' | 'paused' | 'stopped' | 'failed';

export interface DiskAttachment {
  /** VmDisk.name this file backs. */
  name: string;
  path: string;
  format: 'raw' | 'qcow2';
  readOnly?: boolean;
}

export type NicAttachment =
  /** A tap the caller created; `netns` names the namespace it lives in. */
  | { kind: 'tap'; mac: string; tap: string; netns?: string; model?: string }
  /** A bridge in the host namespace. */
  | { kind: 'bridge'; mac: string; bridge: string; model?: string };

export interface DomainSpec {
  vm: VmDefinition;
  disks: DiskAttachment[];
  nics: NicAttachment[];
  /** Overrides the driver's accelerator choice. */
  accel?: 'kvm' | 'tcg';
}

export interface DomainInfo {
  name: string;
  driver: string;
  state: DomainState;
  pid?: number;
  /** Why the domain is `failed`, when known. */
  reason?: string;
}

export interface Domain {
  readonly name: string;
  state(): Promise<DomainState>;
  /** Asks the guest to power off (ACPI); kills it after `timeoutMs`. */
  stop(timeoutMs?: number): Promise<void>;
  /** Powers off at once and forgets the domain (undefine); idempotent. */
  destroy(): Promise<void>;
  /** An open, synchronised guest-agent client. Caller closes it. */
  agent(timeoutMs?: number): Promise<QgaClient>;
  /** Path of the guest agent socket, for callers that poll for a heartbeat. */
  readonly agentSocket: string;
  /** Writes the screen to `path`; the format is what the driver got from QEMU. */
  screendump(path: string): Promise<'ppm' | 'png'>;
  readonly consoleLog: string;
  /**
   * The VGA text memory (32 KiB of char/attribute pairs at guest-physical
   * 0xB8000: the 80x25 screen and vgacon's scrollback, src/hypervisor/vga.ts),
   * read through the monitor. Meaningful
   * while the guest console is in text mode; in graphics mode it holds stale
   * or no text.
   */
  readVgaText(): Promise<Uint8Array>;
  /** Starts a live copy of one disk to `target`; resolves when it is in sync. */
  blockMirror(disk: string, target: string, format: 'raw' | 'qcow2'): Promise<void>;
  /** Switches the disk to its mirror target; the source is no longer used. */
  pivot(disk: string): Promise<void>;
  /**
   * Cancels a mirror of `disk` that `blockMirror` started and `pivot` did
   * not complete, so the VM stays on its source; best effort, never throws
   * (nothing to cancel is no error).
   */
  abortMirror(disk: string): Promise<void>;
  /** The pid of the QEMU process that runs the domain, while the driver can tell; undefined otherwise. */
  pid(): number | undefined;
  /**
   * Whether the guest still runs (running or paused). Cheap enough to poll
   * every second: the qemu driver asks /proc, never QMP, because QEMU's
   * monitor serves one client and a watcher must not lock out the others.
   */
  alive(): Promise<boolean>;
  /** Why a domain that is over ended ("qemu killed by SIGKILL"), when the driver knows; undefined while it runs. */
  exitReason(): Promise<string | undefined>;
}

export interface Hypervisor {
  readonly driver: 'qemu' | 'libvirt';
  /** Defines and starts a domain; fails if one of that name is running. */
  start(spec: DomainSpec): Promise<Domain>;
  /** Re-attaches to a domain started earlier (maybe by another process). */
  attach(name: string): Promise<Domain | undefined>;
  list(): Promise<DomainInfo[]>;
  /**
   * Releases what the driver holds open (libvirt: its connection, which
   * keeps the event loop alive); domains keep running. Idempotent.
   */
  close(): Promise<void>;
}

/**
 * Instant VM recovery sessions.
 *
 * Words:
 * - Recovery session: one restore point of one VM running straight from the
 *   repository: a publication of the point, served over FUSE (default),
 *   NFS or NBD, a domain under a hypervisor driver with its disks on the
 *   published `.raw` files (FUSE paths or `nfs://` URLs) or NBD exports
 *   (`nbd+unix://` URLs on the supervisor's socket), and either lab taps (inside
 *   a virtual lab) or a host bridge.
 * - Supervisor: the detached `restorelab session-supervise` process that owns
 *   the publication (FUSE is served by a living process) and watches the
 *   domain; it is the only writer of a session's state once it runs.
 * - Resources: everything a session made, recorded BEFORE it is made, so a
 *   crash leaves a record that `stop` uses to remove the leftovers.
 * - Heartbeat: the VM is up, as src/verify/heartbeat.ts decides it (stable
 *   answers of the guest agent, or of its address where the decision
 *   accepts that), the same decision a SureBackup heartbeat test makes;
 *   heartbeatSeconds is measured from the `recover` command to it.
 */

export type SessionState = 'starting' | 'running' | 'migrating' | 'migrated' | 'stopped' | 'failed';

export const ACTIVE_STATES: readonly SessionState[] = ['starting', 'running', 'migrating', 'migrated'];

export interface SessionError {
  code: string;
  message: string;
  hint?: string;
  exitCode?: number;
}

export interface SessionResources {
  /** The domain name under the driver (also the qemu driver's state directory name). */
  domain?: string;
  /** Lab taps this session created. */
  taps: { lab: string; tap: string }[];
  /** The lab, when this session brought it up (and so takes it down). */
  labCreated?: string;
  /** The publication, while it exists; `mount` is its FUSE mount (none when served over NFS). */
  publication?: { id: string; mount?: string };
  /** Migrated disk files (production storage now; never deleted by stop). */
  migratedDisks?: Record<string, string>;
}

/**
 * FUSE; our NFSv3 server run by the supervisor on the given ports: QEMU's
 * libnfs (and libvirt's network disks) find mountd and nfsd only through a
 * portmapper on 111, so these are the host's NFS ports and one NFS-served
 * session runs per host at a time (a second one gets NFS_PORT_IN_USE); or
 * our NBD server run by the supervisor on a unix socket of the session's
 * publication (as many sessions at once as the host holds), which QEMU's own
 * NBD client reads with no FUSE and no kernel in the data path.
 */
export type SessionPublish = { via: 'fuse' } | { via: 'nfs'; port: number; mountPort: number; portmapPort: number | null } | { via: 'nbd' };

export interface RecoverySession {
  id: string;
  vm: string;
  point: string;
  repo: string;
  /** Key file of an encrypted repository: its path only, for the supervisor (the record is owner-only). */
  keyFile?: string;
  driver: 'qemu' | 'libvirt';
  accel?: 'kvm' | 'tcg';
  /** Lab definition file, and the lab name it defines. */
  labFile?: string;
  lab?: string;
  /** The pool the lab's masquerade subnets are carved from (a lab worker's), when the session brings the lab up. */
  masqueradePool?: string;
  /** Host bridge for a production-network recovery. */
  network?: string;
  /** How the disks are served to the hypervisor (absent in older records: FUSE). */
  publish?: SessionPublish;
  domain: string;
  state: SessionState;
  /** ISO 8601 time the recover command started: the origin of heartbeatSeconds. */
  createdAt: string;
  updatedAt: string;
  heartbeatSeconds?: number;
  /** NIC key (`nic0`, ...) → the address the host reaches it on. */
  addresses: Record<string, string>;
  /** Disk name → the file the domain runs on (published, or the migration target). */
  disks: Record<string, string>;
  /** Disk name → virtual size in bytes (the space a migration needs). */
  diskBytes: Record<string, number>;
  supervisorPid?: number;
  /** Set by the supervisor once it accepts stop/migrate requests. */
  controlSocket?: string;
  /** The QEMU process that runs the VM, as the driver reports it (Domain.pid), recorded at bring-up. */
  qemuPid?: number;
  error?: SessionError;
  /** How the heartbeat was seen (src/verify/heartbeat.ts: agent, ip or boot-time) and its detail. */
  heartbeat?: { path: string; detail: string };
  /** FUSE access group the publication is made with (config fuse.group). */
  fuseGroup?: string;
  /**
   * What was kept of the VM when it went (src/bringup/evidence.ts): its
   * serial console log always, its last screen when the session failed.
   * Files under the session's work directory; teardown leaves them.
   */
  evidence?: { console?: string; screenshot?: string };
  resources: SessionResources;
  /** The scan `recover --scan` made of the point before anything started (docs/secure-restore.md). */
  scan?: SessionScan;
  /**
   * True when an infected point was recovered with --allow-infected: its lab
   * (`lab`, a copy of the given lab under its own name) has no uplink at all,
   * and without a lab the VM has no NIC.
   */
  quarantine?: boolean;
  /** Where the migration put the disks (state `migrated`). */
  migratedTo?: string;
  /** The VM's memory (MiB), as its definition says: what it takes of a lab worker's budget. */
  memoryMiB?: number;
  /** The lab worker that runs the session (docs/workers.md); absent for a session run where it was started. */
  worker?: string;
}

export interface SessionScan {
  verdict: 'clean' | 'infected';
  ruleset: string;
  matches: { rule: string; disk: string; partition: number; path: string; sha256: string }[];
  files: { scanned: number; cached: number };
}

/** The line `recover --json` prints (scripts depend on it). */
export interface RecoverResult {
  session: string;
  vm: string;
  state: SessionState;
  heartbeatSeconds: number;
  addresses: Record<string, string>;
  /** With --scan: the scan's verdict and matches. */
  scan?: SessionScan;
  /** With --allow-infected on an infected point: where it runs, and that nothing connects it to the host's network. */
  quarantine?: { lab: string | null; uplink: false };
}

export function recoverResult(s: RecoverySession): RecoverResult {
  return {
    session: s.id,
    vm: s.vm,
    state: s.state,
    heartbeatSeconds: s.heartbeatSeconds ?? 0,
    addresses: s.addresses,
    ...(s.scan ? { scan: s.scan } : {}),
    ...(s.quarantine ? { quarantine: { lab: s.lab ?? null, uplink: false as const } } : {}),
  };
}

export function ageSeconds(s: RecoverySession, now = Date.now()): number {
  return Math.max(0, Math.round((now - Date.parse(s.createdAt)) / 1000));
}

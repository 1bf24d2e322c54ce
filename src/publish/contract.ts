/**
 * Publishing, as the layers above it (file-level restore, instant recovery,
 * verification) see it: a restore point turned into live, writable disk
 * files, with writes going to a redo-log overlay. Who serves the files (FUSE
 * or NFS) is an option, not a different API.
 *
 * Words: a *publication* is one restore point made live; its *overlay* holds
 * every write made through it; *discard* throws the overlay away, *resume*
 * picks an existing overlay up again after a stop or a crash.
 *
 * Every publication has an *owner*: the user who published it (CLI or API),
 * a recovery session, a SureBackup run, or a file-level restore session.
 * Only its owner may stop it for good: delete its overlay, scratch files and
 * record. Someone else who needs the same point gets a publication of their
 * own (docs/publish.md, "Owners and second publications").
 */

/**
 * Who a publication belongs to. Users share theirs: any operator may stop a
 * `user` publication (the API's roles decide who is one); every other kind
 * belongs to exactly the session or run `id` names.
 */
export type PublicationOwnerKind = 'user' | 'session' | 'surebackup' | 'flr';

export interface PublicationOwner {
  kind: PublicationOwnerKind;
  /** Session or run id; for `user`, who published it (token name, or `cli`). */
  id: string;
}

export interface PublishOptions {
  /** Repository directory. */
  repo: string;
  /** Restore point id. */
  point: string;
  /** State directory (publications and overlays are persisted below it). */
  stateDir: string;
  /** Who the publication belongs to (default: a `user` publication, `cli`). */
  owner?: PublicationOwner;
  /** Mount the datastore with FUSE here (created if missing). */
  fuseDir?: string;
  /**
   * Group (name or gid) that may use the FUSE mount besides the publishing
   * user, with the owner's rights (config fuse.group, --fuse-group). Without
   * it no other user can open anything there (src/fuse/access.ts).
   */
  fuseGroup?: string;
  /** Overlay (write cache) directory; default `<stateDir>/overlays`. */
  overlayDir?: string;
  /** Overlay size limit in bytes: writes past it fail with ENOSPC. */
  overlayLimitBytes?: number;
  /** Reuse the overlay of an earlier publication of the same point, if one exists. */
  resume?: boolean;
  /** Refuse writes (file-level restore publishes read-only). */
  readOnly?: boolean;
  /** Decompressed chunk cache size in MiB (default from config). */
  cacheMiB?: number;
  /**
   * Also serve this publication over NFSv3 from this process, on these ports
   * (a recovery session's own export; `restorelab server` instead serves
   * every publication from one shared export).
   */
  nfs?: PublicationNfs;
  /**
   * Also serve the disks over NBD from this process (one export per disk,
   * named after it): on a unix socket (default), and on TCP when `tcp` is
   * given. QEMU and libvirt then boot from it with no FUSE in the data path.
   */
  nbd?: PublicationNbd;
}

export interface PublicationNbd {
  /**
   * The unix socket (mode 0600, or 0660 with `fuseGroup`'s group). Default
   * `<stateDir>/publications/<id>/nbd.sock`, or, when that path is longer
   * than a socket address holds (107 bytes), one in a private directory
   * under the system's temporary directory.
   */
  socket?: string;
  /** Also listen on TCP here (port 0: any free port). Unauthenticated: bind to loopback or a trusted network. */
  /** `allow`: client CIDRs let in over TCP (default loopback only: NBD has no access control of its own). */
  tcp?: { host: string; port: number; allow?: string[] };
}

export interface PublicationNfs {
  port: number;
  mountPort: number;
  /** Our portmapper's port, or null for none (URLs then carry the ports). */
  portmapPort: number | null;
  /** Listen address, also put in the URLs (default 127.0.0.1: a hypervisor on this host). */
  listen?: string;
  /** Client CIDRs allowed to mount (default 127.0.0.0/8). */
  allow?: string[];
}

export interface PublicationInfo {
  /**
   * Publication id (stable; names the overlay, the state directory and the
   * datastore directory): `<vm>-<point>`, or `<vm>-<point>.<n>` for a second
   * publication of a point someone else already holds.
   */
  id: string;
  /** Directory name inside the datastore: the id. */
  name: string;
  owner: PublicationOwner;
  point: string;
  vm: string;
  /** `<fuseDir>/<name>` when mounted with FUSE. */
  path?: string;
  /** Disk name → absolute path of `<disk>.raw` on the FUSE mount. */
  disks: Record<string, string>;
  /** Disk name → `nfs://` URL of `<disk>.raw`, when served over NFS (PublishOptions.nfs). */
  urls?: Record<string, string>;
  /**
   * Disk name → NBD URL of its export, when served over NBD
   * (PublishOptions.nbd): `nbd://HOST:PORT/NAME` with `nbd.tcp`, else
   * `nbd+unix:///NAME?socket=PATH`. Both forms are what qemu-img,
   * qemu-system-x86_64 and nbdinfo take as is.
   */
  nbd?: Record<string, string>;
  /** The NBD unix socket, when served over NBD. */
  nbdSocket?: string;
}

export interface RunningPublication extends PublicationInfo {
  /**
   * Resolves, with why, if the publication stops being served without
   * close(): its shared publisher (shared-publisher.ts) stopped or crashed.
   * Absent for a publication served by the caller's own process.
   */
  lost?: Promise<string>;
  /**
   * Unmounts and stops serving. With `discard`, the overlay and scratch files
   * are deleted; otherwise they are kept for a later `resume`.
   */
  close(options?: { discard?: boolean }): Promise<void>;
}

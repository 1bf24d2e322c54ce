/**
 * QEMU block-layer work of a live backup, over a BlockMonitor.
 *
 * Words:
 * - *disk node*: the top block node of a VM disk (`query-block`'s
 *   `inserted.node-name`): what the guest writes to, and what carries our
 *   dirty bitmaps.
 * - *fleecing node*: a temporary qcow2 whose backing is the disk node. A
 *   `blockdev-backup sync=none` job from the disk node into it copies every
 *   cluster the guest is about to overwrite into it first (copy before
 *   write), so reading the fleecing node gives the disk as it was when the
 *   job started: the point-in-time view. QEMU's iotest 222 is the reference.
 * - *export*: the fleecing node served read-only over NBD on a unix socket
 *   in our private work directory, with the previous point's (disabled)
 *   bitmap as metadata context `qemu:dirty-bitmap:<name>`.
 *
 * Everything we add is named `restorelab-...`; `sweep` removes what a killed
 * backup left (exports, jobs, nodes), so it never blocks the next one.
 */
import { join } from 'node:path';
import { rm } from 'node:fs/promises';
import { exec } from '../../host/exec.js';
import { qemuImg } from '../../ingest/qemu-img.js';
import { badInput, RestorelabError } from '../../errors.js';
import type { VmDefinition } from '../../vm/definition.js';
import type { BlockMonitor } from './monitor.js';

export const NAME_PREFIX = 'restorelab-';

export interface LiveDisk {
  /** The definition's disk name. */
  name: string;
  /** 0-based position, used in our node/job/export names (node names are short and ASCII). */
  slot: number;
  node: string;
  /** The format QEMU opened the image with (the driver of the disk node). */
  format: string;
  size: number;
  /** The image file, for messages. */
  file: string;
}

export interface BitmapInfo {
  name: string;
  recording: boolean;
  busy: boolean;
  persistent: boolean;
  inconsistent?: boolean;
  count: number;
  granularity: number;
}

interface QueryBlock {
  device: string;
  qdev?: string;
  removable: boolean;
  inserted?: { file: string; 'node-name': string; drv: string; image: { 'virtual-size': number; filename: string; format: string } };
}

/**
 * The VM's disks in definition order. A definition disk with an `image`
 * matches the QEMU disk opened from that file; the others take the
 * remaining non-removable disks in QEMU's order. The format QEMU uses must
 * be the definition's (a qcow2 named raw is refused).
 */
export async function findDisks(mon: BlockMonitor, vm: VmDefinition): Promise<LiveDisk[]> {
  const blocks = (await mon.execute<QueryBlock[]>('query-block')).filter((b) => b.inserted && !b.removable);
  const free = [...blocks];
  const take = (i: number): QueryBlock => free.splice(i, 1)[0] as QueryBlock;
  const out: LiveDisk[] = [];
  for (const [slot, d] of vm.disks.entries()) {
    const byFile = d.image ? free.findIndex((b) => b.inserted?.image.filename === d.image || b.inserted?.file === d.image) : -1;
    if (free.length === 0) {
      throw badInput(
        'LIVE_DISK_UNMATCHED',
        `${mon.where} has ${blocks.length} disk(s), but VM ${vm.name} defines ${vm.disks.length}: nothing left for disk "${d.name}"`,
        'give the VM definition of this VM (its disks in the order QEMU has them: query-block), or add "image" to each disk',
      );
    }
    const b = take(byFile >= 0 ? byFile : 0);
    const ins = b.inserted as NonNullable<QueryBlock['inserted']>;
    const format = ins.image.format || ins.drv;
    if (d.format && d.format !== format) {
      throw badInput(
        'IMAGE_FORMAT_MISMATCH',
        `disk "${d.name}" of VM ${vm.name} is a ${format} image in QEMU (${ins.image.filename}), but the VM definition says ${d.format}`,
        `set "format": "${format}" for disk ${d.name} in the VM definition`,
      );
    }
    out.push({ name: d.name, slot, node: ins['node-name'], format, size: ins.image['virtual-size'], file: ins.image.filename });
  }
  return out;
}

/** One entry of `query-named-block-nodes` (flat). */
export interface NamedNode {
  'node-name': string;
  'dirty-bitmaps'?: BitmapInfo[];
}

export function queryNodes(mon: BlockMonitor): Promise<NamedNode[]> {
  return mon.execute<NamedNode[]>('query-named-block-nodes', { flat: true });
}

/** The named bitmaps of a node; from `nodes` when the caller has a current listing (one monitor round trip less). */
export async function bitmapsOf(mon: BlockMonitor, node: string, nodes?: NamedNode[]): Promise<BitmapInfo[]> {
  const all = nodes ?? (await queryNodes(mon));
  // A running block job's copy-before-write filter holds an anonymous bitmap: only named ones are anybody's.
  return (all.find((n) => n['node-name'] === node)?.['dirty-bitmaps'] ?? []).filter((b) => typeof b.name === 'string');
}

export const names = {
  fleece: (d: LiveDisk): string => `${NAME_PREFIX}fleece-${d.slot}`,
  job: (d: LiveDisk): string => `${NAME_PREFIX}job-${d.slot}`,
  exportId: (d: LiveDisk): string => `${NAME_PREFIX}export-${d.slot}`,
  exportName: (d: LiveDisk): string => `${NAME_PREFIX}${d.name}`,
};

/** Polls until `gone()` holds; the monitor's removals of exports and jobs finish asynchronously. */
async function until(what: string, gone: () => Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let delay = 20;
  while (!(await gone())) {
    if (Date.now() > deadline)
      throw new RestorelabError('LIVE_CLEANUP_FAILED', `${what} did not go away within ${timeoutMs} ms`, {
        hint: 'look at the VM with query-block-jobs / query-block-exports; the next backup retries the cleanup',
      });
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 200);
  }
}

const ours = (id: string): boolean => id.startsWith(NAME_PREFIX);

/*
 * The removals below take the ids to remove (a backup's own) or a filter to
 * apply to a listing (the sweep), and poll only after they deleted
 * something: every monitor round trip through libvirt is a `virsh` command.
 */

async function removeExports(mon: BlockMonitor, which: string[] | ((id: string) => boolean)): Promise<void> {
  const list = async (): Promise<string[]> =>
    (await mon.execute<{ id: string }[]>('query-block-exports'))
      .map((e) => e.id)
      .filter(typeof which === 'function' ? which : (id) => which.includes(id));
  const ids = typeof which === 'function' ? await list() : which;
  if (ids.length === 0) return;
  for (const id of ids) await mon.execute('block-export-del', { id, mode: 'hard' }).catch(() => undefined);
  await until('our NBD exports', async () => (await list()).length === 0);
}

async function removeJobs(mon: BlockMonitor, which: string[] | ((id: string) => boolean)): Promise<void> {
  const list = async (): Promise<{ id: string; status: string }[]> =>
    (await mon.execute<{ id: string; status: string }[]>('query-jobs')).filter((j) =>
      typeof which === 'function' ? which(j.id) : which.includes(j.id),
    );
  // Our own jobs are running (auto-dismiss): cancel them without asking first; a sweep finds what it must end.
  const jobs = typeof which === 'function' ? await list() : which.map((id) => ({ id, status: 'running' }));
  if (jobs.length === 0) return;
  for (const j of jobs) {
    if (j.status === 'concluded') await mon.execute('job-dismiss', { id: j.id }).catch(() => undefined);
    else await mon.execute('block-job-cancel', { device: j.id, force: true }).catch(() => undefined);
  }
  await until('our block jobs', async () => {
    const left = await list();
    for (const j of left.filter((x) => x.status === 'concluded')) await mon.execute('job-dismiss', { id: j.id }).catch(() => undefined);
    return left.length === 0;
  });
}

/** Deletes nodes (a qcow2 fleecing node's protocol child, named by QEMU, goes with it); returns the listing when nothing was deleted. */
async function removeNodes(mon: BlockMonitor, which: string[] | ((name: string) => boolean)): Promise<NamedNode[] | undefined> {
  let nodes: NamedNode[] | undefined;
  let names: string[];
  if (typeof which === 'function') {
    nodes = await queryNodes(mon);
    names = nodes.map((x) => x['node-name']).filter(which);
  } else {
    names = which;
  }
  for (const n of names) await mon.execute('blockdev-del', { 'node-name': n });
  return names.length === 0 ? nodes : undefined;
}

/**
 * Removes every export, job and node named restorelab-* (what a killed
 * backup leaves). `nodes`: the block nodes as they are now, when the sweep
 * deleted none (its last listing, so the caller need not ask again).
 */
export async function sweep(mon: BlockMonitor): Promise<{ removed: string[]; nodes?: NamedNode[] }> {
  const removed: string[] = [];
  const note =
    (kind: string) =>
    (id: string): boolean => {
      if (!ours(id)) return false;
      removed.push(`${kind} ${id}`);
      return true;
    };
  await removeExports(mon, note('export'));
  await removeJobs(mon, note('job'));
  const nodes = await removeNodes(mon, note('node'));
  return nodes ? { removed, nodes } : { removed };
}

/**
 * The fleecing nodes of one backup, from creation to removal. `close()`
 * undoes whatever was done, in reverse, and is safe after any failure.
 */
export class Fleece {
  private exported = false;
  private serverStarted = false;
  private jobsStarted = false;
  private nodesAdded: LiveDisk[] = [];

  constructor(
    private readonly mon: BlockMonitor,
    private readonly disks: LiveDisk[],
    private readonly dir: string,
  ) {}

  get socket(): string {
    return join(this.dir, 'nbd.sock');
  }

  private image(d: LiveDisk): string {
    return join(this.dir, `fleece-${d.slot}.qcow2`);
  }

  /**
   * Creates the empty fleecing images (qemu-img, no monitor command: it can
   * run while the monitor answers other questions). Before the freeze: it takes time.
   */
  async createImages(): Promise<void> {
    await Promise.all(
      this.disks.map(async (d) => {
        const r = await exec(qemuImg(), ['create', '-q', '-f', 'qcow2', this.image(d), String(d.size)], { timeoutMs: 60_000 });
        if (r.code !== 0)
          throw new RestorelabError('LIVE_BACKUP_FAILED', `cannot create the fleecing image ${this.image(d)}: ${r.stderr.trim()}`, {
            hint: 'check free space in the temp directory (TMPDIR)',
          });
      }),
    );
  }

  /** Adds the images (createImages) as nodes over the disk nodes. */
  async addNodes(): Promise<void> {
    for (const d of this.disks) {
      await this.mon.execute('blockdev-add', {
        driver: 'qcow2',
        'node-name': names.fleece(d),
        file: { driver: 'file', filename: this.image(d) },
        backing: d.node,
      });
      this.nodesAdded.push(d);
    }
  }

  /** The copy-before-write jobs, as transaction actions (the caller adds the bitmap actions to the same transaction). */
  backupActions(): { type: string; data: Record<string, unknown> }[] {
    return this.disks.map((d) => ({
      type: 'blockdev-backup',
      data: { 'job-id': names.job(d), device: d.node, target: names.fleece(d), sync: 'none', 'auto-dismiss': true },
    }));
  }

  markJobsStarted(): void {
    this.jobsStarted = true;
  }

  /** Serves the fleecing nodes over NBD; `bitmaps[disk]` is exported as qemu:dirty-bitmap:<name>. */
  async export(bitmaps: Record<string, string | undefined>): Promise<void> {
    try {
      await this.mon.execute('nbd-server-start', { addr: { type: 'unix', data: { path: this.socket } } });
    } catch (err) {
      if (!/already running/i.test((err as Error).message)) throw err;
      // A server with no exports left after the sweep is a killed backup's: take it over. One with exports is someone else's.
      const others = await this.mon.execute<{ id: string }[]>('query-block-exports');
      if (others.length > 0) {
        throw new RestorelabError(
          'LIVE_NBD_BUSY',
          `${this.mon.where} already runs an NBD server with exports (${others.map((e) => e.id).join(', ')}) that are not restorelab's`,
          { hint: 'QEMU has one NBD server; stop the other user of it (nbd-server-stop) or wait for it to finish' },
        );
      }
      await this.mon.execute('nbd-server-stop');
      await this.mon.execute('nbd-server-start', { addr: { type: 'unix', data: { path: this.socket } } });
    }
    this.serverStarted = true;
    for (const d of this.disks) {
      const bitmap = bitmaps[d.name];
      await this.mon.execute('block-export-add', {
        type: 'nbd',
        id: names.exportId(d),
        'node-name': names.fleece(d),
        name: names.exportName(d),
        writable: false,
        ...(bitmap ? { bitmaps: [bitmap] } : {}),
      });
      this.exported = true;
    }
  }

  /** Removes exports, server, jobs, nodes and images: in that order, each step tried even if one before failed. */
  async close(): Promise<void> {
    const errors: unknown[] = [];
    const step = async (f: () => Promise<unknown>): Promise<void> => {
      try {
        await f();
      } catch (e) {
        errors.push(e);
      }
    };
    if (this.exported) await step(() => removeExports(this.mon, this.disks.map(names.exportId)));
    if (this.serverStarted) await step(() => this.mon.execute('nbd-server-stop'));
    if (this.jobsStarted) await step(() => removeJobs(this.mon, this.disks.map(names.job)));
    if (this.nodesAdded.length > 0) await step(() => removeNodes(this.mon, this.nodesAdded.map(names.fleece)));
    await step(() => Promise.all(this.disks.map((d) => rm(this.image(d), { force: true }))));
    this.exported = this.serverStarted = this.jobsStarted = false;
    this.nodesAdded = [];
    if (errors.length > 0) throw errors[0];
  }
}

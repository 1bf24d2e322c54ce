/**
 * Live backup: a restore point of a running VM, without stopping it
 * (docs/backup.md, "Live backup").
 *
 * 1. Claim the work directory (one live backup per VM), open the monitor,
 *    match the VM definition's disks to QEMU's, remove what a killed
 *    backup left (sweep, tidyBitmaps), judge each disk's bitmap (cbt.ts).
 * 2. Add the fleecing nodes, freeze the guest (quiesce.ts), and in one QMP
 *    transaction: disable the previous point's bitmap, add this point's,
 *    start the copy-before-write jobs. Thaw.
 * 3. Export the fleecing nodes over NBD and back them up with the engine:
 *    only chunks the previous bitmap marks are read, the rest come from the
 *    previous point's index.
 * 4. Committed: drop the previous bitmap. Failed: fold this point's bitmap
 *    back into the previous one, so the next backup still sees every write.
 *    Either way remove exports, jobs and nodes.
 */
import { resolve } from 'node:path';
import type { Repository } from '../../repo/api.js';
import type { VmDefinition } from '../../vm/definition.js';
import type { Consistency, PointCapture, RestorePoint } from '../../repo/contract.js';
import type { CodecInit } from '../chunk-pool.js';
import { backupImages, startChunkPool, type BackupProgress, type ImageToBackUp } from '../engine.js';
import type { ChunkPool } from '../chunk-pool.js';
import { NbdClient } from '../../nbd/client.js';
import { BASE_ALLOCATION, NBD_STATE_DIRTY } from '../../nbd/constants.js';
import { NbdImageSource } from '../../ingest/nbd-source.js';
import { openLibvirtMonitor, openQmpMonitor, type BlockMonitor } from './monitor.js';
import { bitmapsOf, findDisks, Fleece, names, sweep, type LiveDisk, type NamedNode } from './blockdev.js';
import { bitmapName, changedChunks, judgeBitmap, tidyBitmaps, type CbtVerdict } from './cbt.js';
import { libvirtFreezer, qgaFreezer, quiesced, type HostScripts } from './quiesce.js';
import { claimWorkDir } from './workdir.js';
import { tracePhase } from '../../host/trace.js';

export type { HostScripts } from './quiesce.js';
export type LiveSource = { kind: 'qmp'; qmp: string; qga?: string } | { kind: 'libvirt'; domain: string; uri?: string };

export interface LiveBackupOptions {
  repo: Repository;
  vm: VmDefinition;
  source: LiveSource;
  codecInit?: CodecInit;
  /** Wanted. */
  consistency: Consistency;
  /** true: fail instead of falling back to crash-consistent. */
  requireConsistency?: boolean;
  hostScripts?: HostScripts;
  /**
   * The source's monitor, which the caller started opening (openLiveMonitor)
   * so that it opens while the repository does; default: opened here, after
   * the work directory is claimed. Closed here either way. Only for libvirt
   * sources: many clients may talk to libvirt at once, while a QMP socket
   * serves one, which a running backup of the same VM may hold.
   */
  monitor?: Promise<BlockMonitor>;
  /**
   * Called once the point is committed, and run while the backup removes
   * what it added to QEMU; awaited before backupLiveVm returns, and what it
   * rejects with is thrown then (the point stays committed).
   */
  onCommitted?: (point: RestorePoint) => Promise<void>;
  onProgress?: (p: BackupProgress) => void;
  onWarning?: (m: string) => void;
  signal?: AbortSignal;
}

export interface LiveBackupResult {
  /** point.consistency is the consistency achieved. */
  point: RestorePoint;
  changedBlockTracking: { used: boolean; reason: string };
}

const DEFAULT_LIBVIRT_URI = 'qemu:///system';

function sourceKey(s: LiveSource): string {
  return s.kind === 'qmp' ? `qmp:${resolve(s.qmp)}` : `libvirt:${s.uri ?? DEFAULT_LIBVIRT_URI}:${s.domain}`;
}

function sourceLabel(s: LiveSource): string {
  return s.kind === 'qmp' ? `live qmp:${resolve(s.qmp)}` : `live libvirt:${s.domain}`;
}

/** Opens the monitor of a live source; backupLiveVm takes it as `monitor`. */
export function openLiveMonitor(source: LiveSource): Promise<BlockMonitor> {
  const opening = source.kind === 'qmp' ? openQmpMonitor(source.qmp) : openLibvirtMonitor(source.domain, source.uri ?? DEFAULT_LIBVIRT_URI);
  // Awaited later (or closed unused): a refusal must not count as unhandled meanwhile.
  opening.catch(() => undefined);
  return opening;
}

/** A monitor opened for nothing (the backup failed before it was used) is closed once it is open. */
export function discardMonitor(monitor: Promise<BlockMonitor> | undefined): void {
  void monitor?.then(
    (m) => m.close(),
    () => undefined,
  );
}

export async function backupLiveVm(o: LiveBackupOptions): Promise<LiveBackupResult> {
  const { repo, vm, source } = o;
  tracePhase('live: start');
  // The sync at the end then finds only this backup's writes dirty, and no fork of node on its path.
  repo.chunks.prepareSync?.();
  let work: Awaited<ReturnType<typeof claimWorkDir>>;
  try {
    work = await claimWorkDir(sourceKey(source), o.onWarning);
  } catch (err) {
    discardMonitor(o.monitor);
    throw err;
  }
  let mon: BlockMonitor | undefined;
  // Started now, so the hashing threads boot while we wait on the monitor and the guest freeze.
  const pool = startChunkPool(repo, o.codecInit);
  try {
    // A QMP socket serves one client: it is connected to only once the work directory says no other backup holds it.
    mon = await (o.monitor ?? openLiveMonitor(source));
    tracePhase('live: monitor open');
    // Sweep first: a killed backup's job still has its copy-before-write filter on top of the disk node.
    const swept = await sweep(mon);
    if (swept.removed.length > 0) o.onWarning?.(`removed what an interrupted backup left in ${mon.where}: ${swept.removed.join(', ')}`);
    tracePhase('live: swept');
    const disks = await findDisks(mon, vm);
    tracePhase('live: disks matched');
    const fleece = new Fleece(mon, disks, work.dir);
    // qemu-img makes the fleecing images while the monitor answers about bitmaps.
    const [judged, made] = await Promise.allSettled([judgeDisks(mon, repo, vm, disks, swept.nodes, o.onWarning), fleece.createImages()]);
    if (judged.status === 'rejected' || made.status === 'rejected') {
      await fleece.close().catch(() => undefined);
      throw judged.status === 'rejected' ? judged.reason : (made as PromiseRejectedResult).reason;
    }
    tracePhase('live: bitmaps judged, fleecing images made');
    return await capture(o, mon, disks, judged.value, fleece, pool);
  } finally {
    await Promise.all([pool.close(), mon?.close()]);
    await work.release();
  }
}

async function judgeDisks(
  mon: BlockMonitor,
  repo: Repository,
  vm: VmDefinition,
  disks: LiveDisk[],
  nodes: NamedNode[] | undefined,
  onWarning?: (m: string) => void,
): Promise<CbtVerdict[]> {
  const latest = (await repo.listPoints({ vm: vm.name })).sort((a, b) => a.time.localeCompare(b.time)).at(-1);
  const expected = latest?.capture && !latest.damaged ? bitmapName(repo.config.id, latest.time) : undefined;
  const out: CbtVerdict[] = [];
  for (const d of disks) {
    const found = await bitmapsOf(mon, d.node, nodes);
    const tidied = await tidyBitmaps(mon, d, found, repo.config.id, expected);
    if (tidied.length > 0)
      onWarning?.(
        `disk ${d.name}: removed stale restorelab bitmap(s) ${tidied.join(', ')}${expected ? ` (merged into ${expected} when it exists)` : ''}`,
      );
    const bitmaps = tidied.length > 0 ? await bitmapsOf(mon, d.node) : found;
    out.push(await judgeBitmap({ vmName: vm.name, disk: d, latest, bitmaps, repoId: repo.config.id, readIndex: (x) => repo.readIndex(x) }));
  }
  return out;
}

async function capture(
  o: LiveBackupOptions,
  mon: BlockMonitor,
  disks: LiveDisk[],
  verdicts: CbtVerdict[],
  fleece: Fleece,
  pool: ChunkPool,
): Promise<LiveBackupResult> {
  const { repo, vm, source } = o;
  const clients: NbdClient[] = [];
  let created: Record<string, string> = {};
  let committed = false;
  try {
    o.signal?.throwIfAborted();
    await fleece.addNodes();
    tracePhase('live: fleecing nodes added');
    const q = await quiesced(
      {
        wanted: o.consistency,
        ...(o.requireConsistency ? { requireConsistency: true } : {}),
        ...(o.hostScripts ? { hostScripts: o.hostScripts } : {}),
        ...(source.kind === 'libvirt'
          ? { freezer: () => libvirtFreezer(source.domain, mon.virsh ?? noVirsh) }
          : source.qga
            ? { freezer: () => qgaFreezer(source.qga as string) }
            : { noAgentReason: 'no guest agent socket given (--qga)' }),
        scriptEnv: { RESTORELAB_VM: vm.name, RESTORELAB_CONSISTENCY: o.consistency },
        ...(o.onWarning ? { onWarning: o.onWarning } : {}),
      },
      async () => {
        const time = new Date().toISOString();
        const name = bitmapName(repo.config.id, time);
        const actions: { type: string; data: Record<string, unknown> }[] = [];
        disks.forEach((d, i) => {
          const v = verdicts[i] as CbtVerdict;
          if (v.use) actions.push({ type: 'block-dirty-bitmap-disable', data: { node: d.node, name: v.bitmap } });
          actions.push({ type: 'block-dirty-bitmap-add', data: { node: d.node, name, persistent: d.format === 'qcow2' } });
        });
        created = Object.fromEntries(disks.map((d) => [d.name, name]));
        fleece.markJobsStarted();
        await mon.execute('transaction', { actions: [...actions, ...fleece.backupActions()] });
        return time;
      },
    );
    tracePhase('live: frozen, transaction, thawed');
    o.signal?.throwIfAborted();
    await fleece.export(
      Object.fromEntries(
        disks.map((d, i) => {
          const v = verdicts[i] as CbtVerdict;
          return [d.name, v.use ? v.bitmap : undefined];
        }),
      ),
    );
    tracePhase('live: exported');
    const images: ImageToBackUp[] = [];
    const changedCounts: string[] = [];
    for (const [i, d] of disks.entries()) {
      const v = verdicts[i] as CbtVerdict;
      const dirtyContext = v.use ? `qemu:dirty-bitmap:${v.bitmap}` : undefined;
      const client = await NbdClient.connect({
        socketPath: fleece.socket,
        exportName: names.exportName(d),
        metaContexts: [BASE_ALLOCATION, ...(dirtyContext ? [dirtyContext] : [])],
      });
      clients.push(client);
      const image: ImageToBackUp = {
        name: d.name,
        source: new NbdImageSource(
          `VM ${vm.name} disk ${d.name} (${d.file})`,
          d.format,
          client,
          () => client.close(),
          "the VM's QEMU could not read its own disk there; look at its log",
        ),
      };
      if (v.use && dirtyContext) {
        const dirty: { offset: number; length: number }[] = [];
        for await (const e of client.extents(dirtyContext))
          if (e.flags & NBD_STATE_DIRTY) dirty.push({ offset: e.offset, length: e.length });
        const changed = changedChunks(dirty, repo.config.chunkSize, client.size);
        image.reuse = { index: v.index, changed };
        changedCounts.push(`${d.name}: ${changed.reduce((n, x) => n + x, 0)} of ${changed.length} chunks changed`);
      }
      images.push(image);
    }
    tracePhase('live: NBD connected, dirty extents read');
    const cbt = summarize(disks, verdicts, changedCounts);
    const point = await backupImages({
      repo,
      vm,
      images,
      time: q.value,
      source: sourceLabel(source),
      consistency: q.achieved,
      pool,
      ...(o.onProgress ? { onProgress: o.onProgress } : {}),
      ...(o.onWarning ? { onWarning: o.onWarning } : {}),
      ...(o.signal ? { signal: o.signal } : {}),
      capture: {
        kind: source.kind,
        consistencyWanted: o.consistency,
        ...(q.reason ? { consistencyReason: q.reason } : {}),
        ...(q.freezeMs !== undefined ? { freezeMs: q.freezeMs } : {}),
        changedBlockTracking: cbt,
        bitmaps: created,
      } satisfies PointCapture,
    });
    committed = true;
    tracePhase('live: committed');
    // The caller's own work on the point (the CLI's catalog) runs while QEMU's nodes are removed.
    const after = o.onCommitted?.(point);
    after?.catch(() => undefined);
    // The previous point's bitmaps have served; the new point's keep recording for the next backup.
    await closeAll(clients);
    await fleece
      .close()
      .catch((err: Error) =>
        o.onWarning?.(`the backup is committed, but removing its QEMU nodes failed (the next backup retries): ${err.message}`),
      );
    for (const [i, d] of disks.entries()) {
      const v = verdicts[i] as CbtVerdict;
      if (v.use)
        await mon
          .execute('block-dirty-bitmap-remove', { node: d.node, name: v.bitmap })
          .catch((err: Error) => o.onWarning?.(`could not remove the used bitmap ${v.bitmap}: ${err.message}`));
    }
    tracePhase('live: QEMU nodes removed');
    await after;
    return { point, changedBlockTracking: cbt };
  } finally {
    if (!committed) {
      await closeAll(clients);
      await fleece.close().catch(() => undefined);
      await restoreBitmaps(mon, disks, verdicts, created);
    }
  }
}

/**
 * After a failed backup: the previous point's bitmap was disabled and this
 * point's started recording; fold the new one into the old and re-enable it,
 * so the next backup still sees every write since the previous point.
 */
async function restoreBitmaps(
  mon: BlockMonitor,
  disks: LiveDisk[],
  verdicts: CbtVerdict[],
  created: Record<string, string>,
): Promise<void> {
  for (const [i, d] of disks.entries()) {
    const mine = created[d.name];
    if (!mine) continue;
    const v = verdicts[i] as CbtVerdict;
    const present = await bitmapsOf(mon, d.node).catch(() => []);
    const has = (n: string): boolean => present.some((b) => b.name === n);
    try {
      if (v.use && has(v.bitmap) && has(mine))
        await mon.execute('block-dirty-bitmap-merge', { node: d.node, target: v.bitmap, bitmaps: [mine] });
      if (v.use && has(v.bitmap)) await mon.execute('block-dirty-bitmap-enable', { node: d.node, name: v.bitmap });
      if (has(mine)) await mon.execute('block-dirty-bitmap-remove', { node: d.node, name: mine });
    } catch {
      // The next backup's tidyBitmaps does the same from what it finds.
    }
  }
}

const noVirsh = (): never => {
  throw new Error('the libvirt monitor has no virsh session');
};

async function closeAll(clients: NbdClient[]): Promise<void> {
  await Promise.allSettled(clients.splice(0).map((c) => c.close()));
}

function summarize(disks: LiveDisk[], verdicts: CbtVerdict[], changed: string[]): { used: boolean; reason: string } {
  const unused = verdicts
    .map((v, i) => (v.use ? undefined : `${(disks[i] as LiveDisk).name}: ${v.reason}`))
    .filter((x): x is string => x !== undefined);
  if (unused.length === 0) {
    const v = verdicts[0] as CbtVerdict & { use: true };
    return { used: true, reason: `dirty bitmap ${v.bitmap} of the previous point: ${changed.join(', ')}` };
  }
  return { used: false, reason: `whole disk read: ${unused.join('; ')}` };
}

/**
 * Changed block tracking (CBT) with QEMU dirty bitmaps.
 *
 * Each live backup creates, in the same transaction that takes the
 * point-in-time view, one bitmap per disk named for the point it belongs to:
 * `restorelab-<repository id>-<point time>`. From then on QEMU records in it
 * every block the guest writes. The next backup of the same VM into the same
 * repository disables it in its own transaction (so it covers exactly the
 * writes between the two points), reads only the chunks it marks, takes the
 * rest from the previous point's index, and removes it once the new point is
 * committed. qcow2 disks get persistent bitmaps (they survive a clean VM
 * restart), raw disks in-memory ones (gone with the QEMU process).
 *
 * A bitmap is trusted only when all of these hold; otherwise the whole disk
 * is read and the reason is reported ("CBT reset"):
 * - the VM's latest point in this repository exists and is not damaged;
 * - the bitmap named for exactly that point is there (we created it; a
 *   bitmap of any other name is never used);
 * - QEMU does not flag it inconsistent (a crash while it was persistent) or
 *   busy, and it is recording;
 * - the disk is in the point, with the same size, and its index reads.
 */
import type { FixedIndex } from '../../repo/api.js';
import type { RestorePoint } from '../../repo/contract.js';
import type { BitmapInfo, LiveDisk } from './blockdev.js';
import { NAME_PREFIX } from './blockdev.js';
import type { BlockMonitor } from './monitor.js';

/** The part of the name that says "ours, in this repository". */
export function bitmapPrefix(repoId: string): string {
  return `${NAME_PREFIX}${repoId.replace(/[^A-Za-z0-9]/g, '').slice(0, 12)}-`;
}

/** The bitmap that belongs to the point taken at `time` (ISO 8601). */
export function bitmapName(repoId: string, time: string): string {
  return bitmapPrefix(repoId) + time.replace(/[-:.]/g, '');
}

export type CbtVerdict = { use: true; bitmap: string; index: FixedIndex } | { use: false; reason: string };

export interface JudgeInput {
  vmName: string;
  disk: LiveDisk;
  /** The VM's latest point in the repository (damaged or not), if any. */
  latest: RestorePoint | undefined;
  bitmaps: BitmapInfo[];
  repoId: string;
  readIndex: (digest: string) => Promise<FixedIndex>;
}

/** Whether the previous point's bitmap on this disk may be used; see the module doc for the rules. */
export async function judgeBitmap(i: JudgeInput): Promise<CbtVerdict> {
  const { latest, disk } = i;
  if (!latest) return { use: false, reason: `no earlier restore point of ${i.vmName}: first backup reads the whole disk` };
  if (latest.damaged) return { use: false, reason: `the latest point ${latest.id} is damaged: not a base to build on` };
  const expected = bitmapName(i.repoId, latest.time);
  if (!latest.capture)
    return { use: false, reason: `the latest point ${latest.id} was not a live backup: no bitmap tracks changes since it` };
  const bm = i.bitmaps.find((b) => b.name === expected);
  if (!bm) {
    const why =
      disk.format === 'qcow2'
        ? 'VM restarted after a crash, or the bitmap was removed?'
        : 'VM restarted? (raw disks keep it in memory only)';
    return { use: false, reason: `bitmap ${expected} of point ${latest.id} missing on disk ${disk.name}: ${why}` };
  }
  if (bm.inconsistent)
    return { use: false, reason: `bitmap ${expected} on disk ${disk.name} is inconsistent (QEMU stopped without saving it)` };
  if (bm.busy) return { use: false, reason: `bitmap ${expected} on disk ${disk.name} is in use by another operation` };
  if (!bm.recording)
    return { use: false, reason: `bitmap ${expected} on disk ${disk.name} was not recording: writes may be missing from it` };
  const prev = latest.disks.find((d) => d.name === disk.name);
  if (!prev) return { use: false, reason: `disk ${disk.name} is not in the latest point ${latest.id}` };
  if (prev.size !== disk.size)
    return { use: false, reason: `disk ${disk.name} is ${disk.size} bytes now, ${prev.size} in point ${latest.id}` };
  let index: FixedIndex;
  try {
    index = await i.readIndex(prev.indexDigest);
  } catch (err) {
    return { use: false, reason: `the index of disk ${disk.name} in point ${latest.id} is unreadable (${(err as Error).message})` };
  }
  return { use: true, bitmap: expected, index };
}

/**
 * Tidies our bitmaps before a backup. A killed backup leaves the bitmap of
 * the point it never committed (recording), and the previous point's one
 * disabled: their union is every write since the previous point, so the
 * leftovers are merged into the expected bitmap, which recording again, is
 * as good as never interrupted. Merging only ever adds dirty blocks (more to
 * read, never less). Bitmaps of other repositories are left alone.
 */
export async function tidyBitmaps(
  mon: BlockMonitor,
  disk: LiveDisk,
  bitmaps: BitmapInfo[],
  repoId: string,
  expected: string | undefined,
): Promise<string[]> {
  const prefix = bitmapPrefix(repoId);
  const keep = expected ? bitmaps.find((b) => b.name === expected && !b.inconsistent && !b.busy) : undefined;
  const leftovers = bitmaps.filter((b) => b.name.startsWith(prefix) && b.name !== keep?.name);
  if (keep && leftovers.length > 0) {
    const usable = leftovers.filter((b) => !b.inconsistent && !b.busy).map((b) => b.name);
    if (usable.length > 0) await mon.execute('block-dirty-bitmap-merge', { node: disk.node, target: keep.name, bitmaps: usable });
  }
  if (keep && !keep.recording && leftovers.length > 0) await mon.execute('block-dirty-bitmap-enable', { node: disk.node, name: keep.name });
  for (const b of leftovers) await mon.execute('block-dirty-bitmap-remove', { node: disk.node, name: b.name });
  return leftovers.map((b) => b.name);
}

/** Chunk mask from the dirty extents: 1 for every chunk a dirty byte falls in. */
export function changedChunks(dirty: Iterable<{ offset: number; length: number }>, chunkSize: number, size: number): Uint8Array {
  const count = Math.ceil(size / chunkSize);
  const mask = new Uint8Array(count);
  for (const e of dirty) {
    if (e.length <= 0) continue;
    const first = Math.floor(e.offset / chunkSize);
    const last = Math.min(count - 1, Math.floor((e.offset + e.length - 1) / chunkSize));
    mask.fill(1, first, last + 1);
  }
  return mask;
}

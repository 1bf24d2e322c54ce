/**
 * The integrity test: every chunk a restore point references is read back and
 * checked. RepositoryReader.openDisk/readChunk verifies each chunk against
 * its digest on read (src/repo/contract.ts) and rejects with a
 * CorruptChunkError, so reading is re-hashing. A chunk shared by several disks
 * of the point is checked once; reading goes on after a bad chunk so the
 * detail names every one (up to MAX_NAMED). Chunks are read one at a time per
 * worker: memory stays at `workers` chunks whatever the disk size.
 */
import { CorruptChunkError, type RepositoryReader } from '../repo/contract.js';
import type { TestResult } from './contract.js';

const MAX_NAMED = 10;

export interface CorruptChunk {
  disk: string;
  index: number;
  digest: string;
  reason: string;
}

export async function integrityTest(
  repo: RepositoryReader,
  pointId: string,
  o: { workers?: number; signal?: AbortSignal } = {},
): Promise<TestResult & { corrupt: CorruptChunk[]; chunks: number }> {
  const t0 = Date.now();
  const point = await repo.getPoint(pointId);
  const seen = new Set<string>();
  const corrupt: CorruptChunk[] = [];
  let chunks = 0;
  for (const d of point.disks) {
    const disk = await repo.openDisk(pointId, d.name);
    const toCheck: number[] = [];
    for (let i = 0; i < disk.chunkCount; i++) {
      const id = disk.chunkId(i);
      if (id === null || seen.has(id)) continue;
      seen.add(id);
      toCheck.push(i);
    }
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < toCheck.length) {
        if (o.signal?.aborted) throw o.signal.reason;
        const i = toCheck[next++]!;
        chunks++;
        try {
          await disk.readChunk(i);
        } catch (err) {
          if (!(err instanceof CorruptChunkError)) throw err;
          corrupt.push({ disk: d.name, index: i, digest: err.digest, reason: err.reason });
        }
      }
    };
    await Promise.all(Array.from({ length: o.workers ?? 2 }, worker));
  }
  corrupt.sort((a, b) => a.disk.localeCompare(b.disk) || a.index - b.index);
  const named = corrupt
    .slice(0, MAX_NAMED)
    .map((c) => `${c.disk} chunk #${c.index} ${c.digest} (${c.reason})`)
    .join('; ');
  const detail =
    corrupt.length === 0
      ? `${chunks} chunks of ${point.disks.length} disk(s) verified`
      : `${corrupt.length} of ${chunks} chunks corrupt: ${named}${corrupt.length > MAX_NAMED ? '; …' : ''}`;
  return {
    name: 'integrity',
    kind: 'integrity',
    result: corrupt.length === 0 ? 'passed' : 'failed',
    seconds: (Date.now() - t0) / 1000,
    detail,
    corrupt,
    chunks,
  };
}

/**
 * Files whose content is known without reading them (issue 17: the tenth
 * nightly point costs only its changed files).
 *
 * Every scan records its point's *file map* in the catalog: per regular file
 * (disk, partition, guest path) its size, SHA-256 and extent list (where its
 * bytes lie on the partition, src/scan/extents.ts). A later scan of another
 * point of the same VM takes the *reference*: the nearest point in time
 * (older first) whose scan completed, with the same partition at the same
 * offset. A file is *unchanged* when the reference has the same path with
 * the same size and the same extent list, and every chunk those extents touch
 * (partition offset + physical, on the disk) has the same digest in both
 * points, or, for a chunk that changed (another file in it did), the same
 * bytes in the file's ranges, compared on the chunks decoded from the
 * repository. Chunk digests are content hashes the guest cannot choose, so
 * its bytes, and its SHA-256, are the reference's: it is not read through
 * the mount. Names, sizes
 * and timestamps alone are never trusted (a guest can set them); the extent
 * list only says where to compare.
 *
 * Anything else is read: a file not in the reference, with another size or
 * extent list, touching a changed chunk or a hole that became data, whose
 * extents are not plain data (inline, unwritten, encoded), or whose name
 * filefrag cannot be given.
 */
import { upsertSql, type Catalog } from '../catalog/sql.js';
import type { DiskSource, RepositoryReader, RestorePoint } from '../repo/contract.js';
import type { MountedPartition } from '../flr/session.js';

/** Turns a point's disk into one whose chunk decoding runs elsewhere (a DecodePool's threads), so comparisons do not hold up the scan's own thread. */
export type DiskWrap = (source: DiskSource, point: string, disk: string) => DiskSource;

/** What the file map needs of a partition, however its files are reached (a mount, the in-process reader). */
export type MappedPartition = Pick<MountedPartition, 'disk' | 'partition' | 'offset' | 'skipped'>;
import { extentsKey, type Extent } from './extents.js';
import { migrateScan } from './store.js';

/** Decoded chunks kept for byte comparisons (a changed chunk usually holds several files). */
const DECODED_BUDGET = 64 * 1024 * 1024;
/** Rows written per transaction: bounded memory whatever the number of files. */
const FLUSH_ROWS = 1000;

interface FileRow {
  size: number;
  sha256: string;
  extents: string;
}

/** The file map of one mounted partition of the point being scanned. */
export class PartitionMap {
  private rows: [Buffer, number, string, string][] = [];
  /** Files answered from the reference (not read). */
  unread = 0;

  constructor(
    private readonly owner: FileMap,
    readonly disk: string,
    readonly partition: number,
    readonly offset: number,
    private readonly ref: { point: string; chunks: DiskSource; now: DiskSource } | undefined,
  ) {}

  /** The SHA-256 of a file when the reference proves its content unchanged (see the module comment); undefined: read it. */
  async known(guestPath: Buffer, size: number, extents: readonly Extent[] | null): Promise<string | undefined> {
    if (!this.ref || extents === null) return undefined;
    const row = await this.owner.db.get<FileRow>(
      'SELECT size, sha256, extents FROM scan_files WHERE repo = ? AND point = ? AND disk = ? AND partition = ? AND path = ?',
      [this.owner.repo, this.ref.point, this.disk, this.partition, guestPath],
    );
    if (!row || row.size !== size || row.extents !== extentsKey(extents)) return undefined;
    const { chunks: was, now } = this.ref;
    if (was.chunkSize !== now.chunkSize) return undefined;
    const cs = now.chunkSize;
    for (const e of extents) {
      const from = this.offset + e.physical;
      const to = from + e.length;
      if (Math.ceil(to / cs) > Math.min(now.chunkCount, was.chunkCount)) return undefined;
      for (let c = Math.floor(from / cs); c * cs < to; c++) {
        // The same chunk (or a hole on both sides): the same bytes.
        if (now.chunkId(c) === was.chunkId(c)) continue;
        // A changed chunk may still hold this file's bytes unchanged (another file in it changed): compare that range.
        const lo = Math.max(from, c * cs) - c * cs;
        const hi = Math.min(to, (c + 1) * cs) - c * cs;
        if (!(await this.owner.sameBytes(was, now, c, lo, hi))) return undefined;
      }
    }
    this.unread++;
    return row.sha256;
  }

  /** Records a file of this point (its content hash and where it lies); files without a usable extent list are not recorded. */
  async record(guestPath: Buffer, size: number, extents: readonly Extent[] | null, sha256: string): Promise<void> {
    if (extents === null) return;
    this.rows.push([guestPath, size, sha256, extentsKey(extents)]);
    if (this.rows.length >= FLUSH_ROWS) await this.flush();
  }

  async flush(): Promise<void> {
    const rows = this.rows;
    this.rows = [];
    await this.owner.write(this, rows);
  }
}

/** The file maps of one scan: the reference per partition, and the point's own map written as the scan goes. */
export class FileMap {
  private readonly parts = new Map<string, PartitionMap>();
  /** Decoded chunks by digest, least recently used first. */
  private readonly decoded = new Map<string, Buffer>();
  /**
   * Decodes under way by digest: files read in disk order are compared a few
   * at a time, and those in flight usually share their chunks, so without
   * this each of them decoded the same chunk again.
   */
  private readonly decoding = new Map<string, Promise<Buffer | null>>();
  private decodedBytes = 0;

  private constructor(
    readonly db: Catalog,
    readonly repo: string,
    readonly point: RestorePoint,
  ) {}

  /**
   * Opens the maps for `mounts` of `point`: forgets an earlier map of the
   * same point (it is rewritten, and used as a reference only once this scan
   * completes) and finds each partition's reference.
   */
  static async open(
    db: Catalog,
    repo: RepositoryReader,
    point: RestorePoint,
    mounts: readonly MappedPartition[],
    opts: { wrap?: DiskWrap } = {},
  ): Promise<FileMap> {
    await migrateScan(db);
    const map = new FileMap(db, repo.path, point);
    await db.transaction(async (tx) => {
      await tx.run('DELETE FROM scan_maps WHERE repo = ? AND point = ?', [repo.path, point.id]);
      await tx.run('DELETE FROM scan_files WHERE repo = ? AND point = ?', [repo.path, point.id]);
    });
    // "offset" quoted: a reserved word in PostgreSQL (SQLite takes the quoted name too).
    const pick = `SELECT point FROM scan_maps WHERE repo = ? AND vm = ? AND disk = ? AND partition = ? AND "offset" = ? AND point <> ?
                             ORDER BY CASE WHEN time <= ? THEN 0 ELSE 1 END, CASE WHEN time <= ? THEN time END DESC, time ASC LIMIT 1`;
    const disks = new Map<string, DiskSource>();
    const disk = async (p: string, name: string): Promise<DiskSource> => {
      const key = `${p}\0${name}`;
      let d = disks.get(key);
      if (!d) {
        const opened = await repo.openDisk(p, name);
        disks.set(key, (d = opts.wrap ? opts.wrap(opened, p, name) : opened));
      }
      return d;
    };
    for (const m of mounts) {
      if (m.skipped || m.offset === undefined) continue;
      const ref = await db.get<{ point: string }>(pick, [
        repo.path,
        point.vm.name,
        m.disk,
        m.partition,
        m.offset,
        point.id,
        point.time,
        point.time,
      ]);
      let chunks: { point: string; chunks: DiskSource; now: DiskSource } | undefined;
      if (ref) {
        try {
          chunks = { point: ref.point, chunks: await disk(ref.point, m.disk), now: await disk(point.id, m.disk) };
        } catch {
          // The reference point was deleted (or its index is unreadable): read everything.
          chunks = undefined;
        }
      }
      map.parts.set(`${m.disk}\0${m.partition}`, new PartitionMap(map, m.disk, m.partition, m.offset, chunks));
    }
    return map;
  }

  /**
   * Whether bytes [lo, hi) of chunk `c` are equal in two disks, decoded from
   * the repository (verified; a chunk that fails its checks answers false,
   * so the file is read through the mount and the error shows there).
   */
  async sameBytes(was: DiskSource, now: DiskSource, c: number, lo: number, hi: number): Promise<boolean> {
    try {
      const [a, b] = [await this.chunk(was, c), await this.chunk(now, c)];
      const range = (x: Buffer | null): Buffer => (x ?? Buffer.alloc(hi)).subarray(lo, hi);
      const [ra, rb] = [range(a), range(b)];
      return ra.length === hi - lo && rb.length === hi - lo && ra.equals(rb);
    } catch {
      return false;
    }
  }

  /** A decoded chunk, from a small cache: files sharing a changed chunk are compared against one decode. */
  private async chunk(d: DiskSource, c: number): Promise<Buffer | null> {
    const id = d.chunkId(c);
    if (id === null) return null;
    const hit = this.decoded.get(id);
    if (hit) {
      this.decoded.delete(id);
      this.decoded.set(id, hit);
      return hit;
    }
    let flight = this.decoding.get(id);
    if (!flight) {
      flight = d
        .readChunk(c)
        .then((buf) => {
          if (buf !== null) this.remember(id, buf);
          return buf;
        })
        .finally(() => this.decoding.delete(id));
      this.decoding.set(id, flight);
    }
    return flight;
  }

  private remember(id: string, buf: Buffer): void {
    this.decoded.set(id, buf);
    this.decodedBytes += buf.length;
    for (const [k, v] of this.decoded) {
      if (this.decodedBytes <= DECODED_BUDGET) break;
      this.decoded.delete(k);
      this.decodedBytes -= v.length;
    }
  }

  partition(m: MappedPartition): PartitionMap | undefined {
    return this.parts.get(`${m.disk}\0${m.partition}`);
  }

  /** Files answered from the references, over all partitions. */
  get unread(): number {
    let n = 0;
    for (const p of this.parts.values()) n += p.unread;
    return n;
  }

  async write(p: PartitionMap, rows: [Buffer, number, string, string][]): Promise<void> {
    if (rows.length === 0) return;
    const put = upsertSql(
      this.db.dialect,
      'scan_files',
      ['repo', 'point', 'disk', 'partition', 'path', 'size', 'sha256', 'extents'],
      ['repo', 'point', 'disk', 'partition', 'path'],
    );
    await this.db.transaction(async (tx) => {
      for (const [path, size, sha, ext] of rows) await tx.run(put, [this.repo, this.point.id, p.disk, p.partition, path, size, sha, ext]);
    });
  }

  /**
   * The scan completed: the point's map may now be a reference. Its files
   * are written first, then its partitions in one transaction: a crash in
   * between leaves files no partition row points at (never used, and
   * deleted when the point is scanned again), never a reference missing files.
   */
  async commit(): Promise<void> {
    for (const p of this.parts.values()) await p.flush();
    const put = upsertSql(
      this.db.dialect,
      'scan_maps',
      ['repo', 'point', 'vm', 'time', 'disk', 'partition', '"offset"'],
      ['repo', 'point', 'disk', 'partition'],
    );
    await this.db.transaction(async (tx) => {
      for (const p of this.parts.values())
        await tx.run(put, [this.repo, this.point.id, this.point.vm.name, this.point.time, p.disk, p.partition, p.offset]);
    });
  }
}

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
 * points. Chunk digests are content hashes the guest cannot choose, so its
 * bytes, and its SHA-256, are the reference's: it is not read. Names, sizes
 * and timestamps alone are never trusted (a guest can set them); the extent
 * list only says where to compare.
 *
 * A file with the same path, size and extents whose bytes lie (partly) in a
 * chunk that changed (another file in it did, usually) is *to confirm*: its
 * bytes are hashed, without a copy for yara, and it is unchanged when that
 * hash is the reference's. Hashing only the current point's bytes costs one
 * SHA-256 pass over the file, where comparing bytes decoded both points'
 * chunks (issue 17: the tenth point's comparisons were most of its time).
 *
 * Anything else is read: a file not in the reference, with another size or
 * extent list, touching a hole that became data, whose extents are not plain
 * data (inline, unwritten, encoded), or whose name filefrag cannot be given.
 */
import { type Catalog } from '../catalog/sql.js';
import type { DiskSource, RepositoryReader, RestorePoint } from '../repo/contract.js';
import type { MountedPartition } from '../flr/session.js';
import { extentsKey, type Extent } from './extents.js';
import { insertRows, migrateScan } from './store.js';

/** What the file map needs of a partition, however its files are reached (a mount, the in-process reader). */
export type MappedPartition = Pick<MountedPartition, 'disk' | 'partition' | 'offset' | 'skipped'>;

/**
 * A partition's reference rows are read into memory in one query when they
 * hold at most this many bytes of paths and extent lists (about 300 bytes a
 * file, so some 100 000 files); above it, each file's row is queried by
 * itself, so memory stays bounded whatever the guest's names.
 */
const REFERENCE_BYTES_IN_MEMORY = 32 * 1024 * 1024;
/** Rows written per transaction: bounded memory whatever the number of files. */
const FLUSH_ROWS = 2000;

interface FileRow {
  size: number;
  sha256: string;
  extents: string;
}

/** What the reference says of a file: its hash, proven (not read) or to confirm by hashing the file's bytes. */
export type Known = { sha256: string; proven: true } | { sha256: string; proven: false };

/** The file map of one partition of the point being scanned. */
export class PartitionMap {
  private rows: [Buffer, number, string, string][] = [];
  /** The reference's rows by path (latin1: one character per byte), when they fit in memory. */
  private refRows: Map<string, FileRow> | undefined;
  private loading: Promise<void> | undefined;
  /** Files answered from the reference without reading them, or whose hash confirmed it. */
  unread = 0;

  constructor(
    private readonly owner: FileMap,
    readonly disk: string,
    readonly partition: number,
    readonly offset: number,
    /** The reference point, its disk and ours (chunk digests only: nothing is decoded). */
    readonly ref: { point: string; was: DiskSource; now: DiskSource } | undefined,
  ) {}

  private load(): Promise<void> {
    this.loading ??= (async () => {
      const where = 'FROM scan_files WHERE repo = ? AND point = ? AND disk = ? AND partition = ?';
      const key = [this.owner.repo, this.ref!.point, this.disk, this.partition];
      // Per row: the two strings, the 64-digit hash and a few numbers and object headers.
      const size = await this.owner.db.get<{ bytes: number | null }>(
        `SELECT SUM(LENGTH(path) + LENGTH(extents) + 200) AS bytes ${where}`,
        key,
      );
      if (Number(size?.bytes ?? 0) > REFERENCE_BYTES_IN_MEMORY) return;
      const rows = await this.owner.db.all<FileRow & { path: Buffer }>(`SELECT path, size, sha256, extents ${where}`, key);
      this.refRows = new Map(rows.map((r) => [Buffer.from(r.path).toString('latin1'), r]));
    })();
    return this.loading;
  }

  private async row(guestPath: Buffer): Promise<FileRow | undefined> {
    await this.load();
    if (this.refRows) return this.refRows.get(guestPath.toString('latin1'));
    return this.owner.db.get<FileRow>(
      'SELECT size, sha256, extents FROM scan_files WHERE repo = ? AND point = ? AND disk = ? AND partition = ? AND path = ?',
      [this.owner.repo, this.ref!.point, this.disk, this.partition, guestPath],
    );
  }

  /**
   * What the reference proves of a file (see the module comment): its
   * SHA-256 when every chunk under it is the reference's, or the hash to
   * confirm when some chunk changed; undefined: read it.
   */
  async known(guestPath: Buffer, size: number, extents: readonly Extent[] | null): Promise<Known | undefined> {
    if (!this.ref || extents === null) return undefined;
    const row = await this.row(guestPath);
    if (!row || row.size !== size || row.extents !== extentsKey(extents)) return undefined;
    const { was, now } = this.ref;
    if (was.chunkSize !== now.chunkSize) return undefined;
    const cs = now.chunkSize;
    let proven = true;
    for (const e of extents) {
      const from = this.offset + e.physical;
      const to = from + e.length;
      if (Math.ceil(to / cs) > Math.min(now.chunkCount, was.chunkCount)) return undefined;
      for (let c = Math.floor(from / cs); c * cs < to; c++) {
        // The same chunk (or a hole on both sides): the same bytes; any other chunk (or hole), the file's hash decides.
        if (now.chunkId(c) !== was.chunkId(c)) proven = false;
      }
    }
    if (proven) this.unread++;
    return { sha256: row.sha256, proven };
  }

  /** A file `known` left to confirm hashed to the reference's SHA-256: unchanged, and counted as such. */
  confirmed(): void {
    this.unread++;
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
  static async open(db: Catalog, repo: RepositoryReader, point: RestorePoint, mounts: readonly MappedPartition[]): Promise<FileMap> {
    await migrateScan(db);
    const map = new FileMap(db, repo.path, point);
    await db.transaction(async (tx) => {
      await tx.run('DELETE FROM scan_maps WHERE repo = ? AND point = ?', [repo.path, point.id]);
      await tx.run('DELETE FROM scan_files WHERE repo = ? AND point = ?', [repo.path, point.id]);
    });
    // "offset" quoted: a reserved word in PostgreSQL (SQLite takes the quoted name too).
    const pick = `SELECT point FROM scan_maps WHERE repo = ? AND vm = ? AND disk = ? AND partition = ? AND "offset" = ? AND point <> ?
                             ORDER BY CASE WHEN time <= ? THEN 0 ELSE 1 END, CASE WHEN time <= ? THEN time END DESC, time ASC LIMIT 1`;
    // Disks are opened for their chunk indexes only: the map compares digests and never decodes a chunk.
    const disks = new Map<string, DiskSource>();
    const disk = async (p: string, name: string): Promise<DiskSource> => {
      const key = `${p}\0${name}`;
      let d = disks.get(key);
      if (!d) disks.set(key, (d = await repo.openDisk(p, name)));
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
      let chunks: PartitionMap['ref'];
      if (ref) {
        try {
          chunks = { point: ref.point, was: await disk(ref.point, m.disk), now: await disk(point.id, m.disk) };
        } catch {
          // The reference point was deleted (or its index is unreadable): read everything.
          chunks = undefined;
        }
      }
      map.parts.set(`${m.disk}\0${m.partition}`, new PartitionMap(map, m.disk, m.partition, m.offset, chunks));
    }
    return map;
  }

  partition(m: MappedPartition): PartitionMap | undefined {
    return this.parts.get(`${m.disk}\0${m.partition}`);
  }

  /** The reference point of each partition that has one (the verdict cache preloads their files' verdicts). */
  references(): { point: string; disk: string; partition: number }[] {
    return [...this.parts.values()].flatMap((p) => (p.ref ? [{ point: p.ref.point, disk: p.disk, partition: p.partition }] : []));
  }

  /** Files answered from the references, over all partitions. */
  get unread(): number {
    let n = 0;
    for (const p of this.parts.values()) n += p.unread;
    return n;
  }

  async write(p: PartitionMap, rows: [Buffer, number, string, string][]): Promise<void> {
    if (rows.length === 0) return;
    await this.db.transaction((tx) =>
      insertRows(
        tx,
        'scan_files',
        ['repo', 'point', 'disk', 'partition', 'path', 'size', 'sha256', 'extents'],
        ['repo', 'point', 'disk', 'partition', 'path'],
        rows.map(([path, size, sha, ext]) => [this.repo, this.point.id, p.disk, p.partition, path, size, sha, ext]),
      ),
    );
  }

  /**
   * The scan completed: the point's map may now be a reference. Its files
   * are written first, then its partitions in one transaction: a crash in
   * between leaves files no partition row points at (never used, and
   * deleted when the point is scanned again), never a reference missing files.
   */
  async commit(): Promise<void> {
    for (const p of this.parts.values()) await p.flush();
    await this.db.transaction((tx) =>
      insertRows(
        tx,
        'scan_maps',
        ['repo', 'point', 'vm', 'time', 'disk', 'partition', '"offset"'],
        ['repo', 'point', 'disk', 'partition'],
        [...this.parts.values()].map((p) => [this.repo, this.point.id, this.point.vm.name, this.point.time, p.disk, p.partition, p.offset]),
      ),
    );
  }
}

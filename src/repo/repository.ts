/**
 * A repository (layout in docs/formats.md), on a local file system or
 * under an object-storage prefix (the same names and bytes, see MetaStore):
 *
 *   config.json              RepoConfig + checksum; its presence makes a repository
 *   chunks/<2 hex>/<digest>  blobs (chunk-store.ts)
 *   indexes/<name>.fidx      fixed indexes, named by the hash of their bytes
 *                            (encrypted: sealed, named by an HMAC of the plaintext)
 *   points/<id>.json         restore point manifests, checksummed (encrypted: sealed)
 *   locks/*.lock             lock holders (lock.ts)
 *
 * Everything is written atomically (locally: temp file and rename), so a
 * crash leaves either nothing or a complete file (plus a temp file gc
 * removes). This class is the one place that knows the format; the stores
 * under it (meta-store.ts, the ChunkStores) only keep bytes.
 */
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import type {
  ChunkCodec,
  ChunkStore,
  FixedIndex,
  Leftover,
  LockHolder,
  LockKind,
  NewRestorePoint,
  PointScan,
  RepoConfig,
  RepoLock,
  RepositoryMaintenance,
  StoredIndex,
  Sweep,
} from './api.js';
import { MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, REPO_FORMAT, REPO_FORMAT_VERSION, SEALED_METADATA_VERSION, SweptChunksError } from './api.js';
import type { DiskSource, RestorePoint } from './contract.js';
import { CorruptChunkError } from './contract.js';
import { badInput, notFound, RestorelabError } from '../errors.js';
import { jsonSyntaxProblem } from '../schema/validate.js';
import { tightenMode } from '../host/private-files.js';
import { createCodec, keyCheckValue, keyMatches } from './chunk-codec.js';
import { createShards, LocalChunkStore, type ChunkStoreOptions } from './chunk-store.js';
import { directSlotSize } from './direct-read.js';
import { chunkCountFor, decodeFixedIndex, encodeFixedIndex } from './fixed-index.js';
import type { MetaStore } from './meta-store.js';
import { isObjectStorage, repositoryBackend, type ChunkCacheSetting } from './open.js';
import { createMetadataSeal, isSealed, type MetadataSeal } from './metadata-seal.js';
import {
  CONFIG_FILE,
  DEFAULT_CHUNK_SIZE,
  DEFAULT_OBJECT_STORAGE_CHUNK_SIZE,
  INDEX_SUFFIX,
  INDEXES_DIR,
  KEY_SIZE,
  LOCKS_DIR,
  POINT_FORMAT,
  POINT_SUFFIX,
  POINT_VERSION,
  POINTS_DIR,
  TEMP_PREFIX,
} from './format.js';

/** How this process writes chunks into the repository (SyncLevel); a setting of the host's config, not of the repository. */
export type WriteOptions = ChunkStoreOptions;

export interface InitOptions extends WriteOptions {
  /** Bytes per chunk; default DEFAULT_CHUNK_SIZE, or DEFAULT_OBJECT_STORAGE_CHUNK_SIZE under an s3:// prefix. */
  chunkSize?: number;
  /** Encrypt with this key file; created with a new random key when it does not exist. */
  keyFile?: string;
}

export interface OpenOptions extends WriteOptions {
  keyFile?: string;
  /** Object storage only: keep fetched chunks in this bounded on-disk cache (publishing, recovery; never verify). */
  chunkCache?: ChunkCacheSetting;
}

export type { Leftover, PointScan } from './api.js';

/** HEADs in flight when commitPoint checks a point's chunks after a sweep (the S3 client's socket bound is 32). */
const RECHECK_CONCURRENCY = 32;
const POINT_ID_RE = /^\d{8}T\d{6}Z-[0-9a-f]{6}$/;
const INDEX_NAME_RE = /^[0-9a-f]{64}\.fidx$/;

function sha256(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex');
}

export function validateChunkSize(chunkSize: number): void {
  const pow2 = Number.isInteger(chunkSize) && chunkSize > 0 && (chunkSize & (chunkSize - 1)) === 0;
  if (!pow2 || chunkSize < MIN_CHUNK_SIZE || chunkSize > MAX_CHUNK_SIZE) {
    throw badInput(
      'BAD_CHUNK_SIZE',
      `chunk size ${chunkSize} is not a power of two between ${MIN_CHUNK_SIZE} (256 KiB) and ${MAX_CHUNK_SIZE} (8 MiB)`,
      'pass --chunk-size as a power of two from 256K to 8M, e.g. 1M (the default) or 4M',
    );
  }
}

/** A point id sorts by time: `<YYYYMMDDTHHMMSSZ>-<6 hex>`. */
export function newPointId(time: string): string {
  const ms = Date.parse(time);
  if (Number.isNaN(ms)) throw badInput('BAD_POINT', `restore point time "${time}" is not an ISO 8601 time`);
  const stamp = new Date(ms)
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d+Z$/, 'Z');
  return `${stamp}-${randomBytes(3).toString('hex')}`;
}

export async function readKeyFile(path: string): Promise<Buffer> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw badInput(
      'KEY_FILE_UNREADABLE',
      `cannot read key file ${path}: ${(err as Error).message}`,
      'pass the key file given to repo init with --key-file',
    );
  }
  // A key file older installations (or a careless copy) left readable by others is made owner-only.
  tightenMode(path);
  const hex = text.trim();
  if (!/^[0-9a-fA-F]{64}$/.test(hex)) {
    throw badInput(
      'KEY_FILE_INVALID',
      `key file ${path} is not a restorelab key: expected ${KEY_SIZE * 2} hex digits`,
      'pass the key file given to repo init with --key-file',
    );
  }
  return Buffer.from(hex, 'hex');
}

function configBody(config: RepoConfig): string {
  return JSON.stringify(config);
}

/** Creates a repository in an empty directory or under an empty `s3://BUCKET/PREFIX`. */
export async function initRepository(spec: string, opts: InitOptions = {}): Promise<LocalRepository> {
  const chunkSize = opts.chunkSize ?? (isObjectStorage(spec) ? DEFAULT_OBJECT_STORAGE_CHUNK_SIZE : DEFAULT_CHUNK_SIZE);
  validateChunkSize(chunkSize);
  const backend = repositoryBackend(spec, writeOptions(opts));
  const { meta, path } = backend;
  await meta.assertEmpty();
  const id = randomUUID();
  let key: Buffer | undefined;
  if (opts.keyFile) {
    try {
      key = await readKeyFile(opts.keyFile);
    } catch (err) {
      if (!(err instanceof RestorelabError && err.code === 'KEY_FILE_UNREADABLE')) throw err;
      key = randomBytes(KEY_SIZE);
      // 'wx': never overwrite a key someone else may depend on.
      await writeFile(opts.keyFile, key.toString('hex') + '\n', { flag: 'wx', mode: 0o600 });
    }
  }
  const config: RepoConfig = {
    format: REPO_FORMAT,
    // An unencrypted repository is the same bytes in either version: version 1 keeps older restorelab opening it.
    version: key ? REPO_FORMAT_VERSION : 1,
    id,
    chunkSize,
    hash: key ? 'hmac-sha256' : 'sha256',
    compression: 'zstd',
    encryption: key ? 'aes-256-gcm' : 'none',
    created: new Date().toISOString(),
    ...(key ? { keyCheck: keyCheckValue(key, id) } : {}),
  };
  await meta.prepare();
  const chunks = backend.chunkStore(config);
  if (chunks instanceof LocalChunkStore) await createShards(chunks.path);
  const body = configBody(config);
  // The config goes last: a directory (or prefix) without it is not a repository yet.
  await meta.write(CONFIG_FILE, JSON.stringify({ ...config, checksum: sha256(body) }, null, 2) + '\n');
  return new LocalRepository(path, config, key, { meta, chunks });
}

function writeOptions(opts: WriteOptions): WriteOptions {
  return {
    ...(opts.syncLevel ? { syncLevel: opts.syncLevel } : {}),
    ...(opts.syncFilesystem ? { syncFilesystem: opts.syncFilesystem } : {}),
  };
}

function parseConfig(path: string, file: string, text: string): RepoConfig {
  // The errors name the file and the spot, never its bytes: they reach every
  // API viewer (GET /repositories lists an unopenable repository with its
  // error, the operation list keeps failures), and a config.json that is not
  // ours may be some other program's secret (docs/security.md, "API roles and the host").
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw badInput('REPO_CONFIG_CORRUPT', `repository config ${file} is not valid JSON: ${jsonSyntaxProblem(text, err)}`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw badInput('NOT_A_REPOSITORY', `${path} is not a restorelab repository (${file} holds no JSON object)`);
  }
  const raw = parsed as Record<string, unknown>;
  if (raw.format !== REPO_FORMAT)
    throw badInput(
      'NOT_A_REPOSITORY',
      `${path} is not a restorelab repository (${file} does not have format ${JSON.stringify(REPO_FORMAT)})`,
    );
  if (typeof raw.version !== 'number' || !Number.isInteger(raw.version))
    throw badInput('REPO_CONFIG_CORRUPT', `repository config ${file} has no format version`);
  if (raw.version > REPO_FORMAT_VERSION) {
    throw badInput(
      'REPO_VERSION_UNSUPPORTED',
      `repository format version ${raw.version} is newer than this restorelab supports (${REPO_FORMAT_VERSION}): ${path}`,
      'upgrade restorelab to open this repository',
    );
  }
  if (raw.version < 1) throw badInput('REPO_CONFIG_CORRUPT', `repository config ${file} has invalid format version ${raw.version}`);
  const { checksum, ...rest } = raw;
  const config = rest as unknown as RepoConfig;
  if (checksum !== sha256(configBody(config))) {
    throw badInput(
      'REPO_CONFIG_CORRUPT',
      `repository config ${file} fails its checksum: it was edited or damaged`,
      'restore config.json from a copy of the repository',
    );
  }
  validateChunkSize(config.chunkSize);
  if (
    config.compression !== 'zstd' ||
    !['sha256', 'hmac-sha256'].includes(config.hash) ||
    !['none', 'aes-256-gcm'].includes(config.encryption)
  ) {
    throw badInput('REPO_CONFIG_CORRUPT', `repository config ${file} names an unknown hash, compression or encryption`);
  }
  return config;
}

/** Where a key file comes from, in the order every command and the server look (src/config/key-file.ts). */
const KEY_HINT = 'pass --key-file, set RESTORELAB_KEY_FILE, or set repositoryKeyFile in the config';

/** Opens the repository of a spec: a directory or `s3://BUCKET/PREFIX` (open.ts). */
export async function openRepository(spec: string, opts: OpenOptions = {}): Promise<LocalRepository> {
  const backend = repositoryBackend(spec, writeOptions(opts));
  const { meta, path } = backend;
  const raw = await meta.read(CONFIG_FILE);
  if (raw === undefined) {
    throw notFound(
      'REPO_NOT_FOUND',
      `no restorelab repository at ${path} (no ${CONFIG_FILE})`,
      `create one with: restorelab repo init ${path}`,
    );
  }
  const config = parseConfig(path, meta.where(CONFIG_FILE), raw.toString('utf8'));
  if (!isObjectStorage(path)) tightenMode(path);
  let key: Buffer | undefined;
  if (config.encryption === 'aes-256-gcm') {
    if (!opts.keyFile) throw badInput('KEY_REQUIRED', `repository ${path} is encrypted: its key is needed`, KEY_HINT);
    key = await readKeyFile(opts.keyFile);
    if (!keyMatches(key, config)) {
      throw badInput(
        'KEY_WRONG',
        `key file ${opts.keyFile} does not match repository ${path} (key check failed)`,
        `use the key file given to repo init: ${KEY_HINT}`,
      );
    }
  }
  return new LocalRepository(path, config, key, { meta, chunks: backend.chunkStore(config, opts.chunkCache) });
}

function isRestorePoint(v: unknown): v is RestorePoint {
  const p = v as RestorePoint;
  return (
    typeof p === 'object' &&
    p !== null &&
    typeof p.id === 'string' &&
    typeof p.time === 'string' &&
    Array.isArray(p.disks) &&
    typeof p.vm === 'object' &&
    p.vm !== null &&
    typeof p.vm.name === 'string' &&
    typeof p.stats === 'object' &&
    p.disks.every((d) => typeof d.name === 'string' && typeof d.size === 'number' && typeof d.indexDigest === 'string')
  );
}

export class LocalRepository implements RepositoryMaintenance {
  readonly chunks: ChunkStore;
  /** The same store as `chunks` when it is a local one, with what only that has: blocking reads for decode workers, temp files. */
  private readonly local: LocalChunkStore | undefined;
  /** config.json, indexes, manifests and locks (meta-store.ts). */
  private readonly meta: MetaStore;
  readonly codec: ChunkCodec;
  /** Encrypted repositories: seals manifests and indexes (every one written, in any version). */
  private readonly seal?: MetadataSeal;
  /**
   * Plaintext manifests and indexes are read in unencrypted repositories and
   * in encrypted ones of version 1 (written before metadata was sealed); a
   * version 2 encrypted repository refuses them, so nobody can slip a
   * plaintext manifest past the key.
   */
  private readonly plainMetadataAllowed: boolean;

  constructor(
    readonly path: string,
    readonly config: RepoConfig,
    private readonly key: Buffer | undefined,
    parts: { meta: MetaStore; chunks: ChunkStore },
  ) {
    this.meta = parts.meta;
    this.chunks = parts.chunks;
    this.local = parts.chunks instanceof LocalChunkStore ? parts.chunks : undefined;
    this.codec = createCodec(config, key);
    if (key) this.seal = createMetadataSeal(key, config.id);
    this.plainMetadataAllowed = config.encryption === 'none' || config.version < SEALED_METADATA_VERSION;
  }

  /** The master key, for building codecs in worker threads (createCodec(config, key)). */
  get masterKey(): Buffer | undefined {
    return this.key;
  }

  private pointFile(id: string): string {
    if (!POINT_ID_RE.test(id))
      throw notFound(
        'POINT_NOT_FOUND',
        `no restore point ${id} in ${this.path}: not a restore point id`,
        'list them with restorelab points',
      );
    return `${POINTS_DIR}/${id}${POINT_SUFFIX}`;
  }

  private indexFile(digest: string): string {
    return `${INDEXES_DIR}/${digest}${INDEX_SUFFIX}`;
  }

  /** The plaintext of a manifest or index file: unsealed, or as it is when plaintext is allowed here. */
  private unseal(purpose: 'manifest' | 'index', buf: Buffer): Buffer {
    if (isSealed(buf)) {
      if (!this.seal) throw new Error(`a sealed ${purpose} in an unencrypted repository`);
      return this.seal.open(purpose, buf);
    }
    if (!this.plainMetadataAllowed)
      throw new Error(`a plaintext ${purpose} in an encrypted repository of format version ${this.config.version}`);
    return buf;
  }

  private parseManifest(file: string, buf: Buffer): RestorePoint {
    const text = this.unseal('manifest', buf).toString('utf8');
    const raw = JSON.parse(text) as { format?: unknown; version?: unknown; point?: unknown; checksum?: unknown };
    if (raw.format !== POINT_FORMAT) throw new Error(`format is ${JSON.stringify(raw.format)}, not ${POINT_FORMAT}`);
    if (raw.version !== POINT_VERSION) throw new Error(`unknown manifest version ${JSON.stringify(raw.version)}`);
    if (raw.checksum !== sha256(JSON.stringify(raw.point))) throw new Error('checksum mismatch');
    if (!isRestorePoint(raw.point)) throw new Error('required fields missing');
    if (raw.point.id + POINT_SUFFIX !== file) throw new Error(`manifest of ${raw.point.id} stored as ${file}`);
    return raw.point;
  }

  private manifestBody(point: RestorePoint): Buffer {
    const body = JSON.stringify(point);
    const text = Buffer.from(
      `{"format":${JSON.stringify(POINT_FORMAT)},"version":${POINT_VERSION},"point":${body},"checksum":"${sha256(body)}"}\n`,
    );
    return this.seal ? this.seal.seal('manifest', text) : text;
  }

  /** All manifests; unreadable ones are listed as problems, temp files are skipped. */
  async scanPoints(): Promise<PointScan> {
    const out: PointScan = { points: [], problems: [] };
    for (const { name: file } of await this.meta.list(POINTS_DIR)) {
      if (file.startsWith(TEMP_PREFIX) || !file.endsWith(POINT_SUFFIX)) continue;
      const name = `${POINTS_DIR}/${file}`;
      const buf = await this.meta.read(name);
      // Removed since the listing (prune): not a problem.
      if (buf === undefined) continue;
      try {
        out.points.push(this.parseManifest(file, buf));
      } catch (err) {
        out.problems.push({ file: this.meta.where(name), reason: (err as Error).message });
      }
    }
    return out;
  }

  async listPoints(filter: { vm?: string } = {}): Promise<RestorePoint[]> {
    const { points, problems } = await this.scanPoints();
    const first = problems[0];
    if (first) {
      throw new RestorelabError('POINT_CORRUPT', `restore point manifest ${first.file} is corrupt: ${first.reason}`, {
        hint: 'run restorelab verify; move the damaged manifest away to list the others',
      });
    }
    return points.filter((p) => filter.vm === undefined || p.vm.name === filter.vm);
  }

  async getPoint(id: string): Promise<RestorePoint> {
    const name = this.pointFile(id);
    const text = await this.meta.read(name);
    if (text === undefined) throw notFound('POINT_NOT_FOUND', `no restore point ${id} in ${this.path}`, 'list them with restorelab points');
    try {
      return this.parseManifest(id + POINT_SUFFIX, text);
    } catch (err) {
      throw new RestorelabError('POINT_CORRUPT', `restore point manifest ${this.meta.where(name)} is corrupt: ${(err as Error).message}`);
    }
  }

  async openDisk(pointId: string, diskName: string): Promise<DiskSource> {
    const point = await this.getPoint(pointId);
    const disk = point.disks.find((d) => d.name === diskName);
    if (!disk) {
      throw notFound(
        'DISK_NOT_FOUND',
        `restore point ${pointId} has no disk ${diskName}`,
        `its disks: ${point.disks.map((d) => d.name).join(', ') || '(none)'}`,
      );
    }
    const index = await this.readIndex(disk.indexDigest);
    if (index.size !== disk.size) {
      throw new RestorelabError(
        'INDEX_CORRUPT',
        `index ${disk.indexDigest} of ${pointId}/${diskName} covers ${index.size} bytes, the manifest says ${disk.size}`,
      );
    }
    return new IndexedDisk(index, this.chunks, this.local, this.codec);
  }

  async writeIndex(index: FixedIndex): Promise<string> {
    if (index.chunkSize !== this.config.chunkSize) {
      throw new RestorelabError(
        'INDEX_CORRUPT',
        `index chunk size ${index.chunkSize} differs from the repository's ${this.config.chunkSize}`,
      );
    }
    // The chunks it names are durable before the index is (SyncLevel): one syncfs at level filesystem.
    await this.chunks.sync();
    const plain = encodeFixedIndex(index);
    const digest = this.seal ? this.seal.indexName(plain) : sha256(plain);
    const buf = this.seal ? this.seal.seal('index', plain) : plain;
    const name = this.indexFile(digest);
    // Like chunks: an existing index only gets its mtime refreshed, which protects it from a concurrent gc.
    if (!(await this.meta.touch(name))) await this.meta.write(name, buf);
    return digest;
  }

  async readIndex(digest: string): Promise<FixedIndex> {
    const name = digest + INDEX_SUFFIX;
    if (!INDEX_NAME_RE.test(name)) throw badInput('BAD_DIGEST', `"${digest}" is not an index digest`);
    const file = this.meta.where(this.indexFile(digest));
    const buf = await this.meta.read(this.indexFile(digest));
    if (buf === undefined)
      throw notFound('INDEX_NOT_FOUND', `fixed index ${file} is missing`, 'run restorelab verify to list the restore points that need it');
    const corrupt = (why: string): RestorelabError => new RestorelabError('INDEX_CORRUPT', `fixed index ${file} is corrupt: ${why}`);
    let plain: Buffer;
    try {
      plain = this.unseal('index', buf);
    } catch (err) {
      throw corrupt((err as Error).message);
    }
    // A sealed index is named by the HMAC of its plaintext, a plaintext one (format v1) by the hash of its bytes.
    const actual = plain === buf ? sha256(buf) : this.seal?.indexName(plain);
    if (actual !== digest) throw corrupt('its content does not hash to its name');
    return decodeFixedIndex(plain, file);
  }

  async commitPoint(
    point: NewRestorePoint,
    opts: { lock?: RepoLock; written?: ReadonlyMap<string, FixedIndex> } = {},
  ): Promise<RestorePoint> {
    // Normally a no-op (writeIndex synced); it catches chunks found or inserted since, by any caller.
    await this.chunks.sync();
    // The fence against sweeps on object storage (s3-sweep.ts), first: once it answers, no delete that
    // could undo one of this writer's touches is still to come, so what is read below is what stays.
    const view = opts.lock?.sweepView;
    const swept = view ? await this.meta.sweptSince(view) : false;
    const indexes: FixedIndex[] = [];
    const missingIndexes: string[] = [];
    for (const d of point.disks) {
      // Written by this writer after its view, and no sweep since: it is stored as written (the fence above).
      const mine = swept ? undefined : opts.written?.get(d.indexDigest);
      let index: FixedIndex;
      try {
        index = mine ?? (await this.readIndex(d.indexDigest));
      } catch (err) {
        if (swept && err instanceof RestorelabError && err.code === 'INDEX_NOT_FOUND') {
          missingIndexes.push(d.indexDigest);
          continue;
        }
        throw err;
      }
      if (index.size !== d.size) throw badInput('BAD_POINT', `disk ${d.name}: index covers ${index.size} bytes, the point says ${d.size}`);
      indexes.push(index);
    }
    if (new Set(point.disks.map((d) => d.name)).size !== point.disks.length)
      throw badInput('BAD_POINT', 'restore point names a disk twice');
    if (swept) await this.assertStillStored(indexes, missingIndexes);
    let id = newPointId(point.time);
    while (await this.meta.exists(this.pointFile(id))) id = newPointId(point.time);
    const full: RestorePoint = { id, ...point };
    // The manifest is the last write of a backup: a point is visible only once its indexes and chunks are stored.
    await this.meta.write(this.pointFile(id), this.manifestBody(full));
    return full;
  }

  /** Every chunk of `indexes` is stored, and no index was missing; SweptChunksError names what is not. */
  private async assertStillStored(indexes: FixedIndex[], missingIndexes: string[]): Promise<void> {
    const digests = [...new Set(indexes.flatMap((i) => i.digests.filter((d): d is string => d !== null)))];
    const missingChunks: string[] = [];
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < digests.length) {
        const d = digests[next++] as string;
        if (!(await this.chunks.has(d))) missingChunks.push(d);
      }
    };
    await Promise.all(Array.from({ length: Math.min(RECHECK_CONCURRENCY, digests.length) }, worker));
    if (missingChunks.length > 0 || missingIndexes.length > 0) throw new SweptChunksError(this.path, missingChunks.sort(), missingIndexes);
  }

  beginSweep(purpose: string, opts: { tidyBeforeMs?: number } = {}): Promise<Sweep> {
    return this.meta.beginSweep(purpose, opts.tidyBeforeMs);
  }

  /** Sets or clears the damaged mark (verify clears it once every chunk checks out again). */
  async setDamaged(id: string, damaged: boolean): Promise<void> {
    const point = await this.getPoint(id);
    if ((point.damaged ?? false) === damaged) return;
    const { damaged: _old, ...rest } = point;
    await this.meta.write(this.pointFile(id), this.manifestBody(damaged ? { ...rest, damaged: true } : rest));
  }

  /** Deletes a manifest (prune); its chunks and index stay until gc. */
  async removePoint(id: string): Promise<void> {
    if (!(await this.meta.remove(this.pointFile(id)))) throw notFound('POINT_NOT_FOUND', `no restore point ${id} in ${this.path}`);
  }

  /** Index digests stored in indexes/, with their mtimes. */
  async listIndexes(): Promise<StoredIndex[]> {
    return (await this.meta.list(INDEXES_DIR))
      .filter((e) => INDEX_NAME_RE.test(e.name))
      .map((e) => ({ digest: e.name.slice(0, -INDEX_SUFFIX.length), size: e.size, mtimeMs: e.mtimeMs }));
  }

  /** gc's delete of an unreferenced index: only if untouched since `cutoffMs` (see removeIfOlder). */
  async removeIndex(digest: string, cutoffMs: number, guard?: () => void): Promise<number> {
    return this.meta.removeIfOlder(this.indexFile(digest), cutoffMs, guard);
  }

  /** Temp files left by crashed writers (all of them, or those older than `beforeMs`). */
  async leftovers(beforeMs = Infinity): Promise<Leftover[]> {
    const out = await this.meta.leftovers(beforeMs);
    if (this.local) for await (const t of this.local.listTemp(beforeMs)) out.push({ ...t, mtimeMs: 0 });
    return out;
  }

  removeLeftover(leftover: Leftover): Promise<void> {
    return this.meta.removeLeftover(leftover);
  }

  /** Live lock holders: local lock files, or lease lock objects on object storage (s3-lock.ts). */
  liveHolders(): Promise<LockHolder[]> {
    return this.meta.liveHolders();
  }

  lock(kind: LockKind, purpose: string): Promise<RepoLock> {
    return this.meta.lock(kind, purpose);
  }

  /** A local repository's lock directory (tests, tools); an object-storage repository has lock objects under `locks/` instead. */
  get locksDir(): string {
    return this.meta.where(LOCKS_DIR);
  }
}

/** DiskSource over a fixed index: never returns bytes that fail their checks. */
class IndexedDisk implements DiskSource {
  readonly size: number;
  readonly chunkSize: number;
  readonly chunkCount: number;

  /** Only over a local store: blocking reads are what decode workers use, and object storage has none. */
  readonly readChunkSync?: (i: number, scratch: Buffer, into?: Buffer) => Buffer | null;

  constructor(
    private readonly index: FixedIndex,
    private readonly store: ChunkStore,
    local: LocalChunkStore | undefined,
    private readonly codec: ChunkCodec,
  ) {
    this.size = index.size;
    this.chunkSize = index.chunkSize;
    this.chunkCount = chunkCountFor(index.size, index.chunkSize);
    if (local) this.readChunkSync = (i, scratch, into) => this.readLocalSync(local, i, scratch, into);
  }

  chunkId(i: number): string | null {
    if (!Number.isInteger(i) || i < 0 || i >= this.chunkCount) throw new RangeError(`chunk ${i} outside 0..${this.chunkCount - 1}`);
    return this.index.digests[i] ?? null;
  }

  async readChunk(i: number): Promise<Buffer | null> {
    const digest = this.chunkId(i);
    if (digest === null) return null;
    const blob = await this.store.get(digest).catch((err: unknown) => {
      throw this.asCorrupt(digest, err);
    });
    return this.checked(i, digest, () => this.codec.decode(digest, blob));
  }

  private readLocalSync(local: LocalChunkStore, i: number, scratch: Buffer, into?: Buffer): Buffer | null {
    const digest = this.chunkId(i);
    if (digest === null) return null;
    const expected = this.lengthOf(i);
    if (into && into.length < expected) throw new RangeError(`chunk ${i} needs ${expected} bytes, the buffer holds ${into.length}`);
    if (into && into.length >= directSlotSize(this.chunkSize)) {
      // Room for an O_DIRECT read: the blob lands in `into` itself, and a chunk stored as is is served from there.
      let direct: Buffer | undefined;
      try {
        direct = local.getDirectSync(digest, this.chunkSize, into);
      } catch (err) {
        throw this.asCorrupt(digest, err);
      }
      const blob = direct;
      if (blob) return this.checked(i, digest, () => this.codec.decodeInPlace(digest, blob, scratch, into.subarray(0, expected)));
    }
    const out = into ? into.subarray(0, expected) : Buffer.allocUnsafeSlow(expected);
    // The payload is read straight into `out`: a chunk stored as is is then hashed where it will be served, and never copied.
    let blob: Buffer;
    try {
      blob = local.getAroundSync(digest, scratch, out);
    } catch (err) {
      throw this.asCorrupt(digest, err);
    }
    this.checked(i, digest, () => this.codec.decodeAround(digest, blob, out));
    return out;
  }

  private lengthOf(i: number): number {
    return Math.min(this.chunkSize, this.size - i * this.chunkSize);
  }

  /** A chunk the store cannot give (missing, quarantined, overlong) as a CorruptChunkError naming the store; other errors as they are. */
  private asCorrupt(digest: string, err: unknown): unknown {
    if (err instanceof RestorelabError && (err.code === 'CHUNK_QUARANTINED' || err.code === 'CHUNK_NOT_FOUND')) {
      return new CorruptChunkError(
        digest,
        err.code === 'CHUNK_QUARANTINED' ? 'quarantined by verify' : 'missing from the store',
        this.store.path,
      );
    }
    return err instanceof CorruptChunkError ? new CorruptChunkError(digest, err.reason, this.store.path) : err;
  }

  /** Runs a decode of chunk `i`: its failures name the store, and the plaintext must be as long as the chunk. */
  private checked(i: number, digest: string, decode: () => Buffer): Buffer {
    let plain: Buffer;
    try {
      plain = decode();
    } catch (err) {
      throw this.asCorrupt(digest, err);
    }
    const expected = this.lengthOf(i);
    if (plain.length !== expected)
      throw new CorruptChunkError(digest, `decoded ${plain.length} bytes where chunk ${i} has ${expected}`, this.store.path);
    return plain;
  }
}

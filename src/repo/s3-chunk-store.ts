/**
 * The object-storage ChunkStore (S3 API: AWS, a Ceph RADOS Gateway, MinIO).
 * One object per blob, keyed like the local store's files:
 *
 *   <prefix>chunks/<first 2 hex digits>/<digest>       blobs
 *   <prefix>quarantine/<first 2 hex digits>/<digest>   quarantined by verify (local: `<digest>.bad`)
 *
 * Words, as S3 has them:
 * - *mtime* is the object's Last-Modified, set by the gateway's clock on
 *   every PUT and COPY. S3 has no utimes, so touch() copies the object onto
 *   itself with new metadata (`x-amz-meta-touched`), which the gateway
 *   records as a new write. Last-Modified comes back with every listing
 *   page, so gc needs no request per chunk to see ages.
 * - *durable*: a PUT that returned is durable (S3's contract), so sync() has
 *   nothing to do at any sync level, and insert() writes nothing temporary:
 *   an object appears whole or not at all.
 *
 * gc's cutoff is in the client's clock, Last-Modified in the gateway's. A
 * signed (SigV4) request is refused when the two differ by more than 15
 * minutes, so minGcMarginMs adds that much to gc's safety margin: no skew a
 * working client can have makes a fresh chunk look old.
 */
import type { S3Client } from '@aws-sdk/client-s3';
import type { ChunkStore, StoredChunk } from './api.js';
import { notFound, RestorelabError } from '../errors.js';
import { assertDigest } from './chunk-store.js';
import { CorruptChunkError } from './contract.js';
import { GC_SAFETY_MARGIN_MS } from './format.js';
import type { BlobIo } from './s3-blob-io.js';
import { s3Url, type S3Location, s3Sdk } from './s3-config.js';

export const S3_CHUNKS_AREA = 'chunks/';
export const S3_QUARANTINE_AREA = 'quarantine/';
/** How far a SigV4-signed request's clock may be from the gateway's before it is refused (AWS and RGW alike). */
export const SIGV4_MAX_SKEW_MS = 15 * 60 * 1000;
/** Keys per ListObjectsV2 page (the S3 maximum). */
const LIST_PAGE_MAX = 1000;
/**
 * Listing pages the inventory reads at most (8000 chunks, 31 GiB of 4 MiB chunks) before it gives up and
 * touch() asks the gateway chunk by chunk. Past that a backup that writes a few hundred chunks would pay
 * more in listing than the HEADs it saves.
 */
const INVENTORY_MAX_PAGES = 8;
/** Conditional PUTs an insert() makes before it gives up on a key the gateway refuses yet does not hold. */
const INSERT_ATTEMPTS = 3;

const DIGEST_KEY_RE = /\/([0-9a-f]{2})\/([0-9a-f]{64})$/;

export interface S3ChunkStoreOptions extends S3Location {
  client: S3Client;
  /**
   * How blobs are PUT (insert, replace) and fetched (get): the lean signed requests of s3-blob-io.ts,
   * which cost the main thread less than half the SDK's CPU per blob. Without it, through `client`.
   */
  blobIo?: BlobIo;
  /** The largest valid blob of this repository (maxBlobSize): a longer object is reported corrupt, not read into memory. */
  maxBlobBytes?: number;
  /** Keys per listing request; default (and S3's maximum) 1000. Tests lower it to cross page boundaries. */
  listPageSize?: number;
  /**
   * How far a client's clock may be from the gateway's, added to gc's margin; default SIGV4_MAX_SKEW_MS.
   * Tests against the gateway on their own host (one clock) set 0, so a chunk need not be 15 minutes old for gc.
   */
  clockSkewMs?: number;
  /** Listing pages the inventory may take (default INVENTORY_MAX_PAGES); 0 turns it off. Tests lower it to cross the limit. */
  inventoryMaxPages?: number;
  /**
   * Test seam: runs in removeIfUnused between the HEAD that finds the chunk old and its DELETE, so a test can
   * land a touch inside that window deterministically (test/repo/s3-sweep-race.test.ts).
   */
  betweenHeadAndDelete?: (digest: string) => Promise<void>;
}

interface S3ErrorShape {
  name?: string;
  Code?: string;
  $metadata?: { httpStatusCode?: number };
}

/** A conditional PUT (`If-None-Match: *`) refused because the key exists. */
function isPreconditionFailed(err: unknown): boolean {
  const e = err as S3ErrorShape;
  return e?.name === 'PreconditionFailed' || e?.Code === 'PreconditionFailed' || e?.$metadata?.httpStatusCode === 412;
}

function isNotFound(err: unknown): boolean {
  const e = err as S3ErrorShape;
  return e?.name === 'NotFound' || e?.name === 'NoSuchKey' || e?.Code === 'NoSuchKey' || e?.$metadata?.httpStatusCode === 404;
}

/**
 * A response body read into one buffer of its own, sized from Content-Length up front. The SDK's
 * transformToByteArray() keeps every socket read and then concatenates them: an extra copy of each
 * blob and garbage for the collector, a fifth of a restore's main-thread CPU (measured, bench/s3.ts).
 * The buffer owns its whole ArrayBuffer, so a restore can transfer it to a decode thread (getGivesOwnedBuffers).
 */
async function readBody(body: AsyncIterable<Uint8Array>, contentLength: number | undefined): Promise<Buffer> {
  if (contentLength === undefined) {
    const pieces: Uint8Array[] = [];
    for await (const piece of body) pieces.push(piece);
    const all = Buffer.concat(pieces);
    // Buffer.concat may hand back a slice of its shared pool: copy into a buffer that owns its memory.
    return Buffer.from(new Uint8Array(all));
  }
  const out = Buffer.from(new ArrayBuffer(contentLength));
  let at = 0;
  for await (const piece of body) {
    if (at + piece.length > contentLength) throw new Error(`the gateway sent more than the ${contentLength} bytes it announced`);
    out.set(piece, at);
    at += piece.length;
  }
  if (at !== contentLength) throw new Error(`the gateway sent ${at} of the ${contentLength} bytes it announced`);
  return out;
}

/** The blob requests through the SDK client, for a store built without the lean ones. */
function sdkBlobIo(client: S3Client): BlobIo {
  return {
    async put(Bucket, Key, Body, o) {
      await client.send(
        new (s3Sdk().PutObjectCommand)({ Bucket, Key, Body, ContentLength: Body.length, ...(o?.ifNoneMatch ? { IfNoneMatch: '*' } : {}) }),
      );
    },
    async get(Bucket, Key) {
      const r = await client.send(new (s3Sdk().GetObjectCommand)({ Bucket, Key }));
      if (!r.Body) throw new Error('the gateway sent no body');
      const body = r.Body;
      return {
        contentLength: r.ContentLength,
        body: body as unknown as AsyncIterable<Uint8Array>,
        cancel: () =>
          void body
            .transformToWebStream()
            .cancel()
            .catch(() => undefined),
      };
    },
  };
}

export class S3ChunkStore implements ChunkStore {
  /** `s3://bucket/prefix`, what every error names. */
  readonly path: string;
  /** get() fetches every blob into a fresh buffer (readBody). */
  readonly getGivesOwnedBuffers = true;
  readonly minGcMarginMs: number;
  private readonly client: S3Client;
  private readonly blobIo: BlobIo;
  private readonly bucket: string;
  private readonly prefix: string;
  private readonly maxBlobBytes: number | undefined;
  private readonly listPageSize: number;
  private readonly betweenHeadAndDelete: ((digest: string) => Promise<void>) | undefined;
  private readonly inventoryMaxPages: number;
  /** What the chunk area held at this store's first touch(), plus what it inserted since (see inventory()). */
  private inventoryLoad: Promise<Set<string> | undefined> | undefined;

  constructor(opts: S3ChunkStoreOptions) {
    this.inventoryMaxPages = opts.inventoryMaxPages ?? INVENTORY_MAX_PAGES;
    this.minGcMarginMs = (opts.clockSkewMs ?? SIGV4_MAX_SKEW_MS) + GC_SAFETY_MARGIN_MS;
    this.betweenHeadAndDelete = opts.betweenHeadAndDelete;
    this.listPageSize = Math.min(opts.listPageSize ?? LIST_PAGE_MAX, LIST_PAGE_MAX);
    this.client = opts.client;
    this.blobIo = opts.blobIo ?? sdkBlobIo(opts.client);
    this.bucket = opts.bucket;
    this.prefix = opts.prefix;
    this.maxBlobBytes = opts.maxBlobBytes;
    this.path = s3Url(opts);
  }

  private key(digest: string, area = S3_CHUNKS_AREA): string {
    assertDigest(digest, `chunk store ${this.path}`);
    return `${this.prefix}${area}${digest.slice(0, 2)}/${digest}`;
  }

  /** Size and Last-Modified of an object, undefined when there is none. */
  private async head(key: string): Promise<{ size: number; mtimeMs: number } | undefined> {
    try {
      const r = await this.client.send(new (s3Sdk().HeadObjectCommand)({ Bucket: this.bucket, Key: key }));
      return { size: r.ContentLength ?? 0, mtimeMs: r.LastModified?.getTime() ?? 0 };
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  async has(digest: string): Promise<boolean> {
    const key = this.key(digest);
    try {
      return (await this.head(key)) !== undefined;
    } catch (err) {
      throw this.ioError('check', digest, key, err);
    }
  }

  /**
   * A copy onto itself is the only way S3 has to move Last-Modified. The new
   * metadata value is what makes it a legal self-copy (S3 refuses one that
   * changes nothing); gateways keep the data where it is (RGW copies only
   * the head object of a copy within a pool).
   *
   * A chunk the inventory does not hold is reported missing without a
   * request: a first backup would otherwise HEAD every chunk it is about to
   * write, a third of its requests (bench/s3.ts). Should another writer have
   * stored it since the listing, the caller's insert() finds out (its
   * conditional PUT is refused, and it touches the chunk), so the answer
   * costs work, never safety. A chunk the inventory holds is copied onto
   * itself without the HEAD first; a 404 says gc took it since.
   */
  async touch(digest: string): Promise<boolean> {
    const key = this.key(digest);
    try {
      const known = await this.inventory();
      if (!known) return (await this.refresh(key)) !== undefined;
      if (!known.has(digest)) return false;
      if (await this.copyOntoItself(key)) return true;
      known.delete(digest);
      return false;
    } catch (err) {
      throw this.ioError('touch', digest, key, err);
    }
  }

  /** Starts the listing touch() answers from, so a backup's first chunk does not wait for it. */
  prepareWrites(): void {
    void this.inventory();
  }

  /**
   * The digests in the chunk area, listed once (at the first touch()) and kept up to date with this
   * store's own inserts and deletes; undefined when the area is larger than the listing limit, or the
   * listing failed (touch() then asks the gateway, as it always may).
   */
  private inventory(): Promise<Set<string> | undefined> {
    this.inventoryLoad ??= (async () => {
      if (this.inventoryMaxPages <= 0) return undefined;
      const found = new Set<string>();
      let pages = 0;
      try {
        for await (const page of this.pages(S3_CHUNKS_AREA)) {
          if (++pages > this.inventoryMaxPages) return undefined;
          for (const c of page) found.add(c.digest);
        }
      } catch {
        return undefined;
      }
      return found;
    })();
    return this.inventoryLoad;
  }

  /** Notes a chunk that is stored, or no longer, in a loaded inventory. */
  private noteStored(digest: string, stored: boolean): void {
    void this.inventoryLoad?.then((known) => (stored ? known?.add(digest) : known?.delete(digest)));
  }

  /** touch() of a key: its size once Last-Modified moved, undefined when there is no such object. */
  private async refresh(key: string): Promise<{ size: number } | undefined> {
    // A HEAD first: a backup touches every chunk it is about to write, most of them new, and on the RADOS
    // Gateway a copy of a missing object takes about 5 times a HEAD's 10 ms (measured, docs/operations.md).
    const found = await this.head(key);
    if (found === undefined) return undefined;
    return (await this.copyOntoItself(key)) ? { size: found.size } : undefined;
  }

  /** Moves Last-Modified of an object (touch()); false when there is no such object. */
  private async copyOntoItself(key: string): Promise<boolean> {
    try {
      await this.client.send(
        new (s3Sdk().CopyObjectCommand)({
          Bucket: this.bucket,
          Key: key,
          CopySource: this.copySource(key),
          MetadataDirective: 'REPLACE',
          Metadata: { touched: String(Date.now()) },
        }),
      );
      return true;
    } catch (err) {
      if (isNotFound(err)) return false;
      throw err;
    }
  }

  private copySource(key: string): string {
    return `${this.bucket}/${key.split('/').map(encodeURIComponent).join('/')}`;
  }

  /**
   * One request for a new chunk: a PUT with `If-None-Match: *`, which the gateway refuses (412) when the
   * key exists, so "is it stored?" and "store it" are one atomic step, as the local store's link() is.
   * A HEAD before the PUT (what this did first) cost a third of a backup's requests. A refused PUT means
   * the chunk is stored: it is touched like any found chunk; if gc removed it in between, the PUT is
   * tried again. Should a PUT that was stored lose its answer, the SDK's retry is refused and the chunk
   * is reported as existing: a failed backup then leaves it to gc rather than rolling it back, the safe side.
   */
  async insert(digest: string, blob: Buffer): Promise<{ existed: boolean; size: number }> {
    const key = this.key(digest);
    for (let attempt = 1; ; attempt++) {
      try {
        await this.blobIo.put(this.bucket, key, blob, { ifNoneMatch: true });
        this.noteStored(digest, true);
        return { existed: false, size: blob.length };
      } catch (err) {
        if (!isPreconditionFailed(err)) throw this.ioError('insert', digest, key, err);
      }
      let found: { size: number } | undefined;
      try {
        found = await this.refresh(key);
      } catch (err) {
        throw this.ioError('insert', digest, key, err);
      }
      if (found) {
        this.noteStored(digest, true);
        return { existed: true, size: found.size };
      }
      // Refused, then gone by the time of the touch: gc swept it in between. Once more is plenty; a store
      // that keeps refusing a key it does not hold is broken, and says so.
      if (attempt >= INSERT_ATTEMPTS)
        throw this.ioError('insert', digest, key, new Error(`the gateway refused ${INSERT_ATTEMPTS} PUTs of a key it does not hold`));
    }
  }

  private async put(digest: string, key: string, blob: Buffer, op: string): Promise<void> {
    try {
      await this.blobIo.put(this.bucket, key, blob);
    } catch (err) {
      throw this.ioError(op, digest, key, err);
    }
  }

  /**
   * A PUT replaces an object atomically: readers see the old blob or the new
   * one, never nothing. The damaged one is copied to quarantine first.
   */
  async replace(digest: string, blob: Buffer, opts: { keepDamaged: boolean }): Promise<void> {
    const key = this.key(digest);
    if (opts.keepDamaged) {
      const bad = this.key(digest, S3_QUARANTINE_AREA);
      try {
        await this.client.send(new (s3Sdk().CopyObjectCommand)({ Bucket: this.bucket, Key: bad, CopySource: this.copySource(key) }));
      } catch (err) {
        if (!isNotFound(err)) throw this.ioError('replace', digest, key, err);
      }
    }
    await this.put(digest, key, blob, 'replace');
    this.noteStored(digest, true);
  }

  /** Nothing to do: a PUT is durable once it returned (S3's contract), at every sync level. */
  async sync(): Promise<void> {}

  async get(digest: string): Promise<Buffer> {
    const key = this.key(digest);
    try {
      const r = await this.blobIo.get(this.bucket, key);
      if (this.maxBlobBytes !== undefined && (r.contentLength ?? 0) > this.maxBlobBytes) {
        r.cancel();
        throw new CorruptChunkError(
          digest,
          `object ${key} holds ${r.contentLength} bytes, more than any blob (${this.maxBlobBytes})`,
          this.path,
        );
      }
      return await readBody(r.body, r.contentLength);
    } catch (err) {
      if (err instanceof CorruptChunkError) throw err;
      if (!isNotFound(err)) throw this.ioError('read', digest, key, err);
    }
    let quarantined: boolean;
    try {
      quarantined = (await this.head(this.key(digest, S3_QUARANTINE_AREA))) !== undefined;
    } catch (err) {
      throw this.ioError('read', digest, key, err);
    }
    throw quarantined
      ? notFound(
          'CHUNK_QUARANTINED',
          `chunk ${digest} in store ${this.path} is quarantined (${this.key(digest, S3_QUARANTINE_AREA)}): verify found it corrupt`,
          'restore from another restore point or re-run a backup of the source to store the chunk again',
        )
      : notFound(
          'CHUNK_NOT_FOUND',
          `chunk ${digest} not found in store ${this.path} (bucket ${this.bucket}, key ${key})`,
          'run restorelab verify to find the restore points that need it',
        );
  }

  list(): AsyncIterable<StoredChunk> {
    return this.scan(S3_CHUNKS_AREA);
  }

  listQuarantined(): AsyncIterable<StoredChunk> {
    return this.scan(S3_QUARANTINE_AREA);
  }

  /** One ListObjectsV2 page at a time: memory stays at one page however many chunks there are. */
  private async *scan(area: string): AsyncIterable<StoredChunk> {
    for await (const page of this.pages(area)) yield* page;
  }

  /** The chunks of an area, a listing page at a time. */
  private async *pages(area: string): AsyncIterable<StoredChunk[]> {
    const prefix = this.prefix + area;
    let token: string | undefined;
    do {
      let page;
      try {
        page = await this.client.send(
          new (s3Sdk().ListObjectsV2Command)({ Bucket: this.bucket, Prefix: prefix, MaxKeys: this.listPageSize, ContinuationToken: token }),
        );
      } catch (err) {
        throw new RestorelabError(
          'CHUNK_IO',
          `cannot list ${prefix} in bucket ${this.bucket} (store ${this.path}): ${(err as Error).message}`,
          {
            cause: err,
          },
        );
      }
      const chunks: StoredChunk[] = [];
      for (const o of page.Contents ?? []) {
        const m = o.Key ? DIGEST_KEY_RE.exec(o.Key.slice(prefix.length - 1)) : null;
        // Only `<2 hex>/<digest>` with a matching shard counts; anything else under the area is not a chunk.
        if (!m || m[2]?.slice(0, 2) !== m[1]) continue;
        chunks.push({ digest: m[2] as string, size: o.Size ?? 0, mtimeMs: o.LastModified?.getTime() ?? 0 });
      }
      yield chunks;
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
  }

  /** Copy to quarantine, then delete: a crash between the two leaves both, and a second quarantine() finishes it. */
  async quarantine(digest: string): Promise<void> {
    const key = this.key(digest);
    try {
      await this.client.send(
        new (s3Sdk().CopyObjectCommand)({
          Bucket: this.bucket,
          Key: this.key(digest, S3_QUARANTINE_AREA),
          CopySource: this.copySource(key),
        }),
      );
    } catch (err) {
      if (isNotFound(err))
        throw notFound('CHUNK_NOT_FOUND', `cannot quarantine chunk ${digest}: not found in store ${this.path} (key ${key})`);
      throw this.ioError('quarantine', digest, key, err);
    }
    await this.delete(digest, key, 'quarantine');
  }

  private async delete(digest: string, key: string, op: string): Promise<void> {
    try {
      await this.client.send(new (s3Sdk().DeleteObjectCommand)({ Bucket: this.bucket, Key: key }));
    } catch (err) {
      if (!isNotFound(err)) throw this.ioError(op, digest, key, err);
    }
    this.noteStored(digest, false);
  }

  async remove(digest: string): Promise<number> {
    const key = this.key(digest);
    let found;
    try {
      found = await this.head(key);
    } catch (err) {
      throw this.ioError('remove', digest, key, err);
    }
    if (!found) return 0;
    await this.delete(digest, key, 'remove');
    return found.size;
  }

  /**
   * HEAD, then DELETE when Last-Modified is still before the cutoff. S3 has
   * no rename to close the window between the two as the local store does
   * (removeIfOlder): a touch() landing inside it is lost. Callers run it
   * inside a Sweep (api.ts), which tells the writers beside them to check
   * again what they touched before they commit (s3-sweep.ts).
   */
  async removeIfUnused(digest: string, cutoffMs: number, guard?: () => void): Promise<number> {
    const key = this.key(digest);
    let found;
    try {
      found = await this.head(key);
    } catch (err) {
      throw this.ioError('remove', digest, key, err);
    }
    if (!found || found.mtimeMs >= cutoffMs) return 0;
    await this.betweenHeadAndDelete?.(digest);
    // Last, so a pause anywhere before it (the HEAD's answer, the test seam) is seen.
    guard?.();
    await this.delete(digest, key, 'remove');
    return found.size;
  }

  private ioError(op: string, digest: string, key: string, err: unknown): RestorelabError {
    if (err instanceof RestorelabError) return err;
    const e = err as S3ErrorShape & Error;
    const status = e.$metadata?.httpStatusCode;
    return new RestorelabError(
      'CHUNK_IO',
      `cannot ${op} chunk ${digest} in store ${this.path} (bucket ${this.bucket}, key ${key}): ${e.name ?? 'error'}${status ? ` (HTTP ${status})` : ''}: ${e.message}`,
      {
        hint:
          status === 403
            ? 'check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY and the bucket policy'
            : 'check that the object storage (AWS_ENDPOINT_URL) is reachable; transient errors were already retried',
        cause: err,
      },
    );
  }
}

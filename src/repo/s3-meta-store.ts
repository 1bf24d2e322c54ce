/**
 * A repository's metadata on object storage: one object per local file,
 * same names, same bytes (`<prefix>config.json`, `<prefix>indexes/<name>.fidx`,
 * `<prefix>points/<id>.json`), and the lease locks of s3-lock.ts under
 * `<prefix>locks/`.
 *
 * A PUT is atomic and durable once it returned, so write() needs no temp
 * object and leftovers() has nothing to find. mtime is the object's
 * Last-Modified (the gateway's clock; touch() copies the object onto itself,
 * as S3ChunkStore.touch does).
 *
 * Errors: a gateway that does not answer at all is S3_UNREACHABLE naming the
 * endpoint; one that answers with an error is S3_REQUEST_FAILED naming the
 * object and the HTTP status.
 */
import type { S3Client } from '@aws-sdk/client-s3';
import type { Leftover, LockHolder, LockKind, RepoLock, Sweep, SweepView } from './api.js';
import { badInput, RestorelabError } from '../errors.js';
import type { MetaEntry, MetaStore } from './meta-store.js';
import { s3Url, type S3Location, s3Sdk } from './s3-config.js';
import { acquireS3Lock, liveS3Locks } from './s3-lock.js';
import { beginS3Sweep, sweptSince, takeSweepView } from './s3-sweep.js';

export interface S3MetaStoreOptions extends S3Location {
  client: S3Client;
  /** For messages: the endpoint the client talks to (AWS when unset). */
  endpoint?: string;
  /** Lock lease, and how long a sweep marker outlives its sweeper; default S3_LOCK_LEASE_MS. */
  leaseMs?: number;
  /**
   * Test seam: runs in removeIfOlder between the HEAD that finds the object
   * old and its DELETE, so a test can land a touch inside that window
   * deterministically (test/repo/s3-sweep-race.test.ts).
   */
  betweenHeadAndDelete?: (name: string) => Promise<void>;
}

interface S3ErrorShape {
  name?: string;
  code?: string;
  Code?: string;
  $metadata?: { httpStatusCode?: number };
}

function isNotFound(err: unknown): boolean {
  const e = err as S3ErrorShape;
  return e?.name === 'NotFound' || e?.name === 'NoSuchKey' || e?.Code === 'NoSuchKey' || e?.$metadata?.httpStatusCode === 404;
}

/** Whether the request never got an HTTP answer (refused, reset, timed out, unknown host). */
export function isUnreachable(err: unknown): boolean {
  const e = err as S3ErrorShape;
  return e?.$metadata?.httpStatusCode === undefined && !(err instanceof RestorelabError);
}

/** The RestorelabError for a failed request to the object storage of repository `repo`. */
export function s3Failure(err: unknown, what: string, repo: string, endpoint: string | undefined): RestorelabError {
  if (err instanceof RestorelabError) return err;
  const e = err as S3ErrorShape & Error;
  const at = endpoint ?? 'the AWS default endpoint';
  if (isUnreachable(err)) {
    return new RestorelabError(
      'S3_UNREACHABLE',
      `cannot ${what} of repository ${repo}: the object storage at ${at} does not answer (${e.code ?? e.name ?? 'error'}: ${e.message})`,
      { hint: 'check AWS_ENDPOINT_URL and that the gateway runs (for the test gateway: scripts/services status)', cause: err },
    );
  }
  const status = e.$metadata?.httpStatusCode;
  return new RestorelabError(
    'S3_REQUEST_FAILED',
    `cannot ${what} of repository ${repo} at ${at}: ${e.name ?? 'error'} (HTTP ${status}): ${e.message}`,
    {
      hint:
        status === 403
          ? 'check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY and the bucket policy'
          : 'transient errors were already retried',
      cause: err,
    },
  );
}

export class S3MetaStore implements MetaStore {
  readonly path: string;
  private readonly client: S3Client;
  private readonly bucket: string;
  private readonly prefix: string;

  constructor(private readonly opts: S3MetaStoreOptions) {
    this.client = opts.client;
    this.bucket = opts.bucket;
    this.prefix = opts.prefix;
    this.path = s3Url(opts);
  }

  where(name: string): string {
    return this.path + name;
  }

  private key(name: string): string {
    return this.prefix + name;
  }

  private fail(err: unknown, what: string): RestorelabError {
    return s3Failure(err, what, this.path, this.opts.endpoint);
  }

  async assertEmpty(): Promise<void> {
    let page;
    try {
      page = await this.client.send(new (s3Sdk().ListObjectsV2Command)({ Bucket: this.bucket, Prefix: this.prefix, MaxKeys: 1 }));
    } catch (err) {
      throw this.fail(err, 'list the prefix');
    }
    const first = page.Contents?.[0]?.Key;
    if (first !== undefined) {
      throw badInput(
        'REPO_NOT_EMPTY',
        `cannot create a repository at ${this.path}: the prefix already holds objects (${first})`,
        'choose a new prefix, e.g. s3://BUCKET/restorelab-2',
      );
    }
  }

  async prepare(): Promise<void> {}

  async read(name: string): Promise<Buffer | undefined> {
    try {
      const r = await this.client.send(new (s3Sdk().GetObjectCommand)({ Bucket: this.bucket, Key: this.key(name) }));
      const bytes = await r.Body?.transformToByteArray();
      return bytes ? Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength) : Buffer.alloc(0);
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw this.fail(err, `read ${name}`);
    }
  }

  async write(name: string, data: Buffer | string): Promise<void> {
    const body = typeof data === 'string' ? Buffer.from(data) : data;
    try {
      await this.client.send(
        new (s3Sdk().PutObjectCommand)({ Bucket: this.bucket, Key: this.key(name), Body: body, ContentLength: body.length }),
      );
    } catch (err) {
      throw this.fail(err, `write ${name}`);
    }
  }

  private async head(name: string): Promise<{ size: number; mtimeMs: number } | undefined> {
    try {
      const r = await this.client.send(new (s3Sdk().HeadObjectCommand)({ Bucket: this.bucket, Key: this.key(name) }));
      return { size: r.ContentLength ?? 0, mtimeMs: r.LastModified?.getTime() ?? 0 };
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw this.fail(err, `look up ${name}`);
    }
  }

  async exists(name: string): Promise<boolean> {
    return (await this.head(name)) !== undefined;
  }

  async touch(name: string): Promise<boolean> {
    const key = this.key(name);
    // A HEAD first, as S3ChunkStore.refresh: a backup's index is nearly always new, and on the RADOS Gateway
    // a copy of a missing object answers with an error body after about 45 ms, a HEAD in 3 (docs/operations.md).
    if (!(await this.head(name))) return false;
    try {
      await this.client.send(
        new (s3Sdk().CopyObjectCommand)({
          Bucket: this.bucket,
          Key: key,
          CopySource: `${this.bucket}/${key.split('/').map(encodeURIComponent).join('/')}`,
          MetadataDirective: 'REPLACE',
          Metadata: { touched: String(Date.now()) },
        }),
      );
      return true;
    } catch (err) {
      if (isNotFound(err)) return false;
      throw this.fail(err, `touch ${name}`);
    }
  }

  async remove(name: string): Promise<boolean> {
    // S3's DELETE succeeds on a missing key: the HEAD tells the caller whether there was one.
    if (!(await this.head(name))) return false;
    try {
      await this.client.send(new (s3Sdk().DeleteObjectCommand)({ Bucket: this.bucket, Key: this.key(name) }));
    } catch (err) {
      throw this.fail(err, `delete ${name}`);
    }
    return true;
  }

  async list(dir: string): Promise<MetaEntry[]> {
    const prefix = this.key(dir.endsWith('/') ? dir : `${dir}/`);
    const out: MetaEntry[] = [];
    let token: string | undefined;
    do {
      let page;
      try {
        page = await this.client.send(
          new (s3Sdk().ListObjectsV2Command)({ Bucket: this.bucket, Prefix: prefix, Delimiter: '/', ContinuationToken: token }),
        );
      } catch (err) {
        throw this.fail(err, `list ${dir}`);
      }
      for (const o of page.Contents ?? []) {
        const name = o.Key?.slice(prefix.length);
        if (name) out.push({ name, size: o.Size ?? 0, mtimeMs: o.LastModified?.getTime() ?? 0 });
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
    return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  /**
   * HEAD then DELETE, with the same window as S3ChunkStore.removeIfUnused: a
   * caller runs it inside a Sweep, which tells writers to check again what
   * they touched (s3-sweep.ts).
   */
  async removeIfOlder(name: string, cutoffMs: number, guard?: () => void): Promise<number> {
    const found = await this.head(name);
    if (!found || found.mtimeMs >= cutoffMs) return 0;
    await this.opts.betweenHeadAndDelete?.(name);
    guard?.();
    try {
      await this.client.send(new (s3Sdk().DeleteObjectCommand)({ Bucket: this.bucket, Key: this.key(name) }));
    } catch (err) {
      throw this.fail(err, `delete ${name}`);
    }
    return found.size;
  }

  /** None: a PUT leaves nothing temporary behind. */
  async leftovers(): Promise<Leftover[]> {
    return [];
  }

  async removeLeftover(): Promise<void> {}

  async lock(kind: LockKind, purpose: string): Promise<RepoLock> {
    // A writer's view must be taken before its first touch (s3-sweep.ts), which comes after this returns.
    // It is listed while the lock is taken rather than after: a view taken earlier can only see more
    // sweeps as having moved by the commit (a needless check, never a missed one), and the two listings
    // one after the other were about 100 ms of every backup's start on the RADOS Gateway.
    const view: Promise<SweepView | Error | undefined> =
      kind === 'shared'
        ? takeSweepView(this.lockOptions()).catch((err: unknown) => this.fail(err, 'list the sweep markers'))
        : Promise.resolve(undefined);
    let lock: RepoLock;
    try {
      lock = await acquireS3Lock(this.lockOptions(), kind, purpose);
    } catch (err) {
      await view;
      throw this.fail(err, `take a ${kind} lock`);
    }
    const sweepView = await view;
    if (sweepView instanceof Error) {
      await lock.release().catch(() => undefined);
      throw sweepView;
    }
    return {
      ...lock,
      ...(sweepView ? { sweepView } : {}),
      // Releasing runs in `finally` blocks: a gateway gone by then must not replace the error that matters.
      // The lock object it could not delete stops counting once its lease runs out (s3-lock.ts).
      release: () => lock.release().catch(() => undefined),
    };
  }

  async liveHolders(): Promise<LockHolder[]> {
    try {
      return await liveS3Locks(this.lockOptions());
    } catch (err) {
      throw this.fail(err, 'list the locks');
    }
  }

  async beginSweep(purpose: string, tidyBeforeMs?: number): Promise<Sweep> {
    let sweep: Sweep;
    try {
      sweep = await beginS3Sweep(this.lockOptions(), purpose, tidyBeforeMs);
    } catch (err) {
      throw this.fail(err, 'announce a sweep');
    }
    return {
      checkpoint: () => sweep.checkpoint().catch((err: unknown) => Promise.reject(this.fail(err, 'renew the sweep marker'))),
      assertLive: () => sweep.assertLive(),
      end: () => sweep.end().catch((err: unknown) => Promise.reject(this.fail(err, 'end the sweep marker'))),
    };
  }

  async sweptSince(view: SweepView): Promise<boolean> {
    try {
      return await sweptSince(this.lockOptions(), view);
    } catch (err) {
      throw this.fail(err, 'list the sweep markers');
    }
  }

  private lockOptions(): { client: S3Client; bucket: string; prefix: string; leaseMs?: number } {
    return {
      client: this.client,
      bucket: this.bucket,
      prefix: this.prefix,
      ...(this.opts.leaseMs !== undefined ? { leaseMs: this.opts.leaseMs } : {}),
    };
  }
}

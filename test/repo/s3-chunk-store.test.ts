/**
 * The S3 ChunkStore against a real RADOS Gateway (scripts/services): the
 * shared ChunkStore suite, bare and behind the concurrency limit, then what
 * only object storage has (key layout, listing pages, foreign keys, an
 * oversized object, refused credentials).
 */
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import {
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  type S3Client,
} from '@aws-sdk/client-s3';
import { RestorelabError } from '../../src/errors.js';
import type { ChunkStore } from '../../src/repo/api.js';
import { CorruptChunkError } from '../../src/repo/contract.js';
import { LimitedChunkStore } from '../../src/repo/limited-chunk-store.js';
import { S3ChunkStore, SIGV4_MAX_SKEW_MS } from '../../src/repo/s3-chunk-store.js';
import { createBlobIo } from '../../src/repo/s3-blob-io.js';
import { createS3Client, PAYLOAD_HASH_HEADER } from '../../src/repo/s3-config.js';
import { collectGarbage } from '../../src/repo/gc.js';
import { s3Scratch, s3Settings } from '../helpers/s3.js';
import { runChunkStoreSuite } from './fixtures/chunk-store-suite.js';

// Four runs of the shared suite on the gateway, each waiting out whole seconds of Last-Modified: past tap's 30 s default.
t.setTimeout(180_000);

function blob(n = 1000): { digest: string; data: Buffer } {
  const data = randomBytes(n);
  return { digest: createHash('sha256').update(data).digest('hex'), data };
}

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

t.test('the shared ChunkStore suite on the RADOS Gateway', async (t) => {
  runChunkStoreSuite(t, async (t) => {
    const s = await s3Scratch(t);
    return { store: new S3ChunkStore({ client: s.client, bucket: s.bucket, prefix: s.prefix }) };
  });
});

t.test('the shared ChunkStore suite on the RADOS Gateway, blobs PUT and fetched by the lean signed requests (s3-blob-io.ts)', async (t) => {
  runChunkStoreSuite(t, async (t) => {
    const s = await s3Scratch(t);
    return {
      store: new S3ChunkStore({ client: s.client, bucket: s.bucket, prefix: s.prefix, blobIo: createBlobIo(s3Settings(s.service)) }),
    };
  });
});

t.test('the shared ChunkStore suite on the RADOS Gateway, without the inventory (touch() asks the gateway)', async (t) => {
  runChunkStoreSuite(t, async (t) => {
    const s = await s3Scratch(t);
    return { store: new S3ChunkStore({ client: s.client, bucket: s.bucket, prefix: s.prefix, inventoryMaxPages: 0 }) };
  });
});

t.test('the shared suite through LimitedChunkStore (4 in flight) on the RADOS Gateway', async (t) => {
  runChunkStoreSuite(t, async (t) => {
    const s = await s3Scratch(t);
    return { store: new LimitedChunkStore(new S3ChunkStore({ client: s.client, bucket: s.bucket, prefix: s.prefix }), 4) };
  });
});

t.test('s3 store: blobs are keyed <prefix>chunks/<2 hex>/<digest>, quarantined ones under <prefix>quarantine/', async (t) => {
  const s = await s3Scratch(t);
  const store = new S3ChunkStore({ client: s.client, bucket: s.bucket, prefix: s.prefix });
  t.equal(store.path, `s3://${s.bucket}/${s.prefix}`);
  t.equal((store as ChunkStore).fileOf, undefined, 'no file path is made up for an object');
  const a = blob();
  const b = blob();
  await store.insert(a.digest, a.data);
  await store.insert(b.digest, b.data);
  await store.quarantine(b.digest);
  const page = await s.client.send(new ListObjectsV2Command({ Bucket: s.bucket, Prefix: s.prefix }));
  t.same(
    (page.Contents ?? []).map((o) => o.Key).sort(),
    [`${s.prefix}chunks/${a.digest.slice(0, 2)}/${a.digest}`, `${s.prefix}quarantine/${b.digest.slice(0, 2)}/${b.digest}`].sort(),
  );
  const raw = await s.client.send(new GetObjectCommand({ Bucket: s.bucket, Key: `${s.prefix}chunks/${a.digest.slice(0, 2)}/${a.digest}` }));
  t.ok(Buffer.from(await raw.Body!.transformToByteArray()).equals(a.data), 'the object is the blob, byte for byte');
});

t.test('s3 store: list() crosses listing pages and ignores keys that are not chunks', async (t) => {
  const s = await s3Scratch(t);
  const store = new S3ChunkStore({ client: s.client, bucket: s.bucket, prefix: s.prefix, listPageSize: 7 });
  const blobs = Array.from({ length: 23 }, (_, i) => blob(50 + i));
  await Promise.all(blobs.map((b) => store.insert(b.digest, b.data)));
  const d = blobs[0]!.digest;
  for (const key of [`chunks/${d.slice(0, 2)}/${d}.tmp`, `chunks/zz/${d}`, `chunks/00/${d}`, 'chunks/readme']) {
    await s.client.send(new PutObjectCommand({ Bucket: s.bucket, Key: s.prefix + key, Body: 'x' }));
  }
  const listed = await collect(store.list());
  t.same(listed.map((c) => c.digest).sort(), blobs.map((b) => b.digest).sort(), 'all 23 over 4 pages, nothing else');
  for (const c of listed) t.ok(c.mtimeMs > Date.now() - 600_000, 'Last-Modified is the mtime');
});

t.test('s3 store: an object longer than any blob is reported corrupt, naming the store', async (t) => {
  const s = await s3Scratch(t);
  const store = new S3ChunkStore({ client: s.client, bucket: s.bucket, prefix: s.prefix, maxBlobBytes: 100 });
  const b = blob(101);
  await store.insert(b.digest, b.data);
  const err = await store.get(b.digest).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.ok(err instanceof CorruptChunkError, 'CorruptChunkError');
  t.match((err as Error).message, store.path);
});

t.test('s3 store: refused credentials fail with CHUNK_IO naming bucket, key and the HTTP status', async (t) => {
  const s = await s3Scratch(t);
  const bad = createS3Client({ ...s3Settings(s.service), secretAccessKey: 'wrong-' + s.service.secretAccessKey });
  t.teardown(() => bad.destroy());
  const store = new S3ChunkStore({ client: bad, bucket: s.bucket, prefix: s.prefix });
  const b = blob();
  const err = (await store.insert(b.digest, b.data).then(
    () => undefined,
    (e: unknown) => e,
  )) as RestorelabError;
  t.ok(err instanceof RestorelabError);
  t.equal(err.code, 'CHUNK_IO');
  t.match(err.message, `bucket ${s.bucket}`);
  t.match(err.message, `key ${s.prefix}chunks/${b.digest.slice(0, 2)}/${b.digest}`);
  t.match(err.message, /HTTP 403/);
  t.match(err.hint ?? '', /AWS_SECRET_ACCESS_KEY/);
});

t.test('s3 store: gc keeps the clock-skew margin SigV4 allows on top of its own', async (t) => {
  const s = await s3Scratch(t);
  const store = new S3ChunkStore({ client: s.client, bucket: s.bucket, prefix: s.prefix });
  const b = blob();
  await store.insert(b.digest, b.data);
  // A minimal RepositoryMaintenance around the real store: no points, so every chunk is unreferenced.
  const repo = {
    chunks: store,
    lock: async () => ({ kind: 'gc' as const, since: Date.now(), staleRemoved: [], release: async () => undefined }),
    liveHolders: async () => [],
    scanPoints: async () => ({ points: [], problems: [] }),
    listIndexes: async () => [],
    leftovers: async () => [],
    beginSweep: async () => ({ checkpoint: async () => undefined, assertLive: () => undefined, end: async () => undefined }),
  } as unknown as Parameters<typeof collectGarbage>[0];
  const report = await collectGarbage(repo, { safetyMarginMs: 0 });
  t.equal(report.chunksRemoved, 0, 'a chunk written a moment ago is not collected even with --safety-margin 0');
  t.equal(report.chunksKeptRecent, 1);
  t.ok(Date.parse(report.cutoff) <= Date.now() - SIGV4_MAX_SKEW_MS, 'the cutoff lies at least 15 minutes back');
  t.ok(await store.has(b.digest));
});

/** The commands a client sends, by name, in order (a middleware at the first step sees each once, before retries). */
function recordCommands(client: S3Client): string[] {
  const sent: string[] = [];
  client.middlewareStack.add(
    (next, context) => async (args) => {
      sent.push(context.commandName ?? '?');
      return next(args);
    },
    { step: 'initialize', name: 'recordCommands' },
  );
  return sent;
}

t.test('s3 store: insert() of a new chunk is one conditional PUT; of a stored one, a refused PUT and a touch', async (t) => {
  const s = await s3Scratch(t);
  const client = createS3Client(s3Settings(s.service));
  t.teardown(() => client.destroy());
  const sent = recordCommands(client);
  const store = new S3ChunkStore({ client, bucket: s.bucket, prefix: s.prefix });
  const b = blob();
  t.same(await store.insert(b.digest, b.data), { existed: false, size: b.data.length });
  t.same(sent, ['PutObjectCommand'], 'no HEAD before the PUT of a new chunk');
  const key = `${s.prefix}chunks/${b.digest.slice(0, 2)}/${b.digest}`;
  const before = await s.client.send(new HeadObjectCommand({ Bucket: s.bucket, Key: key }));
  // Last-Modified has whole seconds: wait into the next one, so a touch is visible.
  await new Promise((r) => setTimeout(r, 1100));
  sent.length = 0;
  const other = blob(b.data.length);
  t.same(await store.insert(b.digest, other.data), { existed: true, size: b.data.length }, 'the stored size, not the offered one');
  t.same(sent, ['PutObjectCommand', 'HeadObjectCommand', 'CopyObjectCommand'], 'refused, then touched');
  const after = await s.client.send(new HeadObjectCommand({ Bucket: s.bucket, Key: key }));
  t.ok(after.LastModified!.getTime() > before.LastModified!.getTime(), 'a stored chunk found by insert() is touched (gc honours it)');
  t.ok((await store.get(b.digest)).equals(b.data), 'the stored blob is kept as it is');
});

t.test('s3 store: a chunk that gc removes between a refused PUT and its touch is stored anew', async (t) => {
  const s = await s3Scratch(t);
  const client = createS3Client(s3Settings(s.service));
  t.teardown(() => client.destroy());
  const b = blob();
  const key = `${s.prefix}chunks/${b.digest.slice(0, 2)}/${b.digest}`;
  await s.client.send(new PutObjectCommand({ Bucket: s.bucket, Key: key, Body: b.data }));
  // The gateway refuses the PUT (the chunk is there); "gc" deletes it before insert() gets to touch it.
  let swept = false;
  client.middlewareStack.add(
    (next, context) => async (args) => {
      try {
        return await next(args);
      } catch (err) {
        if (context.commandName === 'PutObjectCommand' && !swept) {
          swept = true;
          await s.client.send(new DeleteObjectCommand({ Bucket: s.bucket, Key: key }));
        }
        throw err;
      }
    },
    { step: 'initialize', name: 'sweepAfterRefusal' },
  );
  const store = new S3ChunkStore({ client, bucket: s.bucket, prefix: s.prefix });
  t.same(await store.insert(b.digest, b.data), { existed: false, size: b.data.length });
  t.ok(swept, 'the first PUT was refused');
  t.ok((await store.get(b.digest)).equals(b.data), 'the chunk is stored again');
});

t.test('s3 client: PUTs are signed without a payload hash (the blob is checked by its digest, not hashed twice)', async (t) => {
  const s = await s3Scratch(t);
  const client = createS3Client(s3Settings(s.service));
  t.teardown(() => client.destroy());
  const seen: string[] = [];
  // After signing (finalizeRequest): the header the gateway gets.
  client.middlewareStack.add(
    (next) => async (args) => {
      seen.push((args.request as { headers: Record<string, string> }).headers[PAYLOAD_HASH_HEADER] ?? '(none)');
      return next(args);
    },
    { step: 'deserialize', name: 'seeSignedHeaders' },
  );
  const store = new S3ChunkStore({ client, bucket: s.bucket, prefix: s.prefix });
  const b = blob();
  await store.insert(b.digest, b.data);
  t.same(seen, ['UNSIGNED-PAYLOAD']);
  t.ok((await store.get(b.digest)).equals(b.data), 'and the gateway took it');
});

t.test('s3 store: touch() answers from one listing: nothing sent for a chunk the bucket lacks, one copy for a stored one', async (t) => {
  const s = await s3Scratch(t);
  const stored = blob();
  await new S3ChunkStore({ client: s.client, bucket: s.bucket, prefix: s.prefix }).insert(stored.digest, stored.data);
  const client = createS3Client(s3Settings(s.service));
  t.teardown(() => client.destroy());
  const sent = recordCommands(client);
  const store = new S3ChunkStore({ client, bucket: s.bucket, prefix: s.prefix });
  const fresh = Array.from({ length: 5 }, () => blob());
  for (const b of fresh) t.notOk(await store.touch(b.digest), 'a chunk the bucket lacks is not found');
  t.same(sent, ['ListObjectsV2Command'], 'one listing, no HEAD per missing chunk');
  t.notOk(await store.has(fresh[0]!.digest), 'and touch() created nothing');
  sent.length = 0;
  const key = `${s.prefix}chunks/${stored.digest.slice(0, 2)}/${stored.digest}`;
  const before = await s.client.send(new HeadObjectCommand({ Bucket: s.bucket, Key: key }));
  await new Promise((r) => setTimeout(r, 1100));
  t.ok(await store.touch(stored.digest), 'a listed chunk is found');
  t.same(sent, ['CopyObjectCommand'], 'by its copy onto itself, no HEAD first');
  const after = await s.client.send(new HeadObjectCommand({ Bucket: s.bucket, Key: key }));
  t.ok(after.LastModified!.getTime() > before.LastModified!.getTime(), 'and its Last-Modified moved (gc honours it)');
  sent.length = 0;
  const b = fresh[1]!;
  await store.insert(b.digest, b.data);
  t.ok(await store.touch(b.digest), 'a chunk this store inserted is found');
  t.same(sent, ['PutObjectCommand', 'CopyObjectCommand']);
});

t.test(
  's3 store: a chunk stored by another writer after the listing is found by insert() and touched; one gc removed is stored anew',
  async (t) => {
    const s = await s3Scratch(t);
    const store = new S3ChunkStore({ client: s.client, bucket: s.bucket, prefix: s.prefix });
    const other = new S3ChunkStore({ client: s.client, bucket: s.bucket, prefix: s.prefix });
    const late = blob();
    t.notOk(await store.touch(late.digest), 'the listing is taken; the chunk is not there yet');
    await other.insert(late.digest, late.data);
    const key = `${s.prefix}chunks/${late.digest.slice(0, 2)}/${late.digest}`;
    const before = await s.client.send(new HeadObjectCommand({ Bucket: s.bucket, Key: key }));
    await new Promise((r) => setTimeout(r, 1100));
    t.notOk(await store.touch(late.digest), 'the listing does not know it: touch() says missing, so the caller inserts');
    t.same(await store.insert(late.digest, late.data), { existed: true, size: late.data.length }, 'insert() finds it stored');
    const after = await s.client.send(new HeadObjectCommand({ Bucket: s.bucket, Key: key }));
    t.ok(after.LastModified!.getTime() > before.LastModified!.getTime(), 'and touches it, so gc keeps it for this writer');
    const gone = blob();
    await store.insert(gone.digest, gone.data);
    t.equal(await other.remove(gone.digest), gone.data.length, 'another process removes a chunk this store knows');
    t.notOk(await store.touch(gone.digest), 'touch() of it finds it gone (its copy gets a 404)');
    t.same(await store.insert(gone.digest, gone.data), { existed: false, size: gone.data.length }, 'and it is stored anew');
    t.ok((await store.get(gone.digest)).equals(gone.data));
  },
);

t.test('s3 store: a chunk area larger than the inventory limit is not listed whole; touch() asks the gateway', async (t) => {
  const s = await s3Scratch(t);
  const seed = new S3ChunkStore({ client: s.client, bucket: s.bucket, prefix: s.prefix });
  const blobs = Array.from({ length: 5 }, () => blob());
  for (const b of blobs) await seed.insert(b.digest, b.data);
  const client = createS3Client(s3Settings(s.service));
  t.teardown(() => client.destroy());
  const sent = recordCommands(client);
  const store = new S3ChunkStore({ client, bucket: s.bucket, prefix: s.prefix, listPageSize: 2, inventoryMaxPages: 2 });
  const missing = blob();
  t.notOk(await store.touch(missing.digest));
  t.same(
    sent,
    ['ListObjectsV2Command', 'ListObjectsV2Command', 'ListObjectsV2Command', 'HeadObjectCommand'],
    'two pages, a third says there is more: a HEAD',
  );
  sent.length = 0;
  t.ok(await store.touch(blobs[4]!.digest), 'a stored chunk is found');
  t.same(sent, ['HeadObjectCommand', 'CopyObjectCommand'], 'by HEAD and copy, the listing is not tried again');
});

t.test('s3 store: get() hands back a buffer that owns its memory, so a restore can move it to a decode thread', async (t) => {
  const s = await s3Scratch(t);
  const store = new S3ChunkStore({ client: s.client, bucket: s.bucket, prefix: s.prefix });
  t.equal(store.getGivesOwnedBuffers, true);
  for (const n of [1, 1000, 3 * 1024 * 1024 + 7]) {
    const b = blob(n);
    await store.insert(b.digest, b.data);
    const got = await store.get(b.digest);
    t.ok(got.equals(b.data), `${n} bytes come back whole`);
    t.ok(got.byteOffset === 0 && got.buffer.byteLength === n, 'in an ArrayBuffer of exactly their size');
  }
});

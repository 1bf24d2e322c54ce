/**
 * The lean blob PUT and GET (src/repo/s3-blob-io.ts): its SigV4 signature is one the
 * real RADOS Gateway accepts (keys with characters that need encoding too),
 * its errors carry what the SDK's do (S3 code, HTTP status; none when nothing
 * answered), and it retries as the SDK's standard mode does: 5xx and
 * throttling again, up to S3_MAX_ATTEMPTS, a refusal (403, 412) never.
 */
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import { createServer as createNetServer, type AddressInfo } from 'node:net';
import { GetObjectCommand } from '@aws-sdk/client-s3';
import { RestorelabError } from '../../src/errors.js';
import { CorruptChunkError } from '../../src/repo/contract.js';
import { createBlobIo, type S3RequestError } from '../../src/repo/s3-blob-io.js';
import { S3ChunkStore } from '../../src/repo/s3-chunk-store.js';
import { S3_MAX_ATTEMPTS } from '../../src/repo/s3-config.js';
import { s3Scratch, s3Settings } from '../helpers/s3.js';

async function failure(p: Promise<unknown>): Promise<S3RequestError & { code?: string }> {
  return p.then(
    () => {
      throw new Error('expected a failure');
    },
    (e: unknown) => e as S3RequestError,
  );
}

t.test('the gateway takes the signed PUT, under a key whose characters need encoding', async (t) => {
  const s = await s3Scratch(t);
  const put = createBlobIo(s3Settings(s.service)).put;
  const body = randomBytes(300_000);
  const key = `${s.prefix}odd name/!'()*+,;=&$@~ü/${createHash('sha256').update(body).digest('hex')}`;
  await put(s.bucket, key, body, { ifNoneMatch: true });
  const r = await s.client.send(new GetObjectCommand({ Bucket: s.bucket, Key: key }));
  t.ok(Buffer.from(await r.Body!.transformToByteArray()).equals(body), 'the stored bytes are the ones sent');
  const refused = await failure(put(s.bucket, key, randomBytes(10), { ifNoneMatch: true }));
  t.equal(refused.$metadata?.httpStatusCode, 412, 'a conditional PUT of an existing key is refused');
  t.equal(refused.name, 'PreconditionFailed');
  await put(s.bucket, key, body.subarray(0, 10));
  const again = await s.client.send(new GetObjectCommand({ Bucket: s.bucket, Key: key }));
  t.equal((await again.Body!.transformToByteArray()).length, 10, 'a plain PUT replaces the object');
});

t.test('GET: the bytes stored, the Content-Length, a missing key as NoSuchKey 404; the store reads through it', async (t) => {
  const s = await s3Scratch(t);
  const io = createBlobIo(s3Settings(s.service));
  const body = randomBytes(2_000_000);
  const key = `${s.prefix}odd name/!'()*/blob`;
  await io.put(s.bucket, key, body);
  const got = await io.get(s.bucket, key);
  t.equal(got.contentLength, body.length);
  const pieces: Buffer[] = [];
  for await (const piece of got.body) pieces.push(Buffer.from(piece));
  t.ok(Buffer.concat(pieces).equals(body), 'the bytes stored');
  const missing = await failure(io.get(s.bucket, `${s.prefix}nothing`));
  t.equal(missing.$metadata?.httpStatusCode, 404);
  t.equal(missing.name, 'NoSuchKey');

  const store = new S3ChunkStore({ client: s.client, bucket: s.bucket, prefix: s.prefix, blobIo: io, maxBlobBytes: 100 });
  const data = randomBytes(1000);
  const digest = createHash('sha256').update(data).digest('hex');
  await store.insert(digest, data);
  const err = await failure(store.get(digest));
  t.ok(err instanceof CorruptChunkError, 'an object longer than any blob is corrupt, not read into memory');
  const missingChunk = await failure(store.get('0'.repeat(64)));
  t.equal((missingChunk as unknown as RestorelabError).code, 'CHUNK_NOT_FOUND');
});

t.test('refused credentials: HTTP 403 with the S3 code, not retried; the store says CHUNK_IO with the hint', async (t) => {
  const s = await s3Scratch(t);
  const settings = { ...s3Settings(s.service), secretAccessKey: 'wrong-' + s.service.secretAccessKey };
  const err = await failure(createBlobIo(settings).put(s.bucket, `${s.prefix}x`, randomBytes(10)));
  t.equal(err.$metadata?.httpStatusCode, 403);
  t.equal(err.name, 'SignatureDoesNotMatch');
  const store = new S3ChunkStore({ client: s.client, bucket: s.bucket, prefix: s.prefix, blobIo: createBlobIo(settings) });
  const data = randomBytes(100);
  const stored = await failure(store.insert(createHash('sha256').update(data).digest('hex'), data));
  t.ok(stored instanceof RestorelabError);
  t.equal((stored as unknown as RestorelabError).code, 'CHUNK_IO');
  t.match(stored.message, /HTTP 403/);
  t.match((stored as unknown as RestorelabError).hint ?? '', /AWS_SECRET_ACCESS_KEY/);
});

/** A stand-in gateway that answers each PUT with the next status of `answers` (then 200), after reading the body. */
async function scripted(
  t: { teardown: (fn: () => Promise<void>) => void },
  answers: number[],
): Promise<{ url: string; seen: IncomingMessage[] }> {
  const seen: IncomingMessage[] = [];
  const server: Server = createServer((req, res) => {
    seen.push(req);
    req.resume();
    req.on('end', () => {
      const status = answers.shift() ?? 200;
      const code = status === 503 ? 'SlowDown' : 'InternalError';
      res.writeHead(status, { 'content-type': 'application/xml' });
      res.end(status === 200 ? '' : `<?xml version="1.0"?><Error><Code>${code}</Code><Message>scripted ${status}</Message></Error>`);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen };
}

const creds = { region: 'us-east-1', accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'secret' };

t.test('5xx and throttling are tried again; after S3_MAX_ATTEMPTS the last answer stands', async (t) => {
  const flaky = await scripted(t, [503, 500]);
  await createBlobIo({ ...creds, endpoint: flaky.url }).put('b', 'k', randomBytes(10));
  t.equal(flaky.seen.length, 3, 'two failures, then the PUT that went through');
  t.equal(flaky.seen[0]?.headers['x-amz-content-sha256'], 'UNSIGNED-PAYLOAD');
  t.match(flaky.seen[0]?.headers.authorization ?? '', /^AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE\/\d{8}\/us-east-1\/s3\/aws4_request, /);
  t.equal(flaky.seen[0]?.url, '/b/k', 'path style');

  const flakyGet = await scripted(t, [503]);
  const got = await createBlobIo({ ...creds, endpoint: flakyGet.url }).get('b', 'k');
  for await (const piece of got.body) void piece;
  t.equal(flakyGet.seen.length, 2, 'a GET is tried again too');
  t.equal(flakyGet.seen[1]?.method, 'GET');

  const broken = await scripted(t, Array(10).fill(500));
  const err = await failure(createBlobIo({ ...creds, endpoint: broken.url }).put('b', 'k', randomBytes(10)));
  t.equal(broken.seen.length, S3_MAX_ATTEMPTS);
  t.equal(err.$metadata?.httpStatusCode, 500);
  t.equal(err.name, 'InternalError');
  t.equal(err.message, 'scripted 500');

  const refused = await scripted(t, [412]);
  const e412 = await failure(createBlobIo({ ...creds, endpoint: refused.url }).put('b', 'k', randomBytes(10), { ifNoneMatch: true }));
  t.equal(refused.seen.length, 1, 'a refusal is an answer, not retried');
  t.equal(refused.seen[0]?.headers['if-none-match'], '*');
  t.equal(e412.$metadata?.httpStatusCode, 412);
});

t.test('nothing listens: an error without an HTTP status, after the retries', async (t) => {
  // A port nothing listens on: one the kernel gave a server that is closed again.
  const server = createNetServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  await new Promise<void>((r) => server.close(() => r()));
  const err = await failure(createBlobIo({ ...creds, endpoint: `http://127.0.0.1:${port}` }).put('b', 'k', randomBytes(10)));
  t.equal(err.$metadata, undefined, 'no HTTP answer');
  t.equal(err.code, 'ECONNREFUSED');
});

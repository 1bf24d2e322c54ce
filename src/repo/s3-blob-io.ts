/**
 * The two requests that carry blobs, a PUT of a new chunk (backup) and a
 * GET of a stored one (restore, publish, verify), without the AWS SDK: a
 * SigV4-signed `node:http(s)` request, path-style, with `UNSIGNED-PAYLOAD`
 * as the SDK client of s3-config.ts sends it.
 *
 * Why: the SDK costs about 2.4 ms of CPU per 1.3 MiB PUT on the main thread
 * (its middleware, endpoint rules, serializers, signer and response parser),
 * this 1.0 ms (measured on the test gateway, docs/operations.md). A backup of
 * 1 GiB makes about 225 of them on two cores it shares with the gateway, so
 * that is 0.3 s of CPU and a tenth of its wall time; a restore as many GETs.
 * Everything else (listings, copies, HEADs, metadata) stays on the SDK.
 *
 * It keeps the SDK client's contract where callers depend on it: errors are
 * shaped like the SDK's (`name` is the S3 error code, `$metadata.
 * httpStatusCode`; none when there was no answer at all), and the SDK's
 * standard retry (S3_MAX_ATTEMPTS attempts, exponential backoff with full
 * jitter) covers 5xx answers, throttling and dropped connections before an
 * answer; a body cut off midway fails, as with the SDK.
 */
import { createHash, createHmac } from 'node:crypto';
import { Agent, request as httpRequest, type IncomingMessage } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { setTimeout as sleep } from 'node:timers/promises';
import { S3_MAX_ATTEMPTS, S3_MAX_SOCKETS, type S3Settings } from './s3-config.js';

/** PUTs `body` under `key`; with `ifNoneMatch`, only when the key does not exist (412 PreconditionFailed otherwise). */
export type BlobPut = (bucket: string, key: string, body: Buffer, opts?: { ifNoneMatch?: boolean }) => Promise<void>;

/** An object's body as it arrives: read it to the end, or cancel() it. */
export interface BlobBody {
  /** Content-Length, when the gateway sent one. */
  contentLength: number | undefined;
  body: AsyncIterable<Uint8Array>;
  cancel(): void;
}

/** GETs `key`: its body once the answer is 200; a 404 rejects with name NoSuchKey and httpStatusCode 404. */
export type BlobGet = (bucket: string, key: string) => Promise<BlobBody>;

export interface BlobIo {
  put: BlobPut;
  get: BlobGet;
}

/** An error as the SDK throws it: what s3-chunk-store.ts and s3-meta-store.ts look at. */
export interface S3RequestError extends Error {
  Code?: string;
  $metadata?: { httpStatusCode?: number };
}

/** The SDK's standard retry: base delay and cap of its exponential backoff (ms). */
const RETRY_BASE_MS = 100;
const RETRY_CAP_MS = 20_000;
/** Answers and socket errors the SDK's standard retry mode tries again. */
const RETRY_STATUS = new Set([429, 500, 502, 503, 504]);
const RETRY_CODES = new Set(['ECONNRESET', 'ECONNREFUSED', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND']);
const THROTTLING = new Set([
  'SlowDown',
  'Throttling',
  'ThrottlingException',
  'RequestLimitExceeded',
  'RequestThrottled',
  'TooManyRequests',
]);

/** RFC 3986 encoding of one path segment, as SigV4 wants it (encodeURIComponent leaves !'()* alone). */
function encodeSegment(s: string): string {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

const hmac = (key: Buffer | string, data: string): Buffer => createHmac('sha256', key).update(data).digest();

export function createBlobIo(settings: S3Settings): BlobIo {
  const endpoint = new URL(settings.endpoint ?? `https://s3.${settings.region}.amazonaws.com`);
  const https = endpoint.protocol === 'https:';
  const agent = https
    ? new HttpsAgent({ keepAlive: true, maxSockets: S3_MAX_SOCKETS })
    : new Agent({ keepAlive: true, maxSockets: S3_MAX_SOCKETS });
  const basePath = endpoint.pathname.replace(/\/+$/, '');
  // The signing key changes once a day (SigV4 scope); derived once per day, not per request.
  let signingKey: { day: string; key: Buffer } | undefined;

  const signedHeaders = (method: string, path: string, headers: Record<string, string>): Record<string, string> => {
    const amzDate = new Date().toISOString().replace(/[-:]|\.\d{3}/g, '');
    const day = amzDate.slice(0, 8);
    const all: Record<string, string> = {
      ...headers,
      host: endpoint.host,
      'x-amz-content-sha256': 'UNSIGNED-PAYLOAD',
      'x-amz-date': amzDate,
    };
    const names = Object.keys(all).sort();
    const canonical = [method, path, '', ...names.map((n) => `${n}:${all[n]}`), '', names.join(';'), 'UNSIGNED-PAYLOAD'].join('\n');
    const scope = `${day}/${settings.region}/s3/aws4_request`;
    const toSign = ['AWS4-HMAC-SHA256', amzDate, scope, createHash('sha256').update(canonical).digest('hex')].join('\n');
    if (signingKey?.day !== day) {
      const k = hmac(hmac(hmac(hmac(`AWS4${settings.secretAccessKey}`, day), settings.region), 's3'), 'aws4_request');
      signingKey = { day, key: k };
    }
    const signature = createHmac('sha256', signingKey.key).update(toSign).digest('hex');
    return {
      ...all,
      authorization: `AWS4-HMAC-SHA256 Credential=${settings.accessKeyId}/${scope}, SignedHeaders=${names.join(';')}, Signature=${signature}`,
    };
  };

  /** One request; resolves with the answer once it is 2xx, rejects with the S3 error otherwise. */
  const send = (
    method: 'GET' | 'PUT',
    bucket: string,
    key: string,
    body: Buffer | undefined,
    extra: Record<string, string>,
  ): Promise<IncomingMessage> => {
    const path = `${basePath}/${encodeSegment(bucket)}/${key.split('/').map(encodeSegment).join('/')}`;
    const headers = signedHeaders(method, path, extra);
    return new Promise<IncomingMessage>((resolve, reject) => {
      const req = (https ? httpsRequest : httpRequest)(
        {
          protocol: endpoint.protocol,
          hostname: endpoint.hostname,
          port: endpoint.port || undefined,
          method,
          path,
          agent,
          headers: body ? { ...headers, 'content-length': String(body.length) } : headers,
        },
        (res) => {
          if ((res.statusCode ?? 0) >= 200 && (res.statusCode ?? 0) < 300) resolve(res);
          else readError(res).then(reject, reject);
        },
      );
      req.on('error', reject);
      req.end(body);
    });
  };

  const withRetries = async <T>(attempt1: () => Promise<T>): Promise<T> => {
    for (let attempt = 1; ; attempt++) {
      try {
        return await attempt1();
      } catch (err) {
        if (attempt >= S3_MAX_ATTEMPTS || !retryable(err as S3RequestError & { code?: string })) throw err;
        await sleep(Math.random() * Math.min(RETRY_CAP_MS, RETRY_BASE_MS * 2 ** attempt));
      }
    }
  };

  return {
    put: (bucket, key, body, opts = {}) =>
      withRetries(async () => {
        const res = await send('PUT', bucket, key, body, opts.ifNoneMatch ? { 'if-none-match': '*' } : {});
        res.resume();
        await new Promise<void>((resolve, reject) => {
          res.on('end', resolve);
          res.on('error', reject);
        });
      }),
    get: (bucket, key) =>
      withRetries(async () => {
        const res = await send('GET', bucket, key, undefined, {});
        const length = res.headers['content-length'];
        return {
          contentLength: length === undefined ? undefined : Number(length),
          body: res,
          cancel: () => res.destroy(),
        };
      }),
  };
}

function retryable(err: S3RequestError & { code?: string }): boolean {
  const status = err.$metadata?.httpStatusCode;
  if (status === undefined) return err.code !== undefined && RETRY_CODES.has(err.code);
  return RETRY_STATUS.has(status) || THROTTLING.has(err.name);
}

/** The S3 error of a failed answer: its XML `<Code>` and `<Message>`, or the status alone. */
async function readError(res: IncomingMessage): Promise<S3RequestError> {
  const pieces: Buffer[] = [];
  for await (const piece of res) pieces.push(piece as Buffer);
  const xml = Buffer.concat(pieces).toString('utf8');
  const status = res.statusCode ?? 0;
  const code = /<Code>([^<]*)<\/Code>/.exec(xml)?.[1] ?? (status === 412 ? 'PreconditionFailed' : `HTTP${status}`);
  const message = /<Message>([^<]*)<\/Message>/.exec(xml)?.[1] ?? (xml.trim() || `HTTP ${status}`);
  return Object.assign(new Error(message), { name: code, Code: code, $metadata: { httpStatusCode: status } });
}

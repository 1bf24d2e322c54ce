/**
 * Where an object-storage repository lives and how to reach it:
 *
 * - *s3 URL*: `s3://BUCKET/PREFIX`, the bucket and the key prefix every
 *   object of the repository starts with (`PREFIX/` is added when missing;
 *   an empty prefix means the whole bucket).
 * - *endpoint and credentials*: the usual AWS variables, read once:
 *   AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (required), AWS_ENDPOINT_URL
 *   (a RADOS Gateway, MinIO; AWS when unset), AWS_REGION (default us-east-1).
 *
 * Path-style addressing is always on: a RADOS Gateway on a host name or an
 * IP address has no per-bucket DNS names, and AWS still accepts path style.
 */
import type { S3Client } from '@aws-sdk/client-s3';
import { createRequire } from 'node:module';
import { Agent } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import { badInput } from '../errors.js';

type S3Sdk = typeof import('@aws-sdk/client-s3');
const load = createRequire(import.meta.url);
let sdk: S3Sdk | undefined;

/**
 * The AWS SDK, loaded on first use. Every CLI call and the server import the
 * repository modules, and loading the SDK costs about 140 ms of CPU per
 * process, which only an s3:// repository needs. Its CommonJS build is the
 * one an ESM `import` gets too, so classes are the same either way.
 */
export function s3Sdk(): S3Sdk {
  return (sdk ??= load('@aws-sdk/client-s3') as S3Sdk);
}

export interface S3Location {
  bucket: string;
  /** '' or a prefix ending in '/'. */
  prefix: string;
}

export interface S3Settings {
  endpoint?: string;
  region: string;
  accessKeyId: string;
  secretAccessKey: string;
}

/** Bucket names after the S3 rules (3-63 of lowercase letters, digits, dots and hyphens). */
const BUCKET_RE = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;
/** Prefix segments: no empty, `.` or `..` segments and no control characters, so a prefix maps to exactly one key space. */
// eslint-disable-next-line no-control-regex
const SEGMENT_RE = /^(?!\.{1,2}$)[^\x00-\x1f\x7f]+$/;

const URL_HINT = 'name the repository as s3://BUCKET/PREFIX, e.g. s3://backups/restorelab';

export function isS3Url(s: string): boolean {
  return s.startsWith('s3://');
}

export function parseS3Url(url: string): S3Location {
  if (!isS3Url(url)) throw badInput('BAD_S3_URL', `"${url}" is not an s3:// URL`, URL_HINT);
  const rest = url.slice('s3://'.length);
  const slash = rest.indexOf('/');
  const bucket = slash < 0 ? rest : rest.slice(0, slash);
  const path = slash < 0 ? '' : rest.slice(slash + 1).replace(/\/+$/, '');
  if (!BUCKET_RE.test(bucket) || bucket.includes('..')) {
    throw badInput(
      'BAD_S3_URL',
      `"${url}": "${bucket}" is not a valid bucket name (3-63 lowercase letters, digits, dots, hyphens)`,
      URL_HINT,
    );
  }
  if (path !== '' && !path.split('/').every((s) => SEGMENT_RE.test(s))) {
    throw badInput('BAD_S3_URL', `"${url}": the prefix "${path}" has an empty, "." or ".." segment or a control character`, URL_HINT);
  }
  return { bucket, prefix: path === '' ? '' : `${path}/` };
}

export function s3Url(loc: S3Location): string {
  return `s3://${loc.bucket}/${loc.prefix}`;
}

/** The endpoint and credentials from the environment; rejects with S3_CREDENTIALS_MISSING naming what is unset. */
export function s3SettingsFromEnv(env: NodeJS.ProcessEnv = process.env): S3Settings {
  const missing = ['AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY'].filter((k) => !env[k]);
  if (missing.length > 0) {
    throw badInput(
      'S3_CREDENTIALS_MISSING',
      `an s3:// repository needs object-storage credentials: ${missing.join(' and ')} ${missing.length > 1 ? 'are' : 'is'} not set`,
      'export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for a RADOS Gateway or MinIO); `scripts/services up --json` prints them for the test gateway',
    );
  }
  const endpoint = env.AWS_ENDPOINT_URL_S3 || env.AWS_ENDPOINT_URL;
  if (endpoint !== undefined && endpoint !== '') {
    let ok: boolean;
    try {
      ok = ['http:', 'https:'].includes(new URL(endpoint).protocol);
    } catch {
      ok = false;
    }
    if (!ok) throw badInput('BAD_S3_URL', `AWS_ENDPOINT_URL "${endpoint}" is not an http(s) URL`, 'set it like http://127.0.0.1:7480');
  }
  return {
    ...(endpoint ? { endpoint } : {}),
    region: env.AWS_REGION || env.AWS_DEFAULT_REGION || 'us-east-1',
    accessKeyId: env.AWS_ACCESS_KEY_ID as string,
    secretAccessKey: env.AWS_SECRET_ACCESS_KEY as string,
  };
}

/** Requests to the gateway in flight at once per client, a bound on sockets and on blob memory in flight. */
export const S3_MAX_SOCKETS = 32;
/** Attempts per request, the first included: the SDK's standard retry mode backs off on 5xx, throttling and dropped connections. */
export const S3_MAX_ATTEMPTS = 5;

/** The header SigV4 takes the payload hash from when a request already has it. */
export const PAYLOAD_HASH_HEADER = 'x-amz-content-sha256';

export interface S3ClientOptions {
  /**
   * Keep connections open between requests (default true). The metadata client turns it off: on a
   * reused connection Linux acknowledges in delayed mode, and a gateway that sends an answer's headers
   * and body in two writes with Nagle on (the RADOS Gateway's beast frontend, unless `tcp_nodelay=1`)
   * holds the body until that ACK, about 40 ms later. Every listing, small GET and refused request
   * paid that (LIST 48 ms, 7 on a fresh connection: measured, docs/operations.md); the start and end
   * of a backup are a chain of them. Blobs keep their connections: a PUT's answer has no body, and a
   * connection per 4 MiB object would cost more than it saves.
   */
  keepAlive?: boolean;
}

export function createS3Client(settings: S3Settings, opts: S3ClientOptions = {}): S3Client {
  // The SDK warns on every command line that its releases from 2027 need Node 22: news for whoever upgrades it, noise for users.
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  const agentOpts = { keepAlive: opts.keepAlive ?? true, maxSockets: S3_MAX_SOCKETS };
  const client = new (s3Sdk().S3Client)({
    region: settings.region,
    ...(settings.endpoint ? { endpoint: settings.endpoint } : {}),
    forcePathStyle: true,
    credentials: { accessKeyId: settings.accessKeyId, secretAccessKey: settings.secretAccessKey },
    maxAttempts: S3_MAX_ATTEMPTS,
    retryMode: 'standard',
    // Newer SDKs add CRC32 trailers to every PUT; not every gateway version accepts them, and each blob carries its own CRC.
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    requestHandler: { httpAgent: new Agent(agentOpts), httpsAgent: new HttpsAgent(agentOpts) },
  });
  // SigV4 signs a hash of the body unless told UNSIGNED-PAYLOAD (which S3 and RGW accept): a SHA-256 pass
  // over every blob on the main thread, a tenth of a backup's CPU there (measured, docs/operations.md). It
  // adds nothing here: a blob is named by its digest and carries a CRC, both checked on every read, and
  // manifests and indexes carry checksums (sealed ones a GCM tag); over https, TLS guards the bytes on the wire.
  client.middlewareStack.add(
    (next) => async (args) => {
      const request = args.request as { headers?: Record<string, string> };
      if (request.headers) request.headers[PAYLOAD_HASH_HEADER] = 'UNSIGNED-PAYLOAD';
      return next(args);
    },
    { step: 'build', name: 'restorelabUnsignedPayload' },
  );
  return client;
}

/**
 * The S3 endpoint tests run against: the single-node Ceph RADOS Gateway that
 * `scripts/services up --json` starts (or finds running) and describes
 * (test/helpers/services.ts). When it cannot, the test fails naming the
 * missing component (docs/testing.md: never skip).
 *
 * Each test gets its own key prefix (`test-<random>/`) in the shared bucket,
 * emptied at teardown, so files running side by side never meet.
 */
import { randomBytes } from 'node:crypto';
import { DeleteObjectCommand, ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import { createS3Client, type S3Settings } from '../../src/repo/s3-config.js';
import { services, type Services } from './services.js';

export type S3Service = Services['s3'];

let cached: Promise<S3Service> | undefined;

async function discover(): Promise<S3Service> {
  let s3: Partial<S3Service> | undefined;
  try {
    s3 = (await services()).s3;
  } catch (err) {
    throw new Error(`missing system component: Ceph RADOS Gateway (S3): ${(err as Error).message}`, { cause: err });
  }
  if (!s3?.endpoint || !s3.accessKeyId || !s3.secretAccessKey || !s3.bucket) {
    throw new Error('missing system component: Ceph RADOS Gateway (scripts/services up --json gives no complete "s3" entry)');
  }
  return s3 as S3Service;
}

export function s3Service(): Promise<S3Service> {
  cached ??= discover();
  return cached;
}

export function s3Settings(s: S3Service): S3Settings {
  return { endpoint: s.endpoint, region: 'us-east-1', accessKeyId: s.accessKeyId, secretAccessKey: s.secretAccessKey };
}

/** The environment a CLI child needs to reach the gateway. */
export function s3Env(s: S3Service): Record<string, string> {
  return {
    AWS_ENDPOINT_URL: s.endpoint,
    AWS_ACCESS_KEY_ID: s.accessKeyId,
    AWS_SECRET_ACCESS_KEY: s.secretAccessKey,
    AWS_REGION: 'us-east-1',
  };
}

export interface S3Scratch {
  service: S3Service;
  client: S3Client;
  bucket: string;
  /** `test-<random>/`, this test's own key space. */
  prefix: string;
}

/** A fresh key prefix in the gateway's bucket, deleted with everything under it at teardown. */
export async function s3Scratch(t: { teardown: (fn: () => Promise<void>) => void }): Promise<S3Scratch> {
  const service = await s3Service();
  const client = createS3Client(s3Settings(service));
  const prefix = `test-${randomBytes(6).toString('hex')}/`;
  t.teardown(async () => {
    await emptyPrefix(client, service.bucket, prefix);
    client.destroy();
  });
  return { service, client, bucket: service.bucket, prefix };
}

export async function emptyPrefix(client: S3Client, bucket: string, prefix: string): Promise<void> {
  for (;;) {
    const page = await client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix }));
    const keys = (page.Contents ?? []).flatMap((o) => (o.Key ? [{ Key: o.Key }] : []));
    if (keys.length === 0) return;
    // One DELETE per key, not DeleteObjects: that needs a Content-MD5 the SDK no longer sends, which older gateways demand.
    await Promise.all(keys.map((k) => client.send(new DeleteObjectCommand({ Bucket: bucket, Key: k.Key }))));
  }
}

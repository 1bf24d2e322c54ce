/**
 * What a backup to object storage waits on besides its chunks (issue 19's
 * benchmark: backup <= 0.5x restic's time), on the real RADOS Gateway.
 *
 * Its start and end are chains of small requests, each a round trip nothing
 * else overlaps; on this gateway a reused connection adds about 40 ms to
 * every answer with a body (docs/operations.md, "Round trips"). So: which
 * requests a backup's metadata costs (no read-back of its own lock or index,
 * no copy of an index that does not exist yet, one listing of the points),
 * that the chunk area is listed before the lock is held, and that the
 * metadata client really opens a connection per request.
 */
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, connect, type AddressInfo, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import { backupVm } from '../../src/backup/engine.js';
import { initRepository, LocalRepository } from '../../src/repo/repository.js';
import { createS3Client } from '../../src/repo/s3-config.js';
import { S3ChunkStore } from '../../src/repo/s3-chunk-store.js';
import { S3MetaStore } from '../../src/repo/s3-meta-store.js';
import type { VmDefinition } from '../../src/vm/definition.js';
import { s3Env, s3Scratch, s3Settings } from '../helpers/s3.js';

const KiB = 1024;
const CHUNK = 256 * KiB;

const work = await mkdtemp(join(tmpdir(), 'rl-s3rt-'));
t.teardown(() => rm(work, { recursive: true, force: true }));
const vm: VmDefinition = { name: 'rtvm', memoryMiB: 256, vcpus: 1, disks: [{ name: 'root' }], nics: [] };

/** Every command a client sends, as `<command> <area>` (`ListObjectsV2 locks/`, `PutObject chunks/`), in order; also into `all`. */
function recording(client: S3Client, prefix: string, all: string[]): string[] {
  const seen: string[] = [];
  client.middlewareStack.add(
    (next, context) => async (args) => {
      const input = args.input as { Key?: string; Prefix?: string };
      const name = (input.Key ?? input.Prefix ?? '').slice(prefix.length);
      const area = name.includes('/') ? name.slice(0, name.indexOf('/') + 1) : name;
      const command = `${context.commandName?.replace(/Command$/, '')} ${area}`;
      seen.push(command);
      all.push(command);
      return next(args);
    },
    { step: 'initialize', name: 'testRecorder' },
  );
  return seen;
}

t.test("a first backup's metadata: no read-back, no copy of a missing index, one listing of the points", async (t) => {
  const s3 = await s3Scratch(t);
  Object.assign(process.env, s3Env(s3.service));
  const plain = await initRepository(`s3://${s3.bucket}/${s3.prefix}`, { chunkSize: CHUNK });
  const metaClient = createS3Client(s3Settings(s3.service), { keepAlive: false });
  const chunkClient = createS3Client(s3Settings(s3.service));
  t.teardown(() => {
    metaClient.destroy();
    chunkClient.destroy();
  });
  // One log of both clients, to see the order of the chunk listing and the lock.
  const both: string[] = [];
  const meta = recording(metaClient, s3.prefix, both);
  const chunks = recording(chunkClient, s3.prefix, both);
  const where = { bucket: s3.bucket, prefix: s3.prefix };
  const repo = new LocalRepository(plain.path, plain.config, undefined, {
    meta: new S3MetaStore({ ...where, client: metaClient }),
    chunks: new S3ChunkStore({ ...where, client: chunkClient, clockSkewMs: 0 }),
  });
  const file = join(work, 'a.raw');
  await writeFile(file, randomBytes(4 * CHUNK));
  const point = await backupVm({ repo, vm, disks: { root: file } });

  t.same(
    meta.filter((c) => c.startsWith('GetObject')),
    [],
    'nothing is read back: not our own lock, not the index just written',
  );
  t.same(
    meta.filter((c) => c.startsWith('CopyObject')),
    [],
    'the new index is not copied onto itself first (a HEAD says it is missing)',
  );
  t.equal(meta.filter((c) => c === 'ListObjectsV2 points/').length, 1, 'the points are listed once: parent and signals share it');
  t.same(
    chunks.filter((c) => !c.startsWith('PutObject')),
    ['ListObjectsV2 chunks/'],
    'the chunk area is listed once; each new chunk is one PUT',
  );
  t.equal(chunks.filter((c) => c.startsWith('PutObject')).length, 4);
  const listed = both.indexOf('ListObjectsV2 chunks/');
  const locked = both.indexOf('ListObjectsV2 locks/');
  t.ok(listed >= 0 && locked >= 0 && listed < locked, `the chunk area is listed while the lock is taken: ${both.join(', ')}`);
  t.equal(meta.at(-2), 'PutObject points/', 'the manifest is the last write');
  t.equal(meta.at(-1), 'DeleteObject locks/', 'then the lock goes');

  // A second backup of the VM: its parent and its signals' history come from one listing of the points.
  meta.length = 0;
  await writeFile(file, randomBytes(4 * CHUNK));
  const second = await backupVm({ repo, vm, disks: { root: file } });
  t.equal(second.parent, point.id);
  t.equal(meta.filter((c) => c === 'ListObjectsV2 points/').length, 1, 'one listing of the points');
  t.equal(second.stats.signals?.baseline.points, 1, 'and the history the signals judge by still holds the first point');
});

/** A TCP relay to the gateway that counts the connections clients open through it. */
async function countingRelay(
  t: { teardown: (fn: () => Promise<void>) => void },
  endpoint: string,
): Promise<{ url: string; count: () => number }> {
  const target = new URL(endpoint);
  let connections = 0;
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    connections++;
    const upstream = connect(Number(target.port), target.hostname);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('error', () => undefined);
      s.on('close', () => sockets.delete(s));
    }
    client.pipe(upstream).pipe(client);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((r) => server.close(() => r()));
  });
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, count: () => connections };
}

t.test('the metadata client opens a connection per request; the blob client keeps its connection', async (t) => {
  const s3 = await s3Scratch(t);
  for (const [keepAlive, expected] of [
    [false, 3],
    [true, 1],
  ] as const) {
    const relay = await countingRelay(t, s3.service.endpoint);
    const client = createS3Client({ ...s3Settings(s3.service), endpoint: relay.url }, { keepAlive });
    t.teardown(() => client.destroy());
    for (let i = 0; i < 3; i++) await client.send(new ListObjectsV2Command({ Bucket: s3.bucket, Prefix: s3.prefix }));
    t.equal(relay.count(), expected, `keepAlive ${keepAlive}: ${expected} connection(s) for 3 listings one after the other`);
  }
});

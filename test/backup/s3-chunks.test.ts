/**
 * Backup and restore through a ChunkStore without files (no fileOf): the
 * chunks on the RADOS Gateway, the rest of the repository on local disk
 * until the metadata moves to the bucket too (issue 19, part 2). The
 * workers then get each blob's bytes from the main thread (BlobSource).
 */
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import { backupVm } from '../../src/backup/engine.js';
import { restoreDisk } from '../../src/backup/restore.js';
import { RestorelabError } from '../../src/errors.js';
import type { Repository } from '../../src/repo/api.js';
import { initRepository } from '../../src/repo/index.js';
import { S3ChunkStore } from '../../src/repo/s3-chunk-store.js';
import type { VmDefinition } from '../../src/vm/definition.js';
import { s3Scratch } from '../helpers/s3.js';

const KiB = 1024;
const MiB = 1024 * KiB;

const work = await mkdtemp(join(tmpdir(), 'rl-s3chunks-'));
t.teardown(() => rm(work, { recursive: true, force: true }));

const vm: VmDefinition = { name: 's3vm', memoryMiB: 256, vcpus: 1, disks: [{ name: 'root' }], nics: [] };

function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

t.test('backup, reuse, repair and restore with every chunk on the gateway', async (t) => {
  const s3 = await s3Scratch(t);
  const store = new S3ChunkStore({ client: s3.client, bucket: s3.bucket, prefix: s3.prefix });
  const local = await initRepository(join(work, 'repo'), { chunkSize: 256 * KiB });
  // The local repository with its chunks on S3: every other method stays the local one.
  const repo = Object.create(local, { chunks: { value: store } }) as Repository;

  // 3 MiB: random, a zero hole, and two equal chunks.
  const image = Buffer.concat([randomBytes(MiB), Buffer.alloc(768 * KiB), randomBytes(256 * KiB), randomBytes(512 * KiB)]);
  image.copy(image, 2 * MiB + 512 * KiB, 0, 256 * KiB);
  const file = join(work, 'disk.raw');
  await writeFile(file, image);

  const first = await backupVm({ repo, vm, disks: { root: file } });
  t.ok(first.stats.bytesNew > 0);
  const objects = [];
  for await (const c of store.list()) objects.push(c.digest);
  t.ok(objects.length >= 6, `the chunks went to the gateway (${objects.length})`);
  const localChunks = (
    await Promise.all((await readdir(join(local.path, 'chunks'))).map((d) => readdir(join(local.path, 'chunks', d))))
  ).flat();
  t.same(localChunks, [], 'and none to the local store');

  const to = join(work, 'restored.raw');
  await restoreDisk({ repo, point: first.id, disk: 'root', to });
  t.equal(sha256(await readFile(to)), sha256(image), 'restored bytes match the source');

  const second = await backupVm({ repo, vm, disks: { root: file } });
  t.equal(second.stats.bytesNew, 0, 'a second backup stores nothing new: every stored blob was fetched, checked and reused');

  // A damaged object: the next backup notices it when it reuses the chunk and writes a good copy.
  const victim = objects[0] as string;
  await s3.client.send(
    new PutObjectCommand({ Bucket: s3.bucket, Key: `${s3.prefix}chunks/${victim.slice(0, 2)}/${victim}`, Body: Buffer.from('garbage') }),
  );
  const warnings: string[] = [];
  const third = await backupVm({ repo, vm, disks: { root: file }, onWarning: (w) => warnings.push(w) });
  t.ok(third.stats.bytesNew > 0, 'the damaged chunk was written again');
  t.ok(
    warnings.some((w) => w.includes(victim) && w.includes('damaged')),
    'the backup says which chunk was damaged',
  );
  const quarantined = [];
  for await (const c of store.listQuarantined()) quarantined.push(c.digest);
  t.same(quarantined, [victim], 'the damaged object is kept in quarantine/');
  await restoreDisk({ repo, point: first.id, disk: 'root', to: join(work, 'again.raw') });
  t.equal(sha256(await readFile(join(work, 'again.raw'))), sha256(image), 'the older point restores again');

  // A missing object (not quarantined: that one is "damaged"): the restore fails naming the chunk, and leaves no output behind.
  const gone = objects[1] as string;
  t.ok((await store.remove(gone)) > 0);
  const err = await restoreDisk({ repo, point: first.id, disk: 'root', to: join(work, 'missing.raw') }).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.ok(err instanceof RestorelabError, 'a RestorelabError');
  t.equal((err as RestorelabError).code, 'CHUNK_NOT_FOUND');
  t.match((err as Error).message, gone);
  t.match((err as Error).message, store.path);
  t.notOk((await readdir(work)).includes('missing.raw'), 'no output file');
});

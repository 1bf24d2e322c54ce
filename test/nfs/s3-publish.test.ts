/**
 * A point on object storage published over NFS (issue 19: "publish (FUSE and
 * NFS) from an s3:// repository"): `publish --repo s3://… --nfs
 * --background` on the real RADOS Gateway, read back with libnfs's nfs-cat,
 * byte for byte, then a file written into the export without the bucket
 * changing. Ports are the kernel's choice, so it runs beside other files
 * (QEMU's nfs:// driver takes no port parameters: booting from an export
 * needs the fixed ports, test/nfs/qemu.test.ts).
 */
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ListObjectsV2Command } from '@aws-sdk/client-s3';
import { cliIn } from '../helpers/cli.js';
import { s3Env, s3Scratch, type S3Scratch } from '../helpers/s3.js';
import { requireTool, run } from './fixtures/harness.js';

const MiB = 1024 * 1024;
const work = await mkdtemp(join(tmpdir(), 'rl-s3-nfs-'));
t.teardown(() => rm(work, { recursive: true, force: true }));

/** 12 MiB: random data, a 4 MiB run of zeros (a hole in the index), random again. */
const image = join(work, 'disk.raw');
{
  const fh = await open(image, 'w');
  await fh.write(randomBytes(4 * MiB), 0, 4 * MiB, 0);
  await fh.write(randomBytes(4 * MiB), 0, 4 * MiB, 8 * MiB);
  await fh.close();
}
const vmFile = join(work, 'web.json');
await writeFile(vmFile, JSON.stringify({ name: 'web', memoryMiB: 256, vcpus: 1, disks: [{ name: 'root', format: 'raw' }], nics: [] }));

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

async function objectEtags(s: S3Scratch): Promise<string[]> {
  const out: string[] = [];
  let token: string | undefined;
  do {
    const page = await s.client.send(new ListObjectsV2Command({ Bucket: s.bucket, Prefix: s.prefix, ContinuationToken: token }));
    for (const o of page.Contents ?? []) if (o.Key && !o.Key.includes('/locks/')) out.push(`${o.Key} ${o.ETag ?? ''}`);
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (token);
  return out.sort();
}

t.test('publish --repo s3://… --nfs serves the point over NFS, and writes through the export never reach the bucket', async (t) => {
  requireTool('nfs-cat');
  requireTool('nfs-cp');
  const s = await s3Scratch(t);
  const cli = cliIn(work, s3Env(s.service));
  const url = `s3://${s.bucket}/${s.prefix}nfs`;
  t.equal((await cli(['repo', 'init', url])).code, 0, 'repo init');
  const b = await cli(['backup', '--repo', url, '--vm', vmFile, '--disk', `root=${image}`, '--json']);
  t.equal(b.code, 0, b.stderr);
  const before = await objectEtags(s);

  const p = await cli([
    '--json',
    'publish',
    '--repo',
    url,
    String(b.json.restorePoint),
    '--nfs',
    '--nfs-port',
    '0',
    '--mount-port',
    '0',
    '--portmap-port',
    '0',
    '--background',
  ]);
  t.equal(p.code, 0, `publish: ${p.stdout} ${p.stderr}`);
  const out = p.json as { publication: string; nfs: { url: string } };
  t.teardown(() => cli(['unpublish', out.publication, '--discard']));
  t.match(out.nfs.url, /^nfs:\/\/127\.0\.0\.1\/restorelab\/.+\/root\.raw\?nfsport=\d+&mountport=\d+$/, 'an nfs:// URL on loopback');

  const cat = await run('nfs-cat', [out.nfs.url], undefined, 120_000);
  t.equal(cat.code, 0, `nfs-cat reads the disk: ${cat.stderr}`);
  t.equal(sha(cat.stdout), sha(await readFile(image)), 'the export serves the backed-up disk, byte for byte');

  // A client's write lands in the publication's overlay, never in the repository.
  const patch = join(work, 'patch.raw');
  await writeFile(patch, randomBytes(64 * 1024));
  const cp = await run('nfs-cp', [patch, out.nfs.url.replace('root.raw', 'extra.raw')], undefined, 60_000);
  t.equal(cp.code, 0, `nfs-cp into the export: ${cp.stderr}`);
  const extra = await run('nfs-cat', [out.nfs.url.replace('root.raw', 'extra.raw')], undefined, 60_000);
  t.equal(sha(extra.stdout), sha(await readFile(patch)), 'the file written over NFS reads back');
  const un = await cli(['--json', 'unpublish', out.publication, '--discard']);
  t.equal(un.code, 0, `unpublish --discard: ${un.stderr}`);
  t.same(await objectEtags(s), before, 'the bucket holds the same objects, byte for byte, as before the publication');
  const again = await run('nfs-ls', [out.nfs.url.replace('/root.raw', '')], undefined, 30_000);
  t.not(again.code, 0, 'nothing serves the export after unpublish');
});

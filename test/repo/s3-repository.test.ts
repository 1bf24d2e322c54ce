/**
 * Repositories on object storage (issue 19), against the real RADOS Gateway
 * of scripts/services: `repo init s3://…` and `--repo s3://…` through the
 * CLI (backup, points, verify, restore, gc), the metadata layout in the
 * bucket, a point without its manifest staying invisible, lease locks
 * between writers, a gateway that goes away in the middle of a backup, and
 * a publication over FUSE that reads through the on-disk chunk cache, and
 * POST /repositories confined to the s3:// roots the config names.
 */
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, open, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DeleteObjectCommand, ListObjectsV2Command, PutObjectCommand } from '@aws-sdk/client-s3';
import { exec } from '../../src/host/exec.js';
import { openRepository } from '../../src/repo/repository.js';
import { encodeFixedIndex } from '../../src/repo/fixed-index.js';
import { startPublication } from '../../src/publish/publish.js';
import { cliIn } from '../helpers/cli.js';
import { s3Env, s3Scratch, type S3Scratch } from '../helpers/s3.js';
import request from 'supertest';
import { testApi } from '../helpers/api.js';

const MiB = 1024 * 1024;
const work = await mkdtemp(join(tmpdir(), 'rl-s3-repo-'));
t.teardown(() => rm(work, { recursive: true, force: true }));

/** 24 MiB: random data around a 4 MiB run of zeros (a hole in the index). */
const image = join(work, 'disk.raw');
{
  const fh = await open(image, 'w');
  await fh.write(randomBytes(16 * MiB), 0, 16 * MiB, 0);
  await fh.write(randomBytes(4 * MiB), 0, 4 * MiB, 20 * MiB);
  await fh.close();
}
const vmFile = join(work, 'web.json');
await writeFile(vmFile, JSON.stringify({ name: 'web', memoryMiB: 256, vcpus: 1, disks: [{ name: 'root', format: 'raw' }], nics: [] }));

async function sha256File(path: string): Promise<string> {
  return createHash('sha256')
    .update(await readFile(path))
    .digest('hex');
}

async function keys(s: S3Scratch): Promise<string[]> {
  const out: string[] = [];
  let token: string | undefined;
  do {
    const page = await s.client.send(new ListObjectsV2Command({ Bucket: s.bucket, Prefix: s.prefix, ContinuationToken: token }));
    for (const o of page.Contents ?? []) if (o.Key) out.push(o.Key.slice(s.prefix.length));
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (token);
  return out.sort();
}

/** The CLI with the gateway's endpoint and credentials (or `env` instead). */
function cliFor(s: S3Scratch, env: Record<string, string> = s3Env(s.service)) {
  return cliIn(work, env);
}

/** Runs `fn` with the gateway's variables in this process's environment (the library reads them as the CLI does). */
async function withS3Env<T>(s: S3Scratch, fn: () => Promise<T>): Promise<T> {
  const vars = s3Env(s.service);
  const saved = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]));
  Object.assign(process.env, vars);
  try {
    return await fn();
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

t.test('repo init s3://: an empty prefix becomes a repository, anything else is refused with its code', async (t) => {
  const s = await s3Scratch(t);
  const cli = cliFor(s);
  const url = `s3://${s.bucket}/${s.prefix}repo`;
  const init = await cli(['repo', 'init', url, '--json']);
  t.equal(init.code, 0, init.stderr);
  t.match(
    init.json,
    { path: `${url}/`, version: 1, chunkSize: 4 * MiB, encryption: 'none' },
    'chunks of 4 MiB by default on object storage',
  );
  t.same(await keys(s), ['repo/config.json'], 'config.json is all an empty repository holds: no directories to fake');

  const again = await cli(['repo', 'init', url, '--json']);
  t.equal(again.code, 2, 'a prefix that holds objects is refused');
  t.match(again.json, { error: { code: 'REPO_NOT_EMPTY', message: /repo\/config\.json/ } });

  // A stray object is enough: init never writes into someone else's key space.
  await s.client.send(new PutObjectCommand({ Bucket: s.bucket, Key: `${s.prefix}other/notes.txt`, Body: 'x' }));
  const stray = await cli(['repo', 'init', `s3://${s.bucket}/${s.prefix}other`, '--json']);
  t.match(stray.json, { error: { code: 'REPO_NOT_EMPTY' } });

  const bad = await cli(['repo', 'init', 's3://No_Such_Bucket/x', '--json']);
  t.equal(bad.code, 2);
  t.match(bad.json, { error: { code: 'BAD_S3_URL' } });

  const { AWS_ENDPOINT_URL } = s3Env(s.service);
  const anonymous = await cliFor(s, { AWS_ENDPOINT_URL: AWS_ENDPOINT_URL ?? '', AWS_ACCESS_KEY_ID: '', AWS_SECRET_ACCESS_KEY: '' })([
    'repo',
    'init',
    `${url}-2`,
    '--json',
  ]);
  t.equal(anonymous.code, 2);
  t.match(anonymous.json, { error: { code: 'S3_CREDENTIALS_MISSING', message: /AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY/ } });

  const missing = await cli(['points', '--repo', `s3://${s.bucket}/${s.prefix}nothing-here`, '--json']);
  t.equal(missing.code, 5);
  t.match(missing.json, { error: { code: 'REPO_NOT_FOUND' } });

  const down = await cliFor(s, { ...s3Env(s.service), AWS_ENDPOINT_URL: 'http://127.0.0.1:1' })(['points', '--repo', url, '--json']);
  t.equal(down.code, 4, 'an unreachable gateway is a missing component');
  t.match(down.json, {
    error: { code: 'S3_UNREACHABLE', message: /http:\/\/127\.0\.0\.1:1/, hint: /AWS_ENDPOINT_URL.*scripts\/services status/ },
  });
});

t.test('backup to s3://, points, restore: the bytes match; verify names a deleted chunk object', async (t) => {
  const s = await s3Scratch(t);
  const cli = cliFor(s);
  const url = `s3://${s.bucket}/${s.prefix}main`;
  t.equal((await cli(['repo', 'init', url, '--chunk-size', '1M'])).code, 0);
  const b = await cli(['backup', '--repo', url, '--vm', vmFile, '--disk', `root=${image}`, '--json']);
  t.equal(b.code, 0, b.stderr);
  t.match(b.json, { vm: 'web', stats: { bytesZero: 4 * MiB } });
  const id = b.json.restorePoint as string;

  const layout = await keys(s);
  t.ok(layout.includes(`main/points/${id}.json`), 'the manifest is points/<id>.json');
  t.equal(layout.filter((k) => /^main\/indexes\/[0-9a-f]{64}\.fidx$/.test(k)).length, 1, 'one index, named by its hash');
  const chunkKeys = layout.filter((k) => /^main\/chunks\/[0-9a-f]{2}\/[0-9a-f]{64}$/.test(k));
  t.equal(chunkKeys.length, 20, '20 data chunks of 1 MiB; the 4 MiB of zeros are holes');
  t.same(
    layout.filter((k) => k.startsWith('main/locks/')),
    [],
    'the backup released its lock object',
  );

  const pts = await cli(['points', '--repo', url, '--json']);
  t.equal(pts.code, 0, pts.stderr);
  t.match(pts.json, { repo: `${url}/`, points: [{ id, vm: 'web', disks: [{ name: 'root', size: 24 * MiB }], damaged: false }] });

  const to = join(work, 'restored.raw');
  const r = await cli(['restore', '--repo', url, id, '--disk', 'root', '--to', to, '--json']);
  t.equal(r.code, 0, r.stderr);
  t.equal(await sha256File(to), await sha256File(image), 'the restored disk is the source, byte for byte');

  const v = await cli(['verify', '--repo', url, '--json']);
  t.equal(v.code, 0, v.stderr);
  t.match(v.json, { ok: true, chunksChecked: 20, corrupt: [], pointsChecked: 1 });

  const g = await cli(['gc', '--repo', url, '--json']);
  t.equal(g.code, 0, g.stderr);
  t.match(g.json, { chunksTotal: 20, chunksReferenced: 20, chunksRemoved: 0 });

  const victim = chunkKeys[7] as string;
  const digest = victim.split('/').pop() as string;
  await s.client.send(new DeleteObjectCommand({ Bucket: s.bucket, Key: s.prefix + victim }));
  const bad = await cli(['verify', '--repo', url, '--json']);
  t.equal(bad.code, 3, 'verify fails');
  t.match(bad.json, { ok: false, corrupt: [{ digest }], affectedPoints: [id] });
  t.match((await cli(['points', '--repo', url, '--json'])).json, { points: [{ id, damaged: true }] });
  const broken = await cli(['restore', '--repo', url, id, '--disk', 'root', '--to', join(work, 'broken.raw'), '--json']);
  t.equal(broken.code, 5, 'a restore that needs the missing chunk fails, as with a local repository');
  t.match(broken.json, { error: { code: 'CHUNK_NOT_FOUND', message: new RegExp(digest) } });
});

t.test('a point is visible only once its manifest is written, the last object of a backup', async (t) => {
  const s = await s3Scratch(t);
  const url = `s3://${s.bucket}/${s.prefix}late`;
  t.equal((await cliFor(s)(['repo', 'init', url, '--chunk-size', '1M'])).code, 0);
  await withS3Env(s, async () => {
    const repo = await openRepository(url);
    const chunk = randomBytes(MiB);
    const digest = repo.codec.digest(chunk);
    await repo.chunks.insert(digest, repo.codec.encode(chunk));
    const indexDigest = await repo.writeIndex({ chunkSize: MiB, size: MiB, digests: [digest] });
    t.ok((await keys(s)).includes(`late/indexes/${indexDigest}.fidx`), 'chunk and index are stored');
    t.same(await repo.listPoints(), [], 'without its manifest there is no point');
    // The same bytes as a local index file: the format does not depend on where it is stored.
    t.same(await repo.readIndex(indexDigest), { chunkSize: MiB, size: MiB, digests: [digest] });
    t.equal(
      indexDigest,
      createHash('sha256')
        .update(encodeFixedIndex({ chunkSize: MiB, size: MiB, digests: [digest] }))
        .digest('hex'),
    );

    const point = await repo.commitPoint({
      vm: { name: 'late', memoryMiB: 128, vcpus: 1, disks: [{ name: 'root' }], nics: [] },
      disks: [{ name: 'root', size: MiB, indexDigest }],
      consistency: 'crash',
      time: new Date().toISOString(),
      source: 'test',
      stats: { bytesRead: MiB, bytesNew: MiB, bytesReused: 0, bytesZero: 0, seconds: 0 },
    });
    t.same(
      (await repo.listPoints()).map((p) => p.id),
      [point.id],
      'the manifest makes it visible',
    );
  });
});

t.test('writers on one bucket: an exclusive lock object keeps a backup out, and goes with its holder', async (t) => {
  const s = await s3Scratch(t);
  const cli = cliFor(s);
  const url = `s3://${s.bucket}/${s.prefix}locked`;
  t.equal((await cli(['repo', 'init', url])).code, 0);
  await withS3Env(s, async () => {
    const repo = await openRepository(url);
    const lock = await repo.lock('exclusive', 'prune by another host');
    t.match(
      (await keys(s)).filter((k) => k.includes('/locks/')),
      [/^locked\/locks\/exclusive-.*\.lock$/],
      'the lock is an object under locks/',
    );
    const busy = await cli(['backup', '--repo', url, '--vm', vmFile, '--disk', `root=${image}`, '--json']);
    t.equal(busy.code, 6, 'busy');
    t.match(busy.json, { error: { code: 'REPO_BUSY', message: /prune by another host/ } });
    t.same((await cli(['points', '--repo', url, '--json'])).json.points, []);
    await lock.release();
  });
  const ok = await cli(['backup', '--repo', url, '--vm', vmFile, '--disk', `root=${image}`, '--json']);
  t.equal(ok.code, 0, ok.stderr);
});

/**
 * A TCP relay to the gateway that drops every connection and stops
 * listening once `cutAfter` bytes went upstream: the gateway vanishes in the
 * middle of a backup, as a crashed radosgw or a cut network would.
 */
async function cuttingRelay(target: string, cutAfter: number): Promise<{ url: string; cut: () => boolean; close: () => void }> {
  const { hostname, port } = new URL(target);
  const sockets = new Set<Socket>();
  let sent = 0;
  let dead = false;
  const server = createServer((client) => {
    if (dead) return client.destroy();
    const upstream = connect(Number(port), hostname);
    for (const sock of [client, upstream]) {
      sockets.add(sock);
      sock.on('error', () => undefined);
      sock.on('close', () => sockets.delete(sock));
    }
    client.on('data', (d: Buffer) => {
      sent += d.length;
      if (sent > cutAfter && !dead) {
        dead = true;
        server.close();
        for (const sock of sockets) sock.destroy();
        return;
      }
      upstream.write(d);
    });
    upstream.on('data', (d: Buffer) => client.write(d));
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const addr = server.address() as { port: number };
  return {
    url: `http://127.0.0.1:${addr.port}`,
    cut: () => dead,
    close: () => {
      dead = true;
      server.close();
      for (const sock of sockets) sock.destroy();
    },
  };
}

t.test('the gateway goes away during a backup: it fails with a clear error and leaves no visible point', async (t) => {
  const s = await s3Scratch(t);
  const cli = cliFor(s);
  const url = `s3://${s.bucket}/${s.prefix}cut`;
  t.equal((await cli(['repo', 'init', url, '--chunk-size', '1M'])).code, 0);
  const relay = await cuttingRelay(s.service.endpoint, 8 * MiB);
  t.teardown(relay.close);
  const b = await cliFor(s, { ...s3Env(s.service), AWS_ENDPOINT_URL: relay.url })([
    'backup',
    '--repo',
    url,
    '--vm',
    vmFile,
    '--disk',
    `root=${image}`,
    '--json',
  ]);
  t.ok(relay.cut(), 'the relay cut the gateway off in the middle of the upload');
  t.not(b.code, 0, 'the backup fails');
  t.match(b.json, {
    ok: false,
    error: { code: /^(S3_UNREACHABLE|CHUNK_IO)$/, message: /ECONNREFUSED|ECONNRESET|socket hang up|does not answer/ },
  });
  t.notMatch(b.stderr, /at .*\.js:\d+/, 'an error message, not a stack trace');
  const pts = await cli(['points', '--repo', url, '--json']);
  t.equal(pts.code, 0, pts.stderr);
  t.same(pts.json.points, [], 'no restore point is visible');
  t.same(
    (await keys(s)).filter((k) => k.startsWith('cut/points/')),
    [],
    'no manifest was written',
  );
  const again = await cli(['backup', '--repo', url, '--vm', vmFile, '--disk', `root=${image}`, '--json']);
  t.equal(again.code, 0, `the gateway back, the next backup succeeds (the dead one's lock is its own process's): ${again.stderr}`);
});

t.test('a publication of an s3:// point over FUSE serves the source bytes, through the on-disk chunk cache', async (t) => {
  const s = await s3Scratch(t);
  const cli = cliFor(s);
  const url = `s3://${s.bucket}/${s.prefix}pub`;
  t.equal((await cli(['repo', 'init', url])).code, 0);
  const b = await cli(['backup', '--repo', url, '--vm', vmFile, '--disk', `root=${image}`, '--json']);
  t.equal(b.code, 0, b.stderr);
  const stateDir = join(work, 'pub-state');
  await withS3Env(s, async () => {
    const repoId = (await openRepository(url)).config.id;
    const pub = await startPublication(
      { repo: url, point: b.json.restorePoint as string, stateDir, fuseDir: join(work, 'fuse'), readOnly: true },
      { objectCacheMiB: 16 },
    );
    try {
      const raw = pub.disks.root ?? '/nonexistent';
      t.equal((await exec('cmp', [raw, image])).code, 0, 'the published disk is the source image');
      const cacheDir = join(stateDir, 'chunk-cache', repoId);
      let cached = 0;
      for (const shard of await readdir(cacheDir)) cached += (await readdir(join(cacheDir, shard))).length;
      t.ok(
        cached > 0 && cached <= 16,
        `the chunk cache under <stateDir>/chunk-cache/<repo id> holds ${cached} blobs, within its 16 MiB bound`,
      );
    } finally {
      await pub.close({ discard: true });
    }
  });
});

t.test('POST /api/v1/repositories makes an s3:// repository only under an s3:// root of api.repositoryRoots', async (t) => {
  const s = await s3Scratch(t);
  const root = `s3://${s.bucket}/${s.prefix}api/`;
  const api = await withS3Env(s, () => testApi({ limits: { repositoryRoots: [root] } }));
  t.teardown(() => api.close());
  const post = (path: string) =>
    withS3Env(s, async () =>
      request(api.app).post('/api/v1/repositories').set('Authorization', api.auth.admin).send({ path, chunkSize: 262144 }),
    );
  const made = await post(`${root}team-a`);
  t.equal(made.status, 201, JSON.stringify(made.body));
  t.equal(made.body.path, `${root}team-a/`, 'the canonical s3:// form');
  t.ok((await keys(s)).includes('api/team-a/config.json'), 'its config.json is in the bucket');
  const again = await post(`${root}team-a`);
  t.equal(again.status, 400);
  t.match(again.body.error.code, 'REPO_NOT_EMPTY');
  for (const outside of [`s3://${s.bucket}/${s.prefix}apix/b`, `s3://${s.bucket}/elsewhere`, `s3://other-bucket/${s.prefix}api/x`]) {
    const r = await post(outside);
    t.equal(r.status, 403, `${outside}: ${JSON.stringify(r.body)}`);
    t.match(r.body.error.code, 'PATH_NOT_ALLOWED');
  }
  const listed = await withS3Env(s, async () => request(api.app).get('/api/v1/repositories').set('Authorization', api.auth.viewer));
  t.ok(
    (listed.body.repositories as { path: string }[]).some((r) => r.path === `${root}team-a/`),
    'GET /repositories lists it (it is in the catalog)',
  );
});

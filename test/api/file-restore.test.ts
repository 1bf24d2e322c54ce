// File-level restore over the API, for real: the `web` test guest's restore
// point is mounted read-only (FUSE publication, loop devices, mounts), its
// /etc is listed, files and directories come back as tar streams with the
// guest's bytes, escapes are refused with 400 PATH_TRAVERSAL, and DELETE
// leaves no mount, loop device, holder or directory behind. A second point,
// of a disk built with escaping symlinks, covers the symlink refusals.
import t from 'tap';
import request from 'supertest';
import tar from 'tar-stream';
import { spawnSync } from 'node:child_process';
import { get } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { guestRepository } from '../helpers/repository.js';
import { testApi } from '../helpers/api.js';
import { buildMbrDisk, buildUnknownFsDisk, buildWholeDiskExt4, sha } from '../flr/fixtures/disks.js';
import { backupVm } from '../../src/backup/engine.js';
import { listSessions, sessionsDir } from '../../src/flr/session.js';
import { releaseJournal } from '../../src/flr/mount.js';
import { listPublications } from '../../src/publish/publish.js';

const work = mkdtempSync(join(tmpdir(), 'rl-api-flr-'));
const guest = await guestRepository(work);
const fixture = buildMbrDisk(work);
const second = buildWholeDiskExt4(work);
const fileserver = await backupVm({
  repo: guest.repository,
  vm: {
    name: 'fileserver',
    memoryMiB: 256,
    vcpus: 1,
    disks: [
      { name: 'sda', format: 'raw' },
      { name: 'sdb', format: 'raw' },
    ],
    nics: [],
  },
  disks: { sda: fixture.path, sdb: second.path },
});
const mystery = await backupVm({
  repo: guest.repository,
  vm: { name: 'mystery', memoryMiB: 256, vcpus: 1, disks: [{ name: 'sda', format: 'raw' }], nics: [] },
  disks: { sda: buildUnknownFsDisk(work) },
});
const api = await testApi({ env: { RESTORELAB_REPO: guest.repo } });
const stateDir = api.config.stateDir;

function mountPoints(): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => l.split(' ')[4] ?? '')
    .filter((p) => p.startsWith(api.home) || p.startsWith(work));
}
function loops(): string[] {
  return spawnSync('losetup', ['-a'], { encoding: 'utf8' })
    .stdout.split('\n')
    .filter((l) => l.includes(api.home) || l.includes(work));
}

t.teardown(async () => {
  for (const s of listSessions(stateDir)) await releaseJournal(s).catch(() => undefined);
  for (const m of mountPoints().reverse()) spawnSync('umount', ['-l', m]);
  for (const l of loops()) spawnSync('losetup', ['-d', l.split(':')[0] as string]);
  await api.close();
  rmSync(api.home, { recursive: true, force: true });
  rmSync(work, { recursive: true, force: true });
});

/** A tar body, as name → {type, content}. */
async function untar(body: Buffer): Promise<Map<string, { type: string; content: Buffer; linkname?: string }>> {
  const out = new Map<string, { type: string; content: Buffer; linkname?: string }>();
  const ex = tar.extract();
  ex.on('entry', (h, stream, next) => {
    const chunks: Buffer[] = [];
    stream.on('data', (c: unknown) => {
      chunks.push(c as Buffer);
    });
    stream.on('end', () => {
      out.set(h.name, { type: h.type ?? 'file', content: Buffer.concat(chunks), ...(h.linkname ? { linkname: h.linkname } : {}) });
      next();
    });
  });
  await new Promise<void>((resolve, reject) => {
    ex.on('finish', () => resolve());
    ex.on('error', reject);
    ex.end(body);
  });
  return out;
}

function download(id: string, query: string): request.Test {
  return request(api.app)
    .get(`/api/v1/file-restore/${id}/download?${query}`)
    .set('authorization', api.auth.operator)
    .buffer(true)
    .parse((res, cb) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => cb(null, Buffer.concat(chunks)));
    });
}

t.test('auth and validation of the file-restore routes', async (t) => {
  await request(api.app).post('/api/v1/file-restore').send({ point: guest.point.id }).expect(401);
  const viewer = await request(api.app)
    .post('/api/v1/file-restore')
    .set('authorization', api.auth.viewer)
    .send({ point: guest.point.id })
    .expect(403);
  t.match(viewer.body.error.message, /needs operator/);
  await request(api.app).get('/api/v1/file-restore').set('authorization', api.auth.viewer).expect(403);
  const unknown = await request(api.app)
    .post('/api/v1/file-restore')
    .set('authorization', api.auth.operator)
    .send({ point: guest.point.id, readWrite: true })
    .expect(400);
  t.match(unknown.body.error.message, /body: unknown property "readWrite"/);
  const wrongType = await request(api.app)
    .post('/api/v1/file-restore')
    .set('authorization', api.auth.operator)
    .send({ point: guest.point.id, partition: 'first' })
    .expect(400);
  t.match(wrongType.body.error.message, /body\/partition: must be integer/);
  t.equal(wrongType.body.error.details[0].path, 'body/partition');
  const noPoint = await request(api.app).post('/api/v1/file-restore').set('authorization', api.auth.operator).send({}).expect(400);
  t.match(noPoint.body.error.message, /required property 'point'/);
  const badQuery = await request(api.app)
    .get('/api/v1/file-restore/flr-x/entries?path=/etc&recursive=1')
    .set('authorization', api.auth.operator)
    .expect(400);
  t.match(badQuery.body.error.message, /query: unknown property "recursive"/);
  const badPartition = await request(api.app)
    .get('/api/v1/file-restore/flr-x/entries?partition=one')
    .set('authorization', api.auth.operator)
    .expect(400);
  t.match(badPartition.body.error.message, /query\/partition: must be integer/);
  const gone = await request(api.app)
    .post('/api/v1/file-restore')
    .set('authorization', api.auth.operator)
    .send({ point: '20260101T000000Z-deadbeef' })
    .expect(404);
  t.equal(gone.body.error.code, 'POINT_NOT_FOUND');
  await request(api.app).get('/api/v1/file-restore/flr-nope').set('authorization', api.auth.operator).expect(404);
  await request(api.app).delete('/api/v1/file-restore/flr-nope').set('authorization', api.auth.operator).expect(404);
  t.same(listSessions(stateDir), [], 'nothing was mounted');
});

t.test('the web guest: mount, list /etc, download a file and a directory as tar, refuse escapes, unmount', async (t) => {
  const made = await request(api.app)
    .post('/api/v1/file-restore')
    .set('authorization', api.auth.operator)
    .send({ point: guest.point.id })
    .expect(201);
  const id = made.body.id as string;
  t.match(id, /^flr-/);
  t.equal(made.headers.location, `/api/v1/file-restore/${id}`);
  t.match(made.body, { point: guest.point.id, repository: guest.repo, complete: true, mounts: [{ disk: 'root', fstype: 'ext4' }] });
  t.ok(made.body.publication, 'served by a read-only publication');
  t.ok(
    mountPoints().some((p) => p.startsWith(join(sessionsDir(stateDir), 'api-'))),
    'mounted below the state directory',
  );

  const list = await request(api.app).get('/api/v1/file-restore').set('authorization', api.auth.operator).expect(200);
  t.same(
    list.body.sessions.map((s: { id: string }) => s.id),
    [id],
  );
  await request(api.app).get(`/api/v1/file-restore/${id}`).set('authorization', api.auth.operator).expect(200);

  const etc = await request(api.app)
    .get(`/api/v1/file-restore/${id}/entries?path=/etc`)
    .set('authorization', api.auth.operator)
    .expect(200);
  t.match(etc.body, { session: id, disk: 'root', fstype: 'ext4', path: '/etc' });
  t.match(
    etc.body.entries.find((e: { name: string }) => e.name === 'hostname'),
    { path: '/etc/hostname', type: 'file', size: 4, mode: '0644' },
  );
  const root = await request(api.app).get(`/api/v1/file-restore/${id}/entries`).set('authorization', api.auth.operator).expect(200);
  t.ok(
    root.body.entries.some((e: { name: string; type: string }) => e.name === 'srv' && e.type === 'directory'),
    'path defaults to /',
  );
  const bin = await request(api.app)
    .get(`/api/v1/file-restore/${id}/entries?path=/sbin`)
    .set('authorization', api.auth.operator)
    .expect(200);
  t.match(
    bin.body.entries.find((e: { name: string }) => e.name === 'init'),
    { type: 'symlink', target: '../bin/busybox' },
    'symlinks listed, not followed',
  );

  const file = await download(id, 'path=/etc/hostname').expect(200);
  t.equal(file.headers['content-type'], 'application/x-tar');
  t.equal(file.headers['content-disposition'], 'attachment; filename="hostname.tar"');
  const one = await untar(file.body as Buffer);
  t.same([...one.keys()], ['hostname']);
  t.equal(one.get('hostname')?.content.toString(), 'web\n', "the guest's /etc/hostname");

  const dir = await download(id, 'path=/srv/www').expect(200);
  const tree = await untar(dir.body as Buffer);
  t.same([...tree.keys()].sort(), ['www', 'www/index.html']);
  t.equal(tree.get('www')?.type, 'directory');
  t.match(tree.get('www/index.html')?.content.toString(), /restorelab web guest OK/, 'the page the guest serves');
  // Through a relative symlink that stays inside (/sbin/init -> ../bin/busybox): the tar holds what it points to.
  const viaLink = await download(id, 'path=/sbin/init').expect(200);
  t.equal(viaLink.headers['content-disposition'], 'attachment; filename="busybox.tar"');
  t.ok((await untar(viaLink.body as Buffer)).get('busybox')?.content.subarray(0, 4).equals(Buffer.from('\x7fELF')), 'the busybox binary');

  for (const path of ['../../etc/passwd', '/..', '/etc/../../etc/passwd', '/srv/www/../../../root']) {
    for (const route of ['entries', 'download']) {
      const r = await request(api.app)
        .get(`/api/v1/file-restore/${id}/${route}`)
        .query({ path })
        .set('authorization', api.auth.operator)
        .expect(400);
      t.equal(r.body.error.code, 'PATH_TRAVERSAL', `${route} ${path}`);
      t.match(r.body.error.message, `guest path ${path} is refused`, 'the message names the path');
      t.equal(r.headers['content-type'], 'application/json; charset=utf-8', 'an error, not a tar');
    }
  }
  const missing = await download(id, 'path=/etc/no-such-file').expect(404);
  t.equal(JSON.parse((missing.body as Buffer).toString()).error.code, 'GUEST_PATH_NOT_FOUND');
  const noPart = await request(api.app)
    .get(`/api/v1/file-restore/${id}/entries?path=/etc&partition=7`)
    .set('authorization', api.auth.operator)
    .expect(404);
  t.match(noPart.body.error.message, /no mounted partition matching partition 7/);

  // A client that goes away mid-stream: the server stops packing and closes every file, so the unmount below is not busy.
  const server = api.app.listen(0, '127.0.0.1');
  await new Promise((resolve) => server.once('listening', resolve));
  try {
    const port = (server.address() as AddressInfo).port;
    await new Promise<void>((resolve, reject) => {
      const req = get(
        { host: '127.0.0.1', port, path: `/api/v1/file-restore/${id}/download?path=/`, headers: { authorization: api.auth.operator } },
        (res) => {
          res.once('data', () => {
            req.destroy();
            resolve();
          });
        },
      );
      req.on('error', (err) => {
        if (!req.destroyed) reject(err);
      });
    });
    const stopped = (): boolean => api.logs.some((l) => l.msg === 'file-level restore download stopped while streaming');
    for (let i = 0; i < 200 && !stopped(); i++) await new Promise((r) => setTimeout(r, 50));
    t.ok(stopped(), 'the server noticed and stopped the stream');
  } finally {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  }

  // The mounted point is in use: it cannot be forgotten meanwhile.
  const busy = await request(api.app).delete(`/api/v1/points/${guest.point.id}`).set('authorization', api.auth.admin).expect(409);
  t.match(busy.body.error.message, /is published/);

  const del = await request(api.app).delete(`/api/v1/file-restore/${id}`).set('authorization', api.auth.operator).expect(200);
  t.match(del.body, { id, unmounted: true });
  t.ok(del.body.released > 0);
  t.same(
    { mounts: mountPoints(), loops: loops(), sessions: listSessions(stateDir).length, publications: listPublications(stateDir).length },
    { mounts: [], loops: [], sessions: 0, publications: 0 },
    'no mount, loop device, session or publication left',
  );
  t.same(
    readdirSync(sessionsDir(stateDir)).filter((n) => n.startsWith('api-')),
    [],
    'the mount directory is gone',
  );
  await request(api.app).delete(`/api/v1/file-restore/${id}`).set('authorization', api.auth.operator).expect(404);
  await request(api.app).get(`/api/v1/file-restore/${id}/entries`).set('authorization', api.auth.operator).expect(404);
});

t.test('symlinks leading out of the guest filesystem are refused; partitions are chosen by where the path exists', async (t) => {
  const made = await request(api.app)
    .post('/api/v1/file-restore')
    .set('authorization', api.auth.operator)
    .send({ point: fileserver.id })
    .expect(201);
  const id = made.body.id as string;
  t.teardown(() =>
    request(api.app)
      .delete(`/api/v1/file-restore/${id}`)
      .set('authorization', api.auth.operator)
      .then(() => undefined),
  );
  t.match(
    made.body.mounts.find((m: { disk: string; partition: number }) => m.disk === 'sda' && m.partition === 1),
    { fstype: 'ext4' },
  );
  t.match(
    made.body.mounts.find((m: { disk: string; partition: number }) => m.disk === 'sdb' && m.partition === 0),
    { fstype: 'ext4' },
    'a disk without a table is partition 0',
  );

  const absolute = await download(id, 'path=/passwd-link').expect(400);
  const abs = JSON.parse((absolute.body as Buffer).toString()) as { error: { code: string; message: string } };
  t.equal(abs.error.code, 'PATH_TRAVERSAL');
  t.match(abs.error.message, /guest path \/passwd-link is refused: \/passwd-link is an absolute symlink/);
  const climb = await download(id, 'path=/data/climb-link').expect(400);
  t.match(JSON.parse((climb.body as Buffer).toString()).error.message, /points outside the partition/);
  const through = await request(api.app)
    .get(`/api/v1/file-restore/${id}/entries?path=/passwd-link/x`)
    .set('authorization', api.auth.operator)
    .expect(400);
  t.equal(through.body.error.code, 'PATH_TRAVERSAL');
  // Listing shows the escaping links without following them.
  const root = await request(api.app)
    .get(`/api/v1/file-restore/${id}/entries?path=/&partition=1`)
    .set('authorization', api.auth.operator)
    .expect(200);
  t.match(
    root.body.entries.find((e: { name: string }) => e.name === 'passwd-link'),
    { type: 'symlink', target: '/etc/passwd' },
  );

  // Both disks hold /data: the first (by disk, then partition) is used unless ?disk or ?partition says otherwise.
  const first = await request(api.app)
    .get(`/api/v1/file-restore/${id}/entries?path=/data/docs`)
    .set('authorization', api.auth.operator)
    .expect(200);
  t.match(first.body, { disk: 'sda', partition: 1, entries: [{ name: 'empty' }, { name: 'readme.txt', size: 23 }] });
  const onSdb = await request(api.app)
    .get(`/api/v1/file-restore/${id}/entries?path=/data/docs&disk=sdb`)
    .set('authorization', api.auth.operator)
    .expect(200);
  t.match(onSdb.body, { disk: 'sdb', partition: 0, entries: [{ name: 'empty' }, { name: 'readme.txt' }] });
  const readme = await download(id, 'path=/data/docs/readme.txt').expect(200);
  const files = await untar(readme.body as Buffer);
  t.equal(
    sha(files.get('readme.txt')?.content ?? Buffer.alloc(0)),
    fixture.files.sha256['/data/docs/readme.txt'],
    'the bytes the guest wrote',
  );
  const viaLink = await download(id, 'path=/data/readme-link').expect(200);
  t.equal(
    (await untar(viaLink.body as Buffer)).get('readme.txt')?.content.toString(),
    'inside the backup only\n',
    'a relative link inside is followed',
  );
  const noDisk = await request(api.app)
    .get(`/api/v1/file-restore/${id}/entries?path=/data&disk=sdc`)
    .set('authorization', api.auth.operator)
    .expect(404);
  t.match(noDisk.body.error.message, /no mounted partition matching disk sdc \(mounted: sda p1, .*sdb p0\)/);
  const nowhere = await request(api.app)
    .get(`/api/v1/file-restore/${id}/entries?path=/nowhere`)
    .set('authorization', api.auth.operator)
    .expect(404);
  t.match(nowhere.body.error.message, /guest path \/nowhere exists on none of the mounted partitions \(sda p1, .*sdb p0\)/);

  // A large file streams through intact.
  const blob = await download(id, 'path=/data/blob.bin').expect(200);
  const big = (await untar(blob.body as Buffer)).get('blob.bin');
  t.equal(big?.content.length, 3 * 1024 * 1024 + 123);
  t.equal(sha(big?.content ?? Buffer.alloc(0)), fixture.files.sha256['/data/blob.bin']);
});

t.test('a point with nothing to mount fails clearly and leaves nothing behind', async (t) => {
  const res = await request(api.app)
    .post('/api/v1/file-restore')
    .set('authorization', api.auth.operator)
    .send({ point: mystery.id })
    .expect(400);
  t.equal(res.body.error.code, 'UNKNOWN_FILESYSTEM');
  t.match(res.body.error.message, /disk sda: nothing to mount/);
  t.same(
    { mounts: mountPoints(), loops: loops(), sessions: listSessions(stateDir).length, publications: listPublications(stateDir).length },
    { mounts: [], loops: [], sessions: 0, publications: 0 },
    'the publication made before the failure is gone too',
  );
  t.same(
    readdirSync(sessionsDir(stateDir)).filter((n) => n.startsWith('api-')),
    [],
    'no mount directory left',
  );
});

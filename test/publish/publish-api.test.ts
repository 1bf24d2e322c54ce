/** startPublication / listPublications / removePublication as a library, over an in-memory repository (no FUSE). */
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { LOCAL_USER, listPublications, removePublication, startPublication } from '../../src/publish/publish.js';
import { assertFuseAvailable } from '../../src/fuse/fuse-frontend.js';
import { ROOT_ID } from '../../src/datastore/types.js';
import type { RestorePoint } from '../../src/repo/contract.js';
import { MemoryDiskSource, MemoryRepository, patternBytes } from './fixtures/memory-repository.js';

const data = patternBytes(1024 * 1024, 9);
const point = (id: string, disks: string[]): RestorePoint => ({
  id,
  vm: { name: 'app', memoryMiB: 128, vcpus: 1, disks: disks.map((name) => ({ name })), nics: [] },
  disks: disks.map((name) => ({ name, size: data.length, indexDigest: 'x' })),
  consistency: 'crash',
  time: new Date().toISOString(),
  source: 'test',
  stats: { bytesRead: 0, bytesNew: 0, bytesReused: 0, bytesZero: 0, seconds: 0 },
});
const repository = new MemoryRepository([point('p1', ['sda']), point('p2', ['sda', 'sdb'])], {
  'p1/sda': new MemoryDiskSource(data, 64 * 1024),
  'p2/sda': new MemoryDiskSource(data, 64 * 1024),
});

function stateDir(t: { teardown(fn: () => void): void }): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'rl-pubapi-'));
  t.teardown(() => fs.rmSync(d, { recursive: true, force: true }));
  return d;
}

t.test('a publication without FUSE: datastore, record, resume, discard', async (t) => {
  const dir = stateDir(t);
  const pub = await startPublication({ repo: dir, point: 'p1', stateDir: dir, overlayLimitBytes: 1024 * 1024 }, { repository });
  t.equal(pub.name, 'app-p1');
  t.same(pub.disks, { sda: 'sda.raw' });
  const ds = pub.datastore;
  const raw = await ds.lookup(await ds.lookup(ROOT_ID, 'app-p1'), 'sda.raw');
  await ds.write(raw, 0, Buffer.from('api write'), true);
  t.same(
    listPublications(dir).map((p) => [p.id, p.running]),
    [['app-p1', true]],
  );
  await pub.close();
  t.same(
    listPublications(dir).map((p) => [p.id, p.running, p.overlayBytes > 0]),
    [['app-p1', false, true]],
  );

  const again = await startPublication({ repo: dir, point: 'p1', stateDir: dir, resume: true }, { repository });
  const raw2 = await again.datastore.lookup(await again.datastore.lookup(ROOT_ID, 'app-p1'), 'sda.raw');
  t.equal(raw2, raw, 'the same file id after a restart');
  t.equal((await again.datastore.read(raw2, 0, 9)).data.toString(), 'api write');
  await again.close({ discard: true });
  t.same(listPublications(dir), []);
});

t.test('bad input: unknown point, unknown disk, unknown publication, bad limit, missing FUSE device', async (t) => {
  const dir = stateDir(t);
  await t.rejects(startPublication({ repo: dir, point: 'nope', stateDir: dir }, { repository }), { code: 'POINT_NOT_FOUND', exitCode: 5 });
  await t.rejects(startPublication({ repo: dir, point: 'p2', stateDir: dir }, { repository }), { code: 'DISK_NOT_FOUND', exitCode: 5 });
  t.notOk(fs.existsSync(path.join(dir, 'overlays', 'app-p2')), 'a failed publication leaves no overlay behind');
  await t.rejects(removePublication(dir, 'nope', { as: LOCAL_USER }), { code: 'PUBLICATION_NOT_FOUND', exitCode: 5 });
  await t.rejects(startPublication({ repo: dir, point: 'p1', stateDir: dir, overlayLimitBytes: 0 }, { repository }), {
    code: 'BAD_OVERLAY_LIMIT',
  });
  t.throws(() => assertFuseAvailable(path.join(dir, 'no-fuse-device')), {
    code: 'MISSING_COMPONENT',
    exitCode: 4,
    message: /libfuse2 \/ fuse3/,
  });
});

t.test('owned publications: a second owner gets its own id, overlay and state; only the owner removes', async (t) => {
  const dir = stateDir(t);
  const user = { kind: 'user' as const, id: 'alice' };
  const run = { kind: 'surebackup' as const, id: 'web-1a2b3c' };
  const live = await startPublication({ repo: dir, point: 'p1', stateDir: dir, owner: user }, { repository });
  t.teardown(() => live.close());
  t.same(live.owner, user);
  const ds = live.datastore;
  const raw = await ds.lookup(await ds.lookup(ROOT_ID, live.name), 'sda.raw');
  await ds.write(raw, 4096, Buffer.from('client write over NFS'), true);
  const overlay = path.join(dir, 'overlays', live.id);
  const overlayFiles = (): Record<string, number> =>
    Object.fromEntries(fs.readdirSync(overlay).map((f) => [f, fs.statSync(path.join(overlay, f)).size]));
  const before = overlayFiles();

  // The server's own process, a job of its own: neither reset nor shared.
  const job = await startPublication({ repo: dir, point: 'p1', stateDir: dir, owner: run }, { repository });
  t.equal(job.id, `${live.id}.2`, 'a second publication, suffixed');
  t.equal(job.name, job.id, 'its datastore directory has a name of its own');
  t.ok(fs.existsSync(path.join(dir, 'overlays', job.id)), 'with an overlay of its own');
  t.same(overlayFiles(), before, 'the live overlay was not reset');
  t.equal((await ds.read(raw, 4096, 21)).data.toString(), 'client write over NFS');

  // A user (CLI or API) is refused the run's publication; the run's owner is not.
  await t.rejects(removePublication(dir, job.id, { discard: true, as: user }), {
    code: 'PUBLICATION_NOT_OWNER',
    exitCode: 6,
    message: /SureBackup run web-1a2b3c/,
  });
  await t.rejects(removePublication(dir, live.id, { discard: true, as: run }), {
    code: 'PUBLICATION_NOT_OWNER',
    message: /belongs to user alice/,
  });
  await t.rejects(removePublication(dir, live.id, { discard: true, as: { kind: 'session', id: 's1' } }), {
    code: 'PUBLICATION_NOT_OWNER',
    hint: /unpublish/,
  });
  t.same(
    listPublications(dir).map((p) => [p.id, p.owner.kind]),
    [
      [live.id, 'user'],
      [job.id, 'surebackup'],
    ],
    'both records are still there',
  );

  await job.close({ discard: true });
  t.same(overlayFiles(), before, "the job's teardown left the live overlay alone");
  t.same(
    listPublications(dir).map((p) => p.id),
    [live.id],
    'and the live record',
  );
  t.equal((await ds.read(raw, 4096, 21)).data.toString(), 'client write over NFS', 'no write is lost');

  // A second user publication of a live point is still refused, as before.
  await t.rejects(startPublication({ repo: dir, point: 'p1', stateDir: dir, owner: { kind: 'user', id: 'bob' } }, { repository }), {
    code: 'PUBLICATION_BUSY',
  });
  // Another user may stop a user's publication (users share theirs).
  await live.close();
  await removePublication(dir, live.id, { as: { kind: 'user', id: 'bob' } });
  const stopped = overlayFiles();
  t.equal(listPublications(dir)[0]?.owner.id, 'alice', 'stopping does not change the owner');

  // A stopped user publication is not a job's to reset either.
  const later = await startPublication({ repo: dir, point: 'p1', stateDir: dir, owner: { kind: 'session', id: 's9' } }, { repository });
  t.equal(later.id, `${live.id}.2`);
  t.same(overlayFiles(), stopped, 'the stopped user overlay is kept for --resume');
  await later.close({ discard: true });
  const resumed = await startPublication({ repo: dir, point: 'p1', stateDir: dir, owner: user, resume: true }, { repository });
  t.equal(resumed.id, live.id);
  const raw3 = await resumed.datastore.lookup(await resumed.datastore.lookup(ROOT_ID, resumed.name), 'sda.raw');
  t.equal((await resumed.datastore.read(raw3, 4096, 21)).data.toString(), 'client write over NFS', 'the user resumes their writes');
  await resumed.close({ discard: true });
  t.same(listPublications(dir), []);
});

t.test("a run whose process is gone leaves an orphan anyone may remove; a session's is only the session's", async (t) => {
  const dir = stateDir(t);
  for (const [owner, id] of [
    [{ kind: 'surebackup', id: 'r1' }, 'app-p1'],
    [{ kind: 'session', id: 's1' }, 'app-p1.2'],
  ] as const) {
    const pub = await startPublication({ repo: dir, point: 'p1', stateDir: dir, owner }, { repository });
    t.equal(pub.id, id);
    await pub.close();
    // As a crashed process leaves it: a record that names a process that is gone.
    const file = path.join(dir, 'publications', id, 'publication.json');
    fs.writeFileSync(file, JSON.stringify({ ...JSON.parse(fs.readFileSync(file, 'utf8')), pid: 2 ** 22 + 1 }));
  }
  t.same(
    listPublications(dir).map((p) => [p.id, p.crashed]),
    [
      ['app-p1', true],
      ['app-p1.2', true],
    ],
  );
  const st = await removePublication(dir, 'app-p1', { discard: true, as: LOCAL_USER });
  t.equal(st.crashed, true);
  await t.rejects(removePublication(dir, 'app-p1.2', { discard: true, as: LOCAL_USER }), {
    code: 'PUBLICATION_NOT_OWNER',
    hint: /restorelab stop s1/,
  });
  await removePublication(dir, 'app-p1.2', { discard: true, as: { kind: 'session', id: 's1' } });
  t.same(listPublications(dir), []);
});

/** startPublication / listPublications / removePublication as a library, over an in-memory repository (no FUSE). */
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { listPublications, removePublication, startPublication } from '../../src/publish/publish.js';
import { assertFuseAvailable } from '../../src/fuse/fuse-frontend.js';
import { ROOT_ID } from '../../src/datastore/types.js';
import type { RestorePoint } from '../../src/repo/contract.js';
import { MemoryDiskSource, MemoryRepository, patternBytes } from './fixtures/memory-repository.js';

const data = patternBytes(1024 * 1024, 9);
const point = (id: string, disks: string[]): RestorePoint => ({
  id, vm: { name: 'app', memoryMiB: 128, vcpus: 1, disks: disks.map((name) => ({ name })), nics: [] }, disks: disks.map((name) => ({ name, size: data.length, indexDigest: 'x' })),
  consistency: 'crash', time: new Date().toISOString(), source: 'test', stats: { bytesRead: 0, bytesNew: 0, bytesReused: 0, bytesZero: 0, seconds: 0 },
});
const repository = new MemoryRepository([point('p1', ['sda']), point('p2', ['sda', 'sdb'])], { 'p1/sda': new MemoryDiskSource(data, 64 * 1024), 'p2/sda': new MemoryDiskSource(data, 64 * 1024) });

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
  t.same(listPublications(dir).map((p) => [p.id, p.running]), [['app-p1', true]]);
  await pub.close();
  t.same(listPublications(dir).map((p) => [p.id, p.running, p.overlayBytes > 0]), [['app-p1', false, true]]);

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
  await t.rejects(removePublication(dir, 'nope'), { code: 'PUBLICATION_NOT_FOUND', exitCode: 5 });
  await t.rejects(startPublication({ repo: dir, point: 'p1', stateDir: dir, overlayLimitBytes: 0 }, { repository }), { code: 'BAD_OVERLAY_LIMIT' });
  t.throws(() => assertFuseAvailable(path.join(dir, 'no-fuse-device')), { code: 'MISSING_COMPONENT', exitCode: 4, message: /libfuse2 \/ fuse3/ });
});

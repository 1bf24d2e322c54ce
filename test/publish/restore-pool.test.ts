/**
 * restorePublications (a server restart) opens publications with a
 * DecodePool, as a fresh publish does: chunks decode on worker threads, not
 * on the thread that answers NFS. Seen as the worker threads (OS threads of
 * this process) the restore starts and its close ends, with the bytes read
 * through the restored datastore equal to the backed-up image.
 */
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initRepository } from '../../src/repo/repository.js';
import { backupVm } from '../../src/backup/engine.js';
import { PublicationDatastore } from '../../src/datastore/publication-datastore.js';
import { ROOT_ID } from '../../src/datastore/types.js';
import { restorePublications, startPublication } from '../../src/publish/publish.js';

const IMAGE_BYTES = 4 * 1024 * 1024;

function threads(): number {
  return readdirSync('/proc/self/task').length;
}

t.test('restored publications decode on worker threads', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'rl-host-restore-pool-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const image = join(dir, 'disk.raw');
  const bytes = Buffer.concat([randomBytes(IMAGE_BYTES / 2), Buffer.alloc(IMAGE_BYTES / 2, 0x5a)]);
  writeFileSync(image, bytes);
  const repo = await initRepository(join(dir, 'repo'));
  const vm = { name: 'app', memoryMiB: 128, vcpus: 1, disks: [{ name: 'sda' }], nics: [] };
  const point = await backupVm({ repo, vm, disks: { sda: image }, source: image });
  const stateDir = join(dir, 'state');

  // Published once and stopped, as before a server restart: the record stays.
  const first = await startPublication({ repo: repo.path, point: point.id, stateDir });
  await first.close();

  const before = threads();
  const datastore = new PublicationDatastore();
  const restored = await restorePublications(stateDir, datastore);
  t.same(restored.restored, [first.id], 'the publication is restored');
  t.same(restored.skipped, []);
  const raw = await datastore.lookup(await datastore.lookup(ROOT_ID, first.name), 'sda.raw');
  const head = await datastore.read(raw, 0, 64 * 1024);
  const tail = await datastore.read(raw, IMAGE_BYTES - 64 * 1024, 64 * 1024);
  t.ok(head.data.equals(bytes.subarray(0, 64 * 1024)), 'the first bytes read back');
  t.ok(tail.data.equals(bytes.subarray(IMAGE_BYTES - 64 * 1024)), 'and the last');
  const during = threads();
  t.ok(during >= before + 2, `decode workers run (${before} threads before, ${during} after)`);
  datastore.detach(first.id);
  await restored.close();
  const deadline = Date.now() + 5000;
  while (threads() > before && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  t.ok(threads() <= before, 'close ends the workers');
});

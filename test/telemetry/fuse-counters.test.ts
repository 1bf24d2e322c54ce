/**
 * A real FUSE mount of a publication counts its ops and bytes into the
 * process-wide counters /metrics exposes. The mount is read and written by
 * child processes: this process serves it, so it must not block on it.
 */
import t from 'tap';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FuseFrontend } from '../../src/fuse/fuse-frontend.js';
import { detachMount } from '../../src/fuse/mounts.js';
import { mountEntry } from '../../src/host/mounts.js';
import { frontendStats } from '../../src/telemetry/counters.js';
import { DISK_SIZE, diskBytes, memoryPublication } from '../fuse/fixtures/memory-publication.js';

const run = promisify(execFile);

t.test('FUSE reads and writes are counted by op and direction', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rl-telemetry-fuse-'));
  const mnt = path.join(dir, 'mnt');
  t.teardown(async () => {
    if (mountEntry(mnt)) await detachMount(mnt);
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const { ds } = await memoryPublication(path.join(dir, 'state'));
  const fuse = await FuseFrontend.mount(ds, { mountPoint: mnt });
  t.teardown(() => fuse.unmount());
  const before = frontendStats('fuse');
  const nfsBefore = frontendStats('nfs');

  const raw = path.join(mnt, 'web-p1', 'sda.raw');
  const copy = path.join(dir, 'copy.raw');
  await run('cp', [raw, copy]);
  t.ok(fs.readFileSync(copy).equals(diskBytes), 'the disk reads back through FUSE');
  await run('dd', ['if=/dev/zero', `of=${raw}`, 'bs=64k', 'count=2', 'conv=notrunc', 'oflag=dsync']);

  const after = frontendStats('fuse');
  t.ok((after.ops.read ?? 0) > (before.ops.read ?? 0), 'read ops are counted');
  t.ok((after.ops.write ?? 0) > (before.ops.write ?? 0), 'write ops are counted');
  t.ok((after.ops.getattr ?? 0) > (before.ops.getattr ?? 0), 'metadata ops are counted too');
  t.ok(after.bytesRead - before.bytesRead >= DISK_SIZE, `at least the disk's ${DISK_SIZE} bytes were read`);
  t.equal(after.bytesWritten - before.bytesWritten, 128 * 1024, 'exactly the bytes dd wrote');
  t.same(frontendStats('nfs'), nfsBefore, 'nothing is counted as NFS');
});

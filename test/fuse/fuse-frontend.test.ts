import t from 'tap';
import { spawn } from 'node:child_process';
import { promisify } from 'node:util';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { FuseFrontend } from '../../src/fuse/fuse-frontend.js';
import { isStaleFuseMount, detachMount } from '../../src/fuse/mounts.js';
import { mountEntry } from '../../src/host/mounts.js';
import { DISK_SIZE, diskBytes, memoryPublication } from './fixtures/memory-publication.js';

// Everything touching the mount is asynchronous or in a child process: this
// process serves the mount, so a synchronous call would wait on itself.
const run = promisify(execFile);
const fsp = fs.promises;

async function sh(cmd: string, args: string[]): Promise<{ status: number; stdout: string; stderr: string }> {
  try {
    const r = await run(cmd, args, { encoding: 'utf8' });
    return { status: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { status: typeof e.code === 'number' ? e.code : 1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

function setup(t: { teardown(fn: () => unknown): void }): { dir: string; mnt: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rl-fuse-'));
  const mnt = path.join(dir, 'mnt');
  t.teardown(async () => {
    if (mountEntry(mnt)) await detachMount(mnt);
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { dir, mnt };
}

t.test('a mounted publication reads, writes, syncs and handles scratch files like a filesystem', async (t) => {
  const { dir, mnt } = setup(t);
  const { ds, pub } = await memoryPublication(path.join(dir, 'state'));
  const fuse = await FuseFrontend.mount(ds, { mountPoint: mnt });
  t.teardown(() => fuse.unmount());
  t.equal(mountEntry(mnt)?.fstype, 'fuse.restorelab');
  // The kernel's 128 KiB default would leave a sequential reader one request in flight.
  t.equal(
    (await fsp.readFile(`/sys/class/bdi/${mountEntry(mnt)!.device}/read_ahead_kb`, 'utf8')).trim(),
    '1024',
    'kernel readahead raised to 1 MiB',
  );
  const pubDir = path.join(mnt, 'web-p1');
  t.same((await fsp.readdir(pubDir)).sort(), ['sda-flat.vmdk', 'sda.raw', 'sda.vmdk', 'web.json', 'web.vmx']);
  const raw = path.join(pubDir, 'sda.raw');
  t.equal((await fsp.stat(raw)).size, DISK_SIZE);
  t.ok((await fsp.readFile(raw)).equals(diskBytes), 'whole disk reads back the restore point');

  // dd with oflag=dsync: each write is acknowledged only once durable.
  const dd = await sh('dd', ['if=/dev/zero', `of=${raw}`, 'bs=64k', 'count=4', 'seek=10', 'conv=notrunc', 'oflag=dsync']);
  t.equal(dd.status, 0, dd.stderr);
  const expect = Buffer.from(diskBytes);
  expect.fill(0, 640 * 1024, 896 * 1024);
  t.ok((await fsp.readFile(path.join(pubDir, 'sda-flat.vmdk'))).equals(expect), 'flat vmdk shows the write');
  t.equal(pub.disks[0]!.overlay.usedBytes, 256 * 1024);

  const fh = await fsp.open(raw, 'r+');
  await fh.write(Buffer.from('unaligned'), 0, 9, 12345);
  await fh.sync();
  await fh.close();
  t.equal((await fsp.readFile(raw)).subarray(12345, 12354).toString(), 'unaligned');

  await fsp.writeFile(path.join(pubDir, 'web.lck'), 'lock');
  await fsp.mkdir(path.join(pubDir, 'logs'));
  await fsp.rename(path.join(pubDir, 'web.lck'), path.join(pubDir, 'logs', 'web.lck'));
  t.equal(await fsp.readFile(path.join(pubDir, 'logs', 'web.lck'), 'utf8'), 'lock');
  await fsp.unlink(path.join(pubDir, 'logs', 'web.lck'));
  await fsp.rmdir(path.join(pubDir, 'logs'));
  await t.rejects(fsp.unlink(raw), { code: 'EACCES' });
  await t.rejects(fsp.writeFile(path.join(mnt, 'x'), 'x'), { code: 'EACCES' });
  t.match(await fsp.readFile(path.join(pubDir, 'sda.vmdk'), 'utf8'), /monolithicFlat/);

  await fuse.unmount();
  t.equal(mountEntry(mnt), undefined, 'no FUSE mount left behind');
  await pub.disks[0]!.overlay.close();
});

t.test('at the overlay limit dd gets ENOSPC and earlier data is intact', async (t) => {
  const { dir, mnt } = setup(t);
  const { ds, pub } = await memoryPublication(path.join(dir, 'state'), 512 * 1024);
  const fuse = await FuseFrontend.mount(ds, { mountPoint: mnt });
  t.teardown(() => fuse.unmount());
  const raw = path.join(mnt, 'web-p1', 'sda.raw');
  const dd = await sh('dd', ['if=/dev/zero', `of=${raw}`, 'bs=64k', 'count=16', 'conv=notrunc,fsync', 'oflag=direct']);
  t.not(dd.status, 0, 'dd fails');
  t.match(dd.stderr, /No space left on device/);
  t.equal(pub.disks[0]!.overlay.usedBytes, 512 * 1024, 'exactly the limit is used');
  const data = await fsp.readFile(raw);
  t.ok(data.subarray(0, 512 * 1024).equals(Buffer.alloc(512 * 1024)), 'accepted writes are there');
  t.ok(data.subarray(512 * 1024).equals(diskBytes.subarray(512 * 1024)), 'the rest is the untouched restore point');
  const st = await sh('stat', ['-f', '-c', '%a', raw]);
  t.equal(st.stdout.trim(), '0', 'statfs reports no space left');
  await fuse.unmount();
  await pub.disks[0]!.overlay.close();
});

t.test('a stale mount left by a killed server is cleared; a live mount point is refused', async (t) => {
  const { dir, mnt } = setup(t);
  const child = spawn(
    process.execPath,
    [fileURLToPath(new URL('./fixtures/mount-child.js', import.meta.url)), mnt, path.join(dir, 'child')],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  t.teardown(() => {
    child.kill('SIGKILL');
  });
  await new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => {
      if (d.toString().includes('ready')) resolve();
    });
    child.on('exit', (code) => reject(new Error(`mount child exited with ${code}`)));
  });
  const { ds, pub } = await memoryPublication(path.join(dir, 'state'));
  t.teardown(() => pub.disks[0]!.overlay.close());
  await t.rejects(FuseFrontend.mount(ds, { mountPoint: mnt }), { code: 'MOUNT_POINT_IN_USE' });
  child.kill('SIGKILL');
  await new Promise((r) => child.once('exit', r));
  t.ok(await isStaleFuseMount(mnt), 'the killed server left a stale mount');
  let cleared = false;
  const fuse = await FuseFrontend.mount(ds, {
    mountPoint: mnt,
    onStaleCleared: () => {
      cleared = true;
    },
  });
  t.ok(cleared, 'stale mount was cleared');
  t.ok((await fsp.stat(path.join(mnt, 'web-p1', 'sda.raw'))).isFile(), 'the new mount serves');
  await fuse.unmount();
  t.equal(mountEntry(mnt), undefined);
});

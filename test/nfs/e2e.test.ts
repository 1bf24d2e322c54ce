import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ROOT_ID } from '../../src/datastore/types.js';
import { memoryFactory, requireTool, run, startServer } from './fixtures/harness.js';

const sha = (b: Buffer): string => crypto.createHash('sha256').update(b).digest('hex');

t.test('libnfs clients over loopback', async (t) => {
  for (const tool of ['nfs-ls', 'nfs-cat', 'nfs-cp']) requireTool(tool);
  const { datastore, seed } = await memoryFactory();
  const pub = seed!.putDir(ROOT_ID, 'pub1');
  const disk = crypto.randomBytes(3 * 1024 * 1024 + 123);
  seed!.putFile(pub, 'disk.raw', disk);
  const { server, ports } = await startServer(datastore);
  t.teardown(() => server.stop());
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'nfs-e2e-'));
  t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
  const q = `?nfsport=${ports.nfs}&mountport=${ports.mount}`;
  const url = (p: string): string => `nfs://127.0.0.1/restorelab${p}${q}`;

  const ls = await run('nfs-ls', [url('/pub1')]);
  t.equal(ls.code, 0, ls.stderr);
  t.match(ls.stdout.toString(), /disk\.raw/);

  const cat = await run('nfs-cat', [url('/pub1/disk.raw')]);
  t.equal(cat.code, 0, cat.stderr);
  t.equal(sha(cat.stdout), sha(disk), 'nfs-cat content matches');

  const local = path.join(tmp, 'copy.raw');
  const cp = await run('nfs-cp', [url('/pub1/disk.raw'), local]);
  t.equal(cp.code, 0, cp.stderr);
  t.equal(sha(fs.readFileSync(local)), sha(disk), 'nfs-cp read matches');

  const up = crypto.randomBytes(2 * 1024 * 1024 + 77);
  fs.writeFileSync(path.join(tmp, 'up.bin'), up);
  const put = await run('nfs-cp', [path.join(tmp, 'up.bin'), url('/pub1/up.bin')]);
  t.equal(put.code, 0, put.stderr);
  const back = await run('nfs-cat', [url('/pub1/up.bin')]);
  t.equal(sha(back.stdout), sha(up), 'written file reads back');
  t.equal(sha(seed!.fileData(await datastore.lookup(pub, 'up.bin'))), sha(up), 'datastore holds the written bytes');
  t.ok(server.metrics.bytesRead >= disk.length * 2);
  t.ok(server.metrics.bytesWritten >= up.length);

  const many = await Promise.all(Array.from({ length: 6 }, () => run('nfs-cat', [url('/pub1/disk.raw')])));
  t.ok(many.every((r) => r.code === 0 && sha(r.stdout) === sha(disk)), 'six concurrent clients read the same file');

  const missing = await run('nfs-cat', [url('/pub1/nope.raw')]);
  t.not(missing.code, 0, 'missing file fails');
});

t.test('large directory pages through READDIRPLUS cookies', async (t) => {
  requireTool('nfs-ls');
  const { datastore, seed } = await memoryFactory();
  const big = seed!.putDir(ROOT_ID, 'big');
  const names = Array.from({ length: 3000 }, (_, i) => `scratch-file-with-a-longish-name-${i}.log`);
  for (const n of names) seed!.putFile(big, n, Buffer.from(n));
  const { server, ports } = await startServer(datastore);
  t.teardown(() => server.stop());
  const ls = await run('nfs-ls', [`nfs://127.0.0.1/restorelab/big?nfsport=${ports.nfs}&mountport=${ports.mount}`]);
  t.equal(ls.code, 0, ls.stderr);
  const listed = ls.stdout.toString().split('\n').map((l) => l.trim().split(/\s+/).pop()).filter((n): n is string => !!n && n.startsWith('scratch'));
  t.equal(new Set(listed).size, names.length, 'every entry listed once');
  t.ok((server.metrics.byProc.READDIRPLUS ?? 0) + (server.metrics.byProc.READDIR ?? 0) > 1, 'listing took several pages');
});

t.test('access control', async (t) => {
  requireTool('nfs-ls');
  const { datastore, seed } = await memoryFactory();
  seed!.putFile(ROOT_ID, 'a.txt', Buffer.from('hello'));
  const { server, ports } = await startServer(datastore, { host: '0.0.0.0', allow: ['127.0.0.2/32'] });
  t.teardown(() => server.stop());
  const r = await run('nfs-ls', [`nfs://127.0.0.1/restorelab?nfsport=${ports.nfs}&mountport=${ports.mount}`]);
  t.not(r.code, 0, 'client outside the allowed CIDR cannot mount');
  t.match(r.stderr + r.stdout.toString(), /ACCES|denied|mount/i);
});

t.test('read-only export refuses writes with ROFS', async (t) => {
  requireTool('nfs-cp');
  const { datastore } = await memoryFactory();
  const { server, ports } = await startServer(datastore, { readOnly: true });
  t.teardown(() => server.stop());
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'nfs-ro-'));
  t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
  fs.writeFileSync(path.join(tmp, 'x'), 'data');
  const r = await run('nfs-cp', [path.join(tmp, 'x'), `nfs://127.0.0.1/restorelab/x?nfsport=${ports.nfs}&mountport=${ports.mount}`]);
  t.not(r.code, 0);
  t.match(r.stderr + r.stdout.toString(), /ROFS|read-only|Read-only/i);
  t.equal(server.metrics.bytesWritten, 0);
});

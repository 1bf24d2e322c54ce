import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { eachDatastore, requireTool, run, startServer } from './fixtures/harness.js';

const sha = (b: Buffer): string => crypto.createHash('sha256').update(b).digest('hex');

eachDatastore(t, 'libnfs clients over loopback', async (t, fx) => {
  for (const tool of ['nfs-ls', 'nfs-cat', 'nfs-cp']) requireTool(tool);
  const { datastore, dir } = fx;
  const disk = crypto.randomBytes(3 * 1024 * 1024 + 123);
  await fx.putFile('disk.raw', disk);
  const { server, ports } = await startServer(datastore);
  t.teardown(() => server.stop());
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'nfs-e2e-'));
  t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
  const q = `?nfsport=${ports.nfs}&mountport=${ports.mount}`;
  const url = (p: string): string => `nfs://127.0.0.1/restorelab${fx.dirPath}${p}${q}`;

  const ls = await run('nfs-ls', [url('')]);
  t.equal(ls.code, 0, ls.stderr);
  t.match(ls.stdout.toString(), /disk\.raw/);

  const cat = await run('nfs-cat', [url('/disk.raw')]);
  t.equal(cat.code, 0, cat.stderr);
  t.equal(sha(cat.stdout), sha(disk), 'nfs-cat content matches');

  const local = path.join(tmp, 'copy.raw');
  const cp = await run('nfs-cp', [url('/disk.raw'), local]);
  t.equal(cp.code, 0, cp.stderr);
  t.equal(sha(fs.readFileSync(local)), sha(disk), 'nfs-cp read matches');

  const up = crypto.randomBytes(2 * 1024 * 1024 + 77);
  fs.writeFileSync(path.join(tmp, 'up.bin'), up);
  const put = await run('nfs-cp', [path.join(tmp, 'up.bin'), url('/up.bin')]);
  t.equal(put.code, 0, put.stderr);
  const back = await run('nfs-cat', [url('/up.bin')]);
  t.equal(sha(back.stdout), sha(up), 'written file reads back');
  t.equal(
    sha((await datastore.read(await datastore.lookup(dir, 'up.bin'), 0, up.length + 1)).data),
    sha(up),
    'datastore holds the written bytes',
  );
  t.ok(server.metrics.bytesRead >= disk.length * 2);
  t.ok(server.metrics.bytesWritten >= up.length);

  const many = await Promise.all(Array.from({ length: 6 }, () => run('nfs-cat', [url('/disk.raw')])));
  t.ok(
    many.every((r) => r.code === 0 && sha(r.stdout) === sha(disk)),
    'six concurrent clients read the same file',
  );

  const missing = await run('nfs-cat', [url('/nope.raw')]);
  t.not(missing.code, 0, 'missing file fails');
});

eachDatastore(t, 'large directory pages through READDIRPLUS cookies', async (t, fx) => {
  requireTool('nfs-ls');
  // A publication's scratch entries are durable metadata, each create journaled: 800 of them still take several pages.
  const names = Array.from({ length: fx.kind === 'memory' ? 3000 : 800 }, (_, i) => `scratch-file-with-a-longish-name-${i}.log`);
  for (const n of names) await fx.putFile(n, Buffer.from(n));
  const { server, ports } = await startServer(fx.datastore);
  t.teardown(() => server.stop());
  const ls = await run('nfs-ls', [`nfs://127.0.0.1/restorelab${fx.dirPath}?nfsport=${ports.nfs}&mountport=${ports.mount}`]);
  t.equal(ls.code, 0, ls.stderr);
  const listed = ls.stdout
    .toString()
    .split('\n')
    .map((l) => l.trim().split(/\s+/).pop())
    .filter((n): n is string => !!n && n.startsWith('scratch'));
  t.equal(new Set(listed).size, names.length, 'every entry listed once');
  t.ok((server.metrics.byProc.READDIRPLUS ?? 0) + (server.metrics.byProc.READDIR ?? 0) > 1, 'listing took several pages');
});

eachDatastore(t, 'access control', async (t, fx) => {
  requireTool('nfs-ls');
  await fx.putFile('a.txt', Buffer.from('hello'));
  const { server, ports } = await startServer(fx.datastore, { host: '0.0.0.0', allow: ['127.0.0.2/32'] });
  t.teardown(() => server.stop());
  const r = await run('nfs-ls', [`nfs://127.0.0.1/restorelab?nfsport=${ports.nfs}&mountport=${ports.mount}`]);
  t.not(r.code, 0, 'client outside the allowed CIDR cannot mount');
  t.match(r.stderr + r.stdout.toString(), /ACCES|denied|mount/i);
});

eachDatastore(t, 'read-only export refuses writes with ROFS', async (t, fx) => {
  requireTool('nfs-cp');
  const { server, ports } = await startServer(fx.datastore, { readOnly: true });
  t.teardown(() => server.stop());
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'nfs-ro-'));
  t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
  fs.writeFileSync(path.join(tmp, 'x'), 'data');
  const r = await run('nfs-cp', [
    path.join(tmp, 'x'),
    `nfs://127.0.0.1/restorelab${fx.dirPath}/x?nfsport=${ports.nfs}&mountport=${ports.mount}`,
  ]);
  t.not(r.code, 0);
  t.match(r.stderr + r.stdout.toString(), /ROFS|read-only|Read-only/i);
  t.equal(server.metrics.bytesWritten, 0);
  await t.rejects(fx.datastore.lookup(fx.dir, 'x'), { code: 'ENOENT' }, 'and nothing was created');
});

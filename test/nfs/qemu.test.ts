// The only NFS test that uses the portmapper port 111 (QEMU's libnfs finds
// mountd and nfsd only through it); no other test file may bind 111.
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ROOT_ID } from '../../src/datastore/types.js';
import { memoryFactory, requireTool, run, startServer } from './fixtures/harness.js';

t.test('qemu-img reads a raw disk over nfs:// through our portmapper on 111', async (t) => {
  requireTool('qemu-img');
  const { datastore, seed } = await memoryFactory();
  const pub = seed!.putDir(ROOT_ID, 'pub1');
  const disk = crypto.randomBytes(4 * 1024 * 1024);
  seed!.putFile(pub, 'disk.raw', disk);
  const { server, ports } = await startServer(datastore, { portmapPort: 111 });
  t.teardown(() => server.stop());
  t.ok(ports.portmap === 111 || ports.registeredWithSystemPortmapper, 'portmapper reachable on 111');
  const url = 'nfs://127.0.0.1/restorelab/pub1/disk.raw';
  const info = await run('qemu-img', ['info', '--output=json', url]);
  t.equal(info.code, 0, info.stderr);
  t.equal((JSON.parse(info.stdout.toString()) as { 'virtual-size': number })['virtual-size'], disk.length);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'nfs-qemu-'));
  t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
  const out = path.join(tmp, 'out.raw');
  const conv = await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', url, out]);
  t.equal(conv.code, 0, conv.stderr);
  t.ok(fs.readFileSync(out).equals(disk), 'converted image matches');

  const fresh = crypto.randomBytes(disk.length);
  fs.writeFileSync(out, fresh);
  const wr = await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', out, url]);
  t.equal(wr.code, 0, wr.stderr);
  t.ok(seed!.fileData(await datastore.lookup(pub, 'disk.raw')).equals(fresh), 'qemu-img wrote through NFS into the datastore');
  t.ok(seed!.commits + seed!.syncWrites > 0, 'writes were committed or synced');
});

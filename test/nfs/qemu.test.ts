// The only NFS test that uses the portmapper port 111 (QEMU's libnfs finds
// mountd and nfsd only through it); no other test file may bind 111.
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ROOT_ID } from '../../src/datastore/types.js';
import { memoryFactory, requireTool, run, startServer } from './fixtures/harness.js';
import { backedUpGuest, chunkFingerprint } from './fixtures/published-guest.js';
import { startPublication } from '../../src/publish/publish.js';
import { startNfsExport } from '../../src/nfs/export.js';
import { QemuDriver } from '../../src/hypervisor/qemu.js';
import { waitForAgent } from '../../src/hypervisor/qga.js';

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

t.test('the web guest boots from the nfs:// URL of a published restore point and survives a server restart', async (t) => {
  requireTool('qemu-system-x86_64');
  const g = await backedUpGuest('web');
  t.teardown(g.cleanup);
  const before = chunkFingerprint(g.repo.path);
  // Fixed ports: libnfs reconnects to the same nfsd port after the restart.
  const serve = async (resume: boolean) => {
    const pub = await startPublication({ repo: g.repo.path, point: g.point, stateDir: g.stateDir, resume }, { repository: g.repo });
    const nfs = await startNfsExport({ datastore: pub.datastore, stateDir: g.stateDir, port: 2049, mountPort: 20048, portmapPort: 111, listen: '127.0.0.1' });
    return { pub, nfs };
  };
  let s = await serve(false);
  t.teardown(async () => { await s.nfs.stop(); await s.pub.close({ discard: true }); });
  const url = s.nfs.url(s.pub.name, 'root.raw');
  t.match(url, /^nfs:\/\/127\.0\.0\.1\/restorelab\/web-[^?]+\/root\.raw$/, 'a plain nfs:// URL, as QEMU needs it');

  const qemu = new QemuDriver({ stateDir: path.join(g.stateDir, 'hv'), accel: 'tcg' });
  const name = `nfs-web-${process.pid}`;
  const t0 = Date.now();
  const dom = await qemu.start({ vm: { ...g.vm, name }, disks: [{ name: 'root', path: url, format: 'raw' }], nics: [] });
  t.teardown(() => dom.destroy());
  let agent = await waitForAgent(dom.agentSocket, 180_000);
  t.pass(`heartbeat after ${((Date.now() - t0) / 1000).toFixed(1)} s booting over NFS`);
  const w = await agent.exec('/bin/sh', ['-c', 'echo before-restart > /root/nfs-marker && sync && cat /root/nfs-marker'], { timeoutMs: 60_000 });
  t.equal(w.stdout.trim(), 'before-restart', 'the guest writes its disk over NFS');
  agent.close();
  t.ok(s.nfs.metrics.bytesWritten > 0, 'the writes reached our server');

  // Restart: stop serving, keep the overlay, serve again with the same server id and ports.
  await s.nfs.stop();
  await s.pub.close();
  s = await serve(true);
  agent = await waitForAgent(dom.agentSocket, 60_000);
  const r = await agent.exec('/bin/sh', ['-c', 'echo after-restart >> /root/nfs-marker && sync && echo 3 > /proc/sys/vm/drop_caches; cat /root/nfs-marker'], { timeoutMs: 120_000 });
  t.equal(r.stdout.trim(), 'before-restart\nafter-restart', 'the guest keeps working after the server restart');
  agent.close();
  t.ok(s.nfs.metrics.bytesWritten > 0, 'the restarted server took the guest\'s new writes');
  await dom.destroy();
  t.equal(chunkFingerprint(g.repo.path), before, 'the repository chunks are byte-identical: writes went to the overlay');
});

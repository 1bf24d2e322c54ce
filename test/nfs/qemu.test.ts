// The only NFS test that uses the portmapper port 111 (QEMU's libnfs finds
// mountd and nfsd only through it); no other test file may bind 111. So the
// recovery session served over NFS (`recover --publish nfs`) is tested here,
// and so is a SureBackup run of a point the server exports (qemu-io writes
// the disk over nfs://).
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ROOT_ID } from '../../src/datastore/types.js';
import { requireTool, run, startServer } from './fixtures/harness.js';
import { MemoryDatastore } from './fixtures/memory-datastore.js';
import { backedUpGuest, chunkFingerprint } from './fixtures/published-guest.js';
import { startPublication } from '../../src/publish/publish.js';
import { startNfsExport } from '../../src/nfs/export.js';
import { QemuDriver } from '../../src/hypervisor/qemu.js';
import { waitForAgent } from '../../src/hypervisor/qga.js';
import { SessionStore } from '../../src/session/store.js';
import { exec } from '../../src/host/exec.js';
import { projectPath } from '../../src/paths.js';
import { stopSession } from '../../src/session/recover.js';
import type { RecoverResult } from '../../src/session/session.js';
import { WEB_EXPECT, cli, httpGet, lastJsonLine, residue, webRepository } from '../session/fixtures/recovery.js';
import { PublicationDatastore } from '../../src/datastore/publication-datastore.js';
import { listPublications } from '../../src/publish/publish.js';
import { createLabBackend } from '../../src/surebackup/backend.js';
import { executeRun } from '../../src/surebackup/execute.js';
import { History } from '../../src/surebackup/history.js';
import { createTestRunner } from '../../src/verify/tests.js';
import type { Job } from '../../src/surebackup/runner.js';
import type { TestRunner } from '../../src/verify/contract.js';
import { guestRepository as sbGuestRepository, labFile, leftovers } from '../surebackup/fixtures/guest-lab.js';
import { guestImage } from '../helpers/guests.js';
import { address, subnet } from '../helpers/subnets.js';

t.test('qemu-img reads a raw disk over nfs:// through our portmapper on 111', async (t) => {
  requireTool('qemu-img');
  const datastore = new MemoryDatastore();
  const pub = datastore.putDir(ROOT_ID, 'pub1');
  const disk = crypto.randomBytes(4 * 1024 * 1024);
  datastore.putFile(pub, 'disk.raw', disk);
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
  t.ok(datastore.fileData(await datastore.lookup(pub, 'disk.raw')).equals(fresh), 'qemu-img wrote through NFS into the datastore');
  t.ok(datastore.commits + datastore.syncWrites > 0, 'writes were committed or synced');
});

t.test('the web guest boots from the nfs:// URL of a published restore point and survives a server restart', async (t) => {
  requireTool('qemu-system-x86_64');
  const g = await backedUpGuest('web');
  t.teardown(g.cleanup);
  const before = chunkFingerprint(g.repo.path);
  // Fixed ports: libnfs reconnects to the same nfsd port after the restart.
  const serve = async (resume: boolean) => {
    const pub = await startPublication({ repo: g.repo.path, point: g.point, stateDir: g.stateDir, resume }, { repository: g.repo });
    const nfs = await startNfsExport({
      datastore: pub.datastore,
      stateDir: g.stateDir,
      port: 2049,
      mountPort: 20048,
      portmapPort: 111,
      listen: '127.0.0.1',
    });
    return { pub, nfs };
  };
  let s = await serve(false);
  t.teardown(async () => {
    await s.nfs.stop();
    await s.pub.close({ discard: true });
  });
  const url = s.nfs.url(s.pub.name, 'root.raw');
  t.match(url, /^nfs:\/\/127\.0\.0\.1\/restorelab\/web-[^?]+\/root\.raw$/, 'a plain nfs:// URL, as QEMU needs it');

  const qemu = new QemuDriver({ stateDir: path.join(g.stateDir, 'hv'), accel: 'tcg' });
  const name = `nfs-web-${process.pid}`;
  const t0 = Date.now();
  const dom = await qemu.start({ vm: { ...g.vm, name }, disks: [{ name: 'root', path: url, format: 'raw' }], nics: [] });
  t.teardown(() => dom.destroy());
  let agent = await waitForAgent(dom.agentSocket, 180_000);
  t.pass(`heartbeat after ${((Date.now() - t0) / 1000).toFixed(1)} s booting over NFS`);
  const w = await agent.exec('/bin/sh', ['-c', 'echo before-restart > /root/nfs-marker && sync && cat /root/nfs-marker'], {
    timeoutMs: 60_000,
  });
  t.equal(w.stdout.trim(), 'before-restart', 'the guest writes its disk over NFS');
  agent.close();
  t.ok(s.nfs.metrics.bytesWritten > 0, 'the writes reached our server');

  // Restart: stop serving, keep the overlay, serve again with the same server id and ports.
  await s.nfs.stop();
  await s.pub.close();
  s = await serve(true);
  agent = await waitForAgent(dom.agentSocket, 60_000);
  const r = await agent.exec(
    '/bin/sh',
    ['-c', 'echo after-restart >> /root/nfs-marker && sync && echo 3 > /proc/sys/vm/drop_caches; cat /root/nfs-marker'],
    { timeoutMs: 120_000 },
  );
  t.equal(r.stdout.trim(), 'before-restart\nafter-restart', 'the guest keeps working after the server restart');
  agent.close();
  t.ok(s.nfs.metrics.bytesWritten > 0, "the restarted server took the guest's new writes");
  await dom.destroy();
  t.equal(chunkFingerprint(g.repo.path), before, 'the repository chunks are byte-identical: writes went to the overlay');
});

for (const driver of ['qemu', 'libvirt'] as const) {
  t.test(`recover --publish nfs (${driver}): web boots from our NFS export in a lab, answers HTTP, and stop leaves nothing`, async (t) => {
    requireTool('qemu-system-x86_64');
    if (driver === 'libvirt') {
      const started = await exec(projectPath('scripts', 'libvirtd'), ['start'], { timeoutMs: 60_000 });
      t.equal(started.code, 0, `scripts/libvirtd start ${started.stderr}`);
    }
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rl-recover-nfs-'));
    const stateDir = path.join(dir, 'state');
    t.teardown(async () => {
      for (const s of new SessionStore(stateDir).list()) await stopSession(stateDir, s.id).catch(() => undefined);
      fs.rmSync(dir, { recursive: true, force: true });
    });
    const { repo } = await webRepository(dir);
    const before = chunkFingerprint(repo);
    const lab = `rn${driver[0]}${process.pid % 10000}`;
    const labPath = path.join(dir, 'lab.json');
    const masq = driver === 'qemu' ? 'nfs/qemu:qemu' : 'nfs/qemu:libvirt';
    fs.writeFileSync(
      labPath,
      JSON.stringify({
        name: lab,
        networks: [{ name: 'prod', subnet: '192.168.77.0/24', gateway: '192.168.77.1', masquerade: subnet(masq) }],
      }),
    );
    const r = await cli(['recover', '--repo', repo, 'web', '--lab', labPath, '--driver', driver, '--publish', 'nfs', '--json'], stateDir);
    t.equal(r.code, 0, `recover exits 0 ${r.stderr}`);
    const out = lastJsonLine<RecoverResult>(r.stdout);
    t.equal(out.state, 'running', `heartbeat after ${out.heartbeatSeconds} s`);
    t.same(out.addresses, { nic0: address(masq) });
    const s = new SessionStore(stateDir).get(out.session);
    t.same(s.publish, { via: 'nfs', port: 2049, mountPort: 20048, portmapPort: 111 }, 'the session records how its disks are served');
    t.match(s.disks.root, /^nfs:\/\/127\.0\.0\.1\/restorelab\/web-[^/]+\/root\.raw$/, 'the VM runs on the nfs:// URL, not a FUSE path');
    t.notOk(s.resources.publication?.mount, 'and nothing is mounted');
    const page = await httpGet(`http://${out.addresses.nic0}/`);
    t.equal(page.status, 200, 'HTTP through the masquerade address: the lab tap went back into the lab');
    t.match(page.body, WEB_EXPECT);

    if (driver === 'qemu') {
      const busy = await cli(
        ['recover', '--repo', repo, 'web', '--driver', 'qemu', '--publish', 'nfs', '--json'],
        path.join(dir, 'other-state'),
        60_000,
      );
      t.not(busy.code, 0, 'a second NFS-served session on the same ports fails');
      t.match(busy.stdout + busy.stderr, /NFS_PORT_UNAVAILABLE/, 'naming the busy NFS port');
    }

    const stop = await cli(['stop', out.session, '--json'], stateDir, 120_000);
    t.equal(stop.code, 0, stop.stderr);
    t.same(
      await residue({
        domain: s.domain,
        mount: path.join(stateDir, 'sessions'),
        ...(s.supervisorPid ? { supervisorPid: s.supervisorPid } : {}),
      }),
      [],
      'no QEMU, supervisor or mount remains',
    );
    t.same(
      (await exec('ip', ['netns', 'list'])).stdout.split('\n').filter((l) => l.startsWith(`rl-${lab}-`)),
      [],
      'the lab is down',
    );
    const free = await run('nfs-ls', ['nfs://127.0.0.1/restorelab/']);
    t.not(free.code, 0, 'and nothing serves NFS any more');
    t.equal(chunkFingerprint(repo), before, 'the repository chunks are unchanged');
  });
}

t.test('recover --publish rejects what it cannot serve', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rl-recover-nfs-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const { repo } = await webRepository(dir);
  const bad = await cli(['recover', '--repo', repo, 'web', '--publish', 'iscsi', '--json'], path.join(dir, 'state'), 30_000);
  t.equal(bad.code, 2);
  t.match(bad.stdout + bad.stderr, /BAD_PUBLISH/);
  const config = path.join(dir, 'config.json');
  fs.writeFileSync(config, JSON.stringify({ nfs: { portmapPort: 0 } }));
  const noPortmap = await cli(
    ['--config', config, 'recover', '--repo', repo, 'web', '--publish', 'nfs', '--json'],
    path.join(dir, 'state'),
    30_000,
  );
  t.equal(noPortmap.code, 2);
  t.match(noPortmap.stdout + noPortmap.stderr, /NFS_NEEDS_PORTMAPPER/);
  t.same(new SessionStore(path.join(dir, 'state')).list(), [], 'no session was recorded');
});

t.test("a SureBackup run of a point the server exports over NFS loses none of the NFS clients' writes", async (t) => {
  for (const tool of ['qemu-io', 'nfs-cat', 'nfs-cp', 'qemu-system-x86_64']) requireTool(tool);
  // Short: QEMU's socket paths under the state directory must stay under 108 bytes.
  const dir = fs.mkdtempSync('/tmp/rlsbn-');
  const stateDir = path.join(dir, 'state');
  const { repo, points } = await sbGuestRepository(dir, ['web']);
  const point = points.web!;
  const image = fs.readFileSync(await guestImage('web'));
  const before = chunkFingerprint(repo);

  // As the API publishes for a user in `restorelab server`: a publication of
  // its own, moved onto the datastore the server's NFS export serves.
  const datastore = new PublicationDatastore();
  let pub = await startPublication({ repo, point: point.id, stateDir, owner: { kind: 'user', id: 'test-operator' } });
  const moved = pub.datastore.detach(pub.id);
  if (!moved) throw new Error('the publication is not in its datastore');
  await datastore.attach(moved);
  const nfs = await startNfsExport({ datastore, stateDir, port: 0, mountPort: 0, portmapPort: 111, listen: '127.0.0.1' });
  const backend = createLabBackend({ repo, stateDir, driver: 'qemu', accel: 'tcg' });
  const history = await History.open(path.join(stateDir, 'catalog.sqlite'));
  t.teardown(async () => {
    history.close();
    await backend.labDown().catch(() => undefined);
    await backend.close();
    await nfs.stop();
    datastore.detach(pub.id);
    await pub.close({ discard: true });
    fs.rmSync(dir, { recursive: true, force: true });
  });

  // A client writes recognisable blocks into the disk (through our portmapper,
  // as QEMU finds the server) and a scratch file, as a hypervisor would.
  const qemuUrl = `nfs://127.0.0.1/restorelab/${pub.name}/root.raw`;
  const writeBlock = async (pattern: number, offset: number): Promise<void> => {
    const w = await run('qemu-io', ['-f', 'raw', '-c', `write -P ${pattern} ${offset} 65536`, '-c', 'flush', qemuUrl], undefined, 120_000);
    t.equal(w.code, 0, `qemu-io write of 0x${pattern.toString(16)} at ${offset} over NFS: ${w.stderr}`);
  };
  const patched = Buffer.from(image);
  await writeBlock(0xa5, 8 << 20);
  patched.fill(0xa5, 8 << 20, (8 << 20) + 65536);
  const scratch = crypto.randomBytes(100_000);
  fs.writeFileSync(path.join(dir, 'client.log'), scratch);
  const put = await run('nfs-cp', [path.join(dir, 'client.log'), nfs.url(pub.name, 'client.log')]);
  t.equal(put.code, 0, put.stderr);

  const labName = `sbn${process.pid % 10000}`;
  const job: Job = {
    name: 'nfs-owned',
    lab: labFile(dir, labName, subnet('nfs/qemu:owned')),
    point: 'latest',
    concurrency: 1,
    applicationGroup: [],
    verify: { vms: ['web'], role: 'web', maxBootSeconds: 150 },
  };
  const real = createTestRunner({ repo: () => backend.reader(), screenshotDir: path.join(dir, 'shots') });
  let wroteDuringRun = false;
  let jobPublications: string[] = [];
  // The client keeps writing while the run's VM is up.
  const runTest: TestRunner = async (spec, vm, signal) => {
    if (!wroteDuringRun) {
      wroteDuringRun = true;
      jobPublications = listPublications(stateDir).map((p) => `${p.id} ${p.owner.kind}`);
      await writeBlock(0x5c, 16 << 20);
      patched.fill(0x5c, 16 << 20, (16 << 20) + 65536);
    }
    return real(spec, vm, signal);
  };
  const rep = await executeRun({
    job,
    backend,
    repo: () => backend.reader(),
    stateDir,
    history,
    trigger: 'manual',
    runTest,
    log: { warn: () => undefined },
  });
  t.equal(rep.result, 'success', JSON.stringify(rep.vms.map((v) => v.tests.map((x) => [x.name, x.result, x.detail]))));
  t.ok(wroteDuringRun, "the client wrote while the run's VM was up");
  t.same(jobPublications, [`${pub.id} user`, `${pub.id}.2 surebackup`], 'the run verified a second publication of the point, its own');

  t.same(
    listPublications(stateDir).map((p) => [p.id, p.owner.kind, p.running]),
    [[pub.id, 'user', true]],
    "the exported publication's record is still there",
  );
  t.ok(fs.existsSync(path.join(stateDir, 'overlays', pub.id, 'root.data')), 'and its overlay');
  t.same(
    await leftovers(stateDir).then((l) => l.filter((x) => !x.startsWith(`publication ${pub.id} `))),
    [],
    'the run left nothing of its own',
  );
  const cat = await run('nfs-cat', [nfs.url(pub.name, 'root.raw')], undefined, 120_000);
  t.equal(cat.code, 0, cat.stderr);
  t.ok(
    cat.stdout.equals(patched),
    'read back over NFS after the run: the disk holds every block the client wrote, and nothing else changed',
  );
  const back = await run('nfs-cat', [nfs.url(pub.name, 'client.log')]);
  t.ok(back.stdout.equals(scratch), "the client's scratch file is still there");

  // Not just open descriptors: the overlay on disk holds the writes (a server restart resumes them).
  datastore.detach(pub.id);
  await pub.close();
  pub = await startPublication({ repo, point: point.id, stateDir, owner: { kind: 'user', id: 'test-operator' }, resume: true });
  const again = pub.datastore.detach(pub.id);
  if (!again) throw new Error('the resumed publication is not in its datastore');
  await datastore.attach(again);
  const resumed = await run('nfs-cat', [nfs.url(pub.name, 'root.raw')], undefined, 120_000);
  t.ok(resumed.stdout.equals(patched), 'after a restart with resume the writes are all there');
  t.equal(chunkFingerprint(repo), before, 'the repository chunks are byte-identical');
});

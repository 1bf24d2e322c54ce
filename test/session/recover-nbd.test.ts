/**
 * Instant recovery over NBD, for real (two boots, TCG): the `web` guest
 * from a real repository, its disk an NBD export of the supervisor's
 * publication on a unix socket, no FUSE mount anywhere.
 *
 * qemu driver (QEMU inside the lab namespace reaches the socket by its
 * path): heartbeat, HTTP through the masquerade address, a synced write in
 * the guest lands in the overlay and never in the repository, stop leaves
 * no socket. libvirt driver: a network disk of protocol nbd, heartbeat,
 * HTTP, a live migration (drive-mirror from the NBD export to a local file,
 * pivot) that unpublishes and removes the socket, stop. And the shared
 * publisher serving the session killed under it: the session fails
 * (PUBLISHER_GONE) and nothing of it is left.
 */
import t, { type Test } from 'tap';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { exec } from '../../src/host/exec.js';
import { readLabState } from '../../src/lab/lab.js';
import { LIBVIRT_URI } from '../../src/hypervisor/libvirt.js';
import { createHypervisor } from '../../src/hypervisor/index.js';
import { parseNbdUrl } from '../../src/nbd/url.js';
import type { RecoverResult } from '../../src/session/session.js';
import { occurrences } from '../publish/fixtures/web.js';
import {
  WEB_EXPECT,
  chunkFingerprint,
  cli,
  httpGet,
  lastJsonLine,
  sessionResidue,
  running,
  waitFor,
  webRepository,
  recoveryWorkspace,
} from './fixtures/recovery.js';
import { listPublications } from '../../src/publish/publish.js';
import { address, subnet, type SubnetName } from '../helpers/subnets.js';

const { dir, stateDir, store, tag, labFile } = recoveryWorkspace(t, 'rl-recover-nbd-');

const fixture = webRepository(dir);

/** Recovers `web` over NBD with `driver`; checks what every NBD session must show while it runs. */
async function recoverOverNbd(t: Test, driver: 'qemu' | 'libvirt', net: SubnetName, lab: string) {
  const { repo } = await fixture;
  const r = await cli(
    ['recover', '--repo', repo, 'web', '--lab', labFile(lab, subnet(net)), '--driver', driver, '--publish', 'nbd', '--json'],
    stateDir,
  );
  t.equal(r.code, 0, `recover --publish nbd exits 0 ${r.stderr}`);
  const out = lastJsonLine<RecoverResult>(r.stdout);
  t.equal(out.state, 'running');
  t.ok(out.heartbeatSeconds > 0, `command to heartbeat over NBD (${driver}): ${out.heartbeatSeconds} s`);
  t.same(out.addresses, { nic0: address(net) });
  const s = store.get(out.session);
  const url = s.disks.root ?? '';
  t.match(url, /^nbd\+unix:\/\/\/root\?socket=/, `the domain's disk is the NBD export: ${url}`);
  const target = parseNbdUrl(url).server;
  const socket = target.type === 'unix' ? target.path : '';
  t.ok(existsSync(socket), 'the socket is there while the session runs');
  t.notOk(readFileSync('/proc/mounts', 'utf8').includes(store.workDir(s.id)), 'no FUSE mount in the data path');
  const page = await httpGet(`http://${out.addresses.nic0}/`);
  t.equal(page.status, 200, 'HTTP through the masquerade address');
  t.match(page.body, WEB_EXPECT);
  return { s, socket, netns: readLabState(stateDir, lab)?.netns };
}

t.test('qemu: recover --publish nbd; a guest write lands in the overlay, never in the repository; stop leaves no socket', async (t) => {
  const { repo } = await fixture;
  const before = chunkFingerprint(repo);
  const { s, socket, netns } = await recoverOverNbd(t, 'qemu', 'session/recover-nbd:qemu', `rn${tag}`);
  const spec = readFileSync(join(stateDir, 'vms', s.domain, 'spec.json'), 'utf8');
  t.match(spec, /\\"driver\\":\\"nbd\\"/, "QEMU's own NBD client opens the disk");

  const pub = s.resources.publication?.id ?? '';
  const marker = `restorelab-nbd-write-${randomBytes(6).toString('hex')}`;
  const dom = await createHypervisor('qemu', { stateDir }).attach(s.domain);
  if (!dom) throw new Error(`no domain ${s.domain}`);
  const agent = await dom.agent(30_000);
  try {
    const w = await agent.exec('/bin/sh', ['-c', `echo ${marker} > /root/nbd-write.txt && sync`], { timeoutMs: 60_000 });
    t.equal(w.exitcode, 0, `the guest writes and syncs ${w.stderr}`);
  } finally {
    agent.close();
  }
  const overlay = join(stateDir, 'overlays', pub, 'root.data');
  t.ok((await occurrences(overlay, marker)) >= 1, 'the write is in the overlay');
  t.equal(chunkFingerprint(repo), before, 'the repository is unchanged while it runs');

  const stop = await cli(['stop', s.id, '--json'], stateDir, 120_000);
  t.equal(stop.code, 0, stop.stderr);
  t.notOk(existsSync(socket), 'stop leaves no socket behind');
  t.same(await sessionResidue(store, s, netns), [], 'no process, namespace, tap or mount remains');
  t.equal(chunkFingerprint(repo), before, 'the repository chunks are unchanged');
});

t.test('libvirt: a network disk of protocol nbd; migrate mirrors it to a local file and unpublishes; stop', async (t) => {
  const started = await exec(fileURLToPath(new URL('../../../scripts/libvirtd', import.meta.url)), ['start'], { timeoutMs: 60_000 });
  t.equal(started.code, 0, `scripts/libvirtd start ${started.stderr}`);
  const { repo } = await fixture;
  const before = chunkFingerprint(repo);
  const { s, socket, netns } = await recoverOverNbd(t, 'libvirt', 'session/recover-nbd:libvirt', `rv${tag}`);
  const xml = await exec('virsh', ['-c', LIBVIRT_URI, 'dumpxml', `rl-${s.domain}`]);
  t.match(xml.stdout, /<source protocol='nbd' name='root'[^>]*>\s*<host transport='unix' socket='[^']+'\/>/, 'libvirt sees an NBD disk');

  const target = join(dir, 'prod-storage');
  const m = await cli(['migrate', s.id, '--to', target, '--format', 'raw', '--json'], stateDir, 600_000);
  t.equal(m.code, 0, `migrate from the NBD export exits 0 ${m.stderr}`);
  const migrated = lastJsonLine<{ state: string; disks: Record<string, string> }>(m.stdout);
  t.equal(migrated.state, 'migrated');
  const disk = join(target, 'web-root.raw');
  t.same(migrated.disks, { root: disk });
  const blk = await exec('virsh', ['-c', LIBVIRT_URI, 'domblklist', `rl-${s.domain}`]);
  t.match(blk.stdout, disk, 'libvirt runs the disk from the local copy');
  t.notOk(existsSync(socket), 'unpublished: the socket is gone');
  t.equal((await httpGet(`http://${s.addresses.nic0}/`)).status, 200, 'still serving after the pivot');

  const stop = await cli(['stop', s.id, '--json'], stateDir, 120_000);
  t.equal(stop.code, 0, stop.stderr);
  t.same(await sessionResidue(store, s, netns), [], 'no process, namespace, tap or mount remains');
  t.equal(chunkFingerprint(repo), before, 'the repository chunks are unchanged');
});

t.test('qemu: the shared publisher killed under a running session fails it, visibly, and leaves nothing', async (t) => {
  const { repo } = await fixture;
  const before = chunkFingerprint(repo);
  const { s, socket, netns } = await recoverOverNbd(t, 'qemu', 'session/recover-nbd:publisher', `rp${tag}`);
  const pub = s.resources.publication?.id ?? '';
  const publisher = listPublications(stateDir).find((p) => p.id === pub)?.pid;
  t.ok(publisher !== undefined && publisher !== s.supervisorPid, `served by the shared publisher (pid ${publisher}), not the supervisor`);
  process.kill(publisher as number, 'SIGKILL');
  await waitFor('the session to fail', () => store.get(s.id).state === 'failed', 60_000);
  const failed = store.get(s.id);
  t.equal(failed.error?.code, 'PUBLISHER_GONE', `and say why: ${failed.error?.message}`);
  await waitFor('the supervisor to exit', () => !running(s.supervisorPid as number), 60_000);
  t.same(await sessionResidue(store, s, netns), [], 'no QEMU, supervisor, namespace, tap or mount remains');
  t.notOk(existsSync(socket), 'no socket');
  t.notOk(
    listPublications(stateDir).some((p) => p.id === pub),
    'the publication and its overlay are gone',
  );
  t.same(store.get(s.id).resources, { taps: [] }, 'nothing left in the record');
  const stop = await cli(['stop', s.id, '--json'], stateDir, 120_000);
  t.equal(stop.code, 0, `stop of the failed session succeeds ${stop.stderr}`);
  t.equal(chunkFingerprint(repo), before, 'the repository chunks are unchanged');
});

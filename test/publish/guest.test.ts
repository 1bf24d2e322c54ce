/**
 * The required publish tests with a real guest: the `web` guest
 * boots under QEMU (TCG) from a FUSE-published restore point, writes a file
 * and syncs; the repository is untouched, re-publishing shows the original
 * disk, resuming shows the write. Then the publisher is killed with -9 while
 * the guest writes, and a --resume publication still holds every synced
 * write. Two boots in all.
 */
import t from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { exec } from '../../src/host/exec.js';
import { QemuDriver } from '../../src/hypervisor/qemu.js';
import { waitForAgent } from '../../src/hypervisor/qga.js';
import type { Domain } from '../../src/hypervisor/types.js';
import { detachMount } from '../../src/fuse/mounts.js';
import { mountEntry } from '../../src/host/mounts.js';
import { listPublications, removePublication } from '../../src/publish/publish.js';
import { processAlive } from '../../src/host/process.js';
import { fsckAfterCrash } from './fixtures/fsck.js';
import {
  BOOT_TIMEOUT_MS,
  chunkFingerprint,
  cli,
  json,
  occurrences,
  webDefinition,
  webRepository,
  type PublishJson,
} from './fixtures/web.js';
import { settle } from '../helpers/ready.js';

// Short: QEMU's socket paths must stay under 108 bytes.
const dir = mkdtempSync('/tmp/rlpg-');
const state = join(dir, 'state');
const mnt = join(dir, 'mnt');
const qemu = new QemuDriver({ stateDir: join(dir, 'vms'), accel: 'tcg' });
const suffix = String(process.pid % 10000);
const domains: Domain[] = [];
const { repo, point, image } = await webRepository(dir);
const before = chunkFingerprint(repo);

t.teardown(async () => {
  for (const d of domains) await d.destroy().catch(() => undefined);
  for (const p of listPublications(state)) await removePublication(state, p.id, { discard: true, as: p.owner }).catch(() => undefined);
  if (mountEntry(mnt)) await detachMount(mnt);
  rmSync(dir, { recursive: true, force: true });
});

const publish = (...extra: string[]): Promise<PublishJson> =>
  cli(['publish', '--repo', repo, point.id, '--fuse', mnt, '--background', '--json', ...extra], state).then((r) => json<PublishJson>(r));

async function boot(disk: string, name: string): Promise<Domain> {
  const web = webDefinition();
  const dom = await qemu.start({
    vm: { ...web, name: `${name}${suffix}` },
    disks: [{ name: 'root', path: disk, format: 'raw' }],
    nics: [],
  });
  domains.push(dom);
  return dom;
}

async function guestSh(dom: Domain, script: string): Promise<string> {
  const agent = await waitForAgent(dom.agentSocket, BOOT_TIMEOUT_MS);
  try {
    const r = await agent.exec('/bin/sh', ['-c', script], { timeoutMs: 60_000 });
    if (r.exitcode !== 0) throw new Error(`guest: ${script}: exit ${r.exitcode}: ${r.stderr}`);
    return r.stdout;
  } finally {
    agent.close();
  }
}

t.test('a guest boots from a published point; its synced write is in the overlay, never in the repository', async (t) => {
  const pub = await publish();
  const dom = await boot(pub.disks.root!, 'pubweb');
  const marker = `restorelab-published-write-${randomBytes(6).toString('hex')}`;
  await guestSh(dom, `echo ${marker} > /root/published.txt && sync`);
  await dom.stop(60_000);
  await dom.destroy();
  json(await cli(['unpublish', pub.publication, '--json'], state));
  t.equal(mountEntry(mnt), undefined, 'unpublish leaves no FUSE mount behind');
  t.equal(chunkFingerprint(repo), before, 'every chunk file is byte-identical to before');

  const resumed = await publish('--resume');
  t.ok((await occurrences(resumed.disks.root!, marker)) >= 1, 'resuming the overlay shows the write');
  json(await cli(['unpublish', resumed.publication, '--json'], state));

  const fresh = await publish();
  t.equal((await exec('cmp', [fresh.disks.root!, image])).code, 0, 're-published without the overlay: the original disk');
  t.equal(await occurrences(fresh.disks.root!, marker), 0);
  json(await cli(['unpublish', fresh.publication, '--discard', '--json'], state));
  t.equal(chunkFingerprint(repo), before, 'still byte-identical');
});

t.test('kill -9 of the publisher while the guest writes: --resume keeps every synced write', async (t) => {
  const pub = await publish();
  const dom = await boot(pub.disks.root!, 'pubkill');
  const marker = `restorelab-acknowledged-${randomBytes(6).toString('hex')}`;
  await guestSh(dom, `echo ${marker} > /root/acked.txt && sync`);
  // Keep the guest writing (and syncing) while the publisher dies.
  await guestSh(dom, '(while true; do dd if=/dev/urandom of=/root/churn bs=64k count=32 conv=fsync; done) >/dev/null 2>&1 &');
  // Killed mid-write: once the loop has written a whole 2 MiB file with fsync (a state, not a 3 s guess).
  const churning = await settle(
    async () => Number((await guestSh(dom, 'stat -c %s /root/churn 2>/dev/null || echo 0')).trim()) >= 2 * 1024 * 1024,
    120_000,
    250,
  );
  t.ok(churning, 'the guest is writing');
  const running = listPublications(state).find((p) => p.id === pub.publication);
  t.ok(running?.running && running.pid, 'the publisher runs');
  process.kill(running!.pid!, 'SIGKILL');
  await dom.destroy();
  // SIGKILL is immediate, but a process is gone only once its threads leave the kernel (an overlay
  // fsync under the guest's writes can take a while): until then it still holds the publication.
  for (let i = 0; i < 100 && processAlive(running!.pid); i++) await new Promise((r) => setTimeout(r, 100));
  t.notOk(processAlive(running!.pid), 'the killed publisher is gone');
  const resumed = await publish('--resume');
  t.ok((await occurrences(resumed.disks.root!, marker)) >= 1, 'the acknowledged write survived kill -9');
  // As the guest's next boot would: journal replayed, crash leftovers repaired, and nothing else wrong.
  const fsck = await fsckAfterCrash(resumed.disks.root!, dir);
  t.ok(fsck.clean, `the guest filesystem is consistent after the crash: ${fsck.output}`);
  json(await cli(['unpublish', resumed.publication, '--discard', '--json'], state));
  t.equal(mountEntry(mnt), undefined, 'no FUSE mount behind');
  t.equal(chunkFingerprint(repo), before, 'the repository chunks are byte-identical');
});

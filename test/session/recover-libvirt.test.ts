/**
 * Instant recovery with the libvirt driver (one boot, TCG): the `web` guest
 * from a real repository, published over FUSE, in a virtual lab; visible in
 * virsh; HTTP through the masquerade address; a live block copy to qcow2
 * (virsh blockcopy + pivot) that unpublishes; stop leaves nothing behind and
 * the repository unchanged.
 */
import t from 'tap';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { exec } from '../../src/host/exec.js';
import { readLabState } from '../../src/lab/lab.js';
import { LIBVIRT_URI } from '../../src/hypervisor/libvirt.js';
import { isMounted } from '../../src/session/runner.js';
import type { RecoverResult } from '../../src/session/session.js';
import {
  WEB_EXPECT,
  chunkFingerprint,
  cli,
  httpGet,
  lastJsonLine,
  sessionResidue,
  webRepository,
  recoveryWorkspace,
} from './fixtures/recovery.js';
import { address, subnet } from '../helpers/subnets.js';

const { dir, stateDir, store, tag } = recoveryWorkspace(t, 'rl-recover-libvirt-');

t.test('libvirt: recover into a lab, virsh sees it, HTTP, block copy to qcow2, stop', async (t) => {
  const started = await exec(fileURLToPath(new URL('../../../scripts/libvirtd', import.meta.url)), ['start'], { timeoutMs: 60_000 });
  t.equal(started.code, 0, `scripts/libvirtd start ${started.stderr}`);
  const { repo } = await webRepository(dir);
  const before = chunkFingerprint(repo);
  const lab = `rl${tag}`;
  const labPath = join(dir, 'lab.json');
  writeFileSync(
    labPath,
    JSON.stringify({
      name: lab,
      networks: [{ name: 'prod', subnet: '192.168.77.0/24', gateway: '192.168.77.1', masquerade: subnet('session/recover-libvirt') }],
    }),
  );

  const r = await cli(['recover', '--repo', repo, 'web', '--lab', labPath, '--driver', 'libvirt', '--json'], stateDir);
  t.equal(r.code, 0, `recover exits 0 ${r.stderr}`);
  const out = lastJsonLine<RecoverResult>(r.stdout);
  t.equal(out.state, 'running');
  t.ok(out.heartbeatSeconds > 0, `command to heartbeat: ${out.heartbeatSeconds} s`);
  t.same(out.addresses, { nic0: address('session/recover-libvirt') });
  const s = store.get(out.session);
  const virsh = await exec('virsh', ['-c', LIBVIRT_URI, 'domstate', `rl-${s.domain}`]);
  t.match(virsh.stdout, /running/, 'virsh shows the recovered VM');
  const page = await httpGet(`http://${out.addresses.nic0}/`);
  t.equal(page.status, 200, 'HTTP through the masquerade address');
  t.match(page.body, WEB_EXPECT);

  const target = join(dir, 'prod-storage');
  const m = await cli(['migrate', s.id, '--to', target, '--format', 'qcow2', '--json'], stateDir, 600_000);
  t.equal(m.code, 0, `migrate exits 0 ${m.stderr}`);
  const migrated = lastJsonLine<{ state: string; disks: Record<string, string> }>(m.stdout);
  t.equal(migrated.state, 'migrated');
  const disk = join(target, 'web-root.qcow2');
  t.same(migrated.disks, { root: disk });
  const blk = await exec('virsh', ['-c', LIBVIRT_URI, 'domblklist', `rl-${s.domain}`]);
  t.match(blk.stdout, disk, 'libvirt runs the disk from the copy');
  t.notOk(isMounted(store.workDir(s.id)), 'unpublished');
  const info = JSON.parse((await exec('qemu-img', ['info', '-U', '--output=json', disk])).stdout) as { format: string };
  t.equal(info.format, 'qcow2');
  t.equal((await httpGet(`http://${out.addresses.nic0}/`)).status, 200, 'still serving after the pivot');

  const netns = readLabState(stateDir, lab)?.netns;
  const stop = await cli(['stop', s.id, '--json'], stateDir, 120_000);
  t.equal(stop.code, 0, stop.stderr);
  const gone = await exec('virsh', ['-c', LIBVIRT_URI, 'domstate', `rl-${s.domain}`]);
  t.not(gone.code, 0, 'the domain is undefined');
  t.same(await sessionResidue(store, s, netns), [], 'no process, namespace, tap or mount remains');
  const check = await exec('qemu-img', ['check', disk]);
  t.equal(check.code, 0, `the qcow2 copy is consistent ${check.stdout}`);
  t.equal(chunkFingerprint(repo), before, 'the repository chunks are unchanged');
});

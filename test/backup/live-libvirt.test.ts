/**
 * Live backup of a libvirt domain by name (`backup --domain`), frozen through
 * libvirt's own guest-agent channel, while the guest writes: a full backup,
 * an incremental one that reads only the changed chunks, then after a VM
 * restart (QEMU process replaced: the raw disk's in-memory bitmap is gone) a
 * full read with the reason given. Every point passes e2fsck -fn and holds
 * what was written before its freeze.
 */
import t from 'tap';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { exec } from '../../src/host/exec.js';
import { openRepository } from '../../src/repo/index.js';
import { guestImage } from '../helpers/guests.js';
import { libvirtGuest, restoredRoot, virsh as virshIn } from '../helpers/live-vm.js';
import { cliIn } from '../helpers/cli.js';

const URI = 'qemu:///system';
const work = await mkdtemp(join(tmpdir(), 'rl-live-lv-'));
const cli = cliIn(work);
const domain = `rl-live-${process.pid}`;
const libvirtd = fileURLToPath(new URL('../../../scripts/libvirtd', import.meta.url));

const virsh = (...args: string[]): Promise<string> => virshIn(URI, ...args);
const guest = libvirtGuest(URI, domain);
const { agent, sh, waitAgent } = guest;

t.teardown(async () => {
  await exec('virsh', ['-c', URI, 'destroy', domain]);
  await exec('virsh', ['-c', URI, 'undefine', domain]);
  await rm(work, { recursive: true, force: true });
});

t.test('backup --domain: full, incremental, and full again after a restart', async (t) => {
  const up = await exec(libvirtd, ['start'], { timeoutMs: 60_000 });
  t.equal(up.code, 0, `libvirtd: ${up.stderr}`);
  const disk = join(work, 'disk.raw');
  t.equal((await exec('cp', ['--sparse=always', await guestImage('web'), disk])).code, 0);
  const xml = join(work, 'domain.xml');
  await writeFile(
    xml,
    `<domain type='qemu'>
  <name>${domain}</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='${disk}'/><target dev='vda' bus='virtio'/></disk>
    <serial type='file'><source path='${join(work, 'console.log')}'/></serial>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
  </devices>
</domain>`,
  );
  await virsh('define', xml);
  await virsh('start', domain);
  await waitAgent();
  const repo = join(work, 'repo');
  t.equal((await cli(['repo', 'init', repo, '--chunk-size', '256K', '--json'])).code, 0);
  const vmFile = join(work, 'vm.json');
  await writeFile(vmFile, JSON.stringify({ name: 'lvweb', memoryMiB: 256, vcpus: 1, disks: [{ name: 'root', format: 'raw' }], nics: [] }));
  const backup = () =>
    cli([
      'backup',
      '--repo',
      repo,
      '--vm',
      vmFile,
      '--domain',
      domain,
      '--libvirt-uri',
      URI,
      '--consistency',
      'filesystem',
      '--no-after-backup',
      '--json',
    ]);
  await agent('guest-exec', {
    path: '/bin/sh',
    arg: ['-c', 'i=0; while :; do i=$((i+1)); echo $i > /cnt.tmp; mv /cnt.tmp /counter; sleep 0.1; done'],
  });

  await sh('echo one > /m1');
  const b1 = await backup();
  t.equal(b1.code, 0, b1.stderr);
  t.match(b1.json, { consistency: 'filesystem', changedBlockTracking: { used: false } });
  const read1 = (b1.json.stats as { bytesRead: number }).bytesRead;

  await sh('dd if=/dev/urandom of=/data bs=64k count=32 2>/dev/null; echo two > /m2');
  const b2 = await backup();
  t.equal(b2.code, 0, b2.stderr);
  t.match(b2.json, { consistency: 'filesystem', changedBlockTracking: { used: true } });
  const read2 = (b2.json.stats as { bytesRead: number }).bytesRead;
  t.ok(read2 > 0 && read2 * 4 < read1, `incremental read ${read2} bytes, full ${read1}`);

  // Restart: a new QEMU process, so the raw disk's in-memory bitmap is gone.
  await virsh('destroy', domain);
  await virsh('start', domain);
  await waitAgent();
  await sh('echo three > /m3');
  const b3 = await backup();
  t.equal(b3.code, 0, b3.stderr);
  t.match(b3.json, {
    changedBlockTracking: { used: false, reason: /bitmap restorelab-\S+ of point \S+ missing on disk root: VM restarted\?/ },
  });
  const read3 = (b3.json.stats as { bytesRead: number }).bytesRead;
  t.ok(read3 >= read1 / 2, `after the restart the whole disk is read again (${read3} bytes)`);

  const r = await openRepository(repo);
  for (const [b, files] of [
    [b1, { '/m1': 'one\n', '/m2': undefined }],
    [b2, { '/m1': 'one\n', '/m2': 'two\n' }],
    [b3, { '/m2': 'two\n', '/m3': 'three\n' }],
  ] as const) {
    const root = await restoredRoot(r, b.json.restorePoint as string, work);
    t.equal(root.fsck.code, 0, `${b.json.restorePoint as string} is clean: ${root.fsck.out}`);
    for (const [path, want] of Object.entries(files)) t.equal(await root.read(path), want, `${path} in ${b.json.restorePoint as string}`);
  }
  t.match(await virsh('domstate', domain), /running/, 'the domain kept running');
});

/**
 * Instant recovery of a UEFI guest (`"firmware": "uefi"` in its VM
 * definition), for real, with both drivers: the guest's disk has only an EFI
 * system partition's loader and no BIOS boot code, so it boots only when the
 * driver gives it OVMF. Each domain gets its own copy of the EFI variable
 * store, and stopping leaves no domain, process, namespace or mount (a
 * libvirt domain with a variable store needs its own undefine).
 */
import t from 'tap';
import { existsSync, openSync, readFileSync, readSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { readLabState } from '../../src/lab/lab.js';
import { recover, stopSession } from '../../src/session/recover.js';
import { initRepository } from '../../src/repo/repository.js';
import { backupVm } from '../../src/backup/engine.js';
import { loadVmDefinition } from '../../src/vm/definition.js';
import { LIBVIRT_URI } from '../../src/hypervisor/libvirt.js';
import { exec } from '../../src/host/exec.js';
import { projectPath } from '../../src/paths.js';
import { WEB_EXPECT, httpGet, sessionResidue, recoveryWorkspace } from './fixtures/recovery.js';
import { guestImage } from '../helpers/guests.js';
import { uefiGuestImage } from '../helpers/uefi-guest.js';
import { subnet } from '../helpers/subnets.js';

const { dir, stateDir, store, tag, labFile } = recoveryWorkspace(t, 'rl-recover-uefi-');

const fixture = (async () => {
  const image = uefiGuestImage(await guestImage('web'), dir, 'web-uefi');
  const repo = join(dir, 'repo');
  const vm = { ...loadVmDefinition(projectPath('lab-templates', 'vms', 'web.json')), firmware: 'uefi' as const };
  await backupVm({ repo: await initRepository(repo), vm, disks: { [vm.disks[0]?.name ?? 'root']: image }, source: image });
  return { repo, image };
})();

t.test('the UEFI image has no BIOS boot code: only UEFI firmware can boot it', async (t) => {
  const { image } = await fixture;
  const mbr = Buffer.alloc(440);
  const fd = openSync(image, 'r');
  readSync(fd, mbr, 0, 440, 0);
  closeSync(fd);
  t.ok(mbr.equals(Buffer.alloc(440)), 'the MBR boot code is empty');
});

for (const driver of ['qemu', 'libvirt'] as const) {
  t.test(`${driver}: a UEFI guest boots from its restore point, with its own variable store; stop leaves nothing`, async (t) => {
    if (driver === 'libvirt') {
      const started = await exec(projectPath('scripts', 'libvirtd'), ['start'], { timeoutMs: 60_000 });
      t.equal(started.code, 0, `scripts/libvirtd start ${started.stderr}`);
    }
    const { repo } = await fixture;
    const lab = `ru${driver[0]}${tag}`;
    const s = await recover({
      repo,
      vm: 'web',
      lab: labFile(lab, subnet(`session/recover-uefi:${driver}`)),
      driver,
      accel: 'tcg',
      stateDir,
    });
    t.equal(s.state, 'running', `${s.error?.message ?? ''}`);
    const page = await httpGet(`http://${s.addresses.nic0}/`);
    t.equal(page.status, 200, 'the guest serves HTTP');
    t.match(page.body, WEB_EXPECT);
    if (driver === 'qemu') {
      const cmdline = readFileSync(`/proc/${s.qemuPid}/cmdline`, 'utf8').split('\0');
      t.ok(
        cmdline.some((a) => /^if=pflash,format=raw,unit=0,readonly=on,file=\/usr\/share\/OVMF\/OVMF_CODE/.test(a)),
        'OVMF code, read-only',
      );
      const vars = cmdline.find((a) => a.startsWith('if=pflash,format=raw,unit=1,'))?.replace(/^.*file=/, '') ?? '';
      t.ok(vars.startsWith(stateDir) && existsSync(vars), `a variable store of its own: ${vars}`);
    } else {
      const xml = await exec('virsh', ['-c', LIBVIRT_URI, 'dumpxml', `rl-${s.domain}`]);
      t.match(xml.stdout, /<loader readonly='yes' type='pflash'>\/usr\/share\/OVMF\/OVMF_CODE[^<]*<\/loader>/, 'OVMF as a pflash loader');
      t.match(xml.stdout, new RegExp(`<nvram>${stateDir}[^<]*efivars\\.fd</nvram>`), 'a variable store of its own');
    }
    const netns = readLabState(stateDir, lab)?.netns;
    await stopSession(stateDir, s.id);
    t.same(await sessionResidue(store, store.get(s.id), netns), [], 'no QEMU, supervisor, namespace or mount remains');
    if (driver === 'libvirt') {
      const gone = await exec('virsh', ['-c', LIBVIRT_URI, 'domstate', `rl-${s.domain}`]);
      t.not(gone.code, 0, 'the domain and its variable store are undefined');
    }
  });
}

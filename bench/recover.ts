/**
 * Recovery time of the `web` test guest: `recover` (repository → FUSE
 * publication → QEMU in a lab) from the command to the guest agent's
 * heartbeat, and to the first HTTP answer through the lab's masquerade
 * address; against booting the same image from a local raw file with the
 * plain qemu driver on a tap in the same lab, measured in the same run.
 * Target: ratio ≤ 1.3.
 *
 *   node dist/bench/recover.js [rounds]
 */
import { copyFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { projectPath } from '../src/paths.js';
import { initRepository } from '../src/repo/repository.js';
import { backupVm } from '../src/backup/engine.js';
import { loadVmDefinition } from '../src/vm/definition.js';
import { addLabTap, labDown, labUp, loadLab, masqueradeAddress, removeLabTap } from '../src/lab/lab.js';
import { QemuDriver } from '../src/hypervisor/qemu.js';
import { heartbeat } from '../src/verify/heartbeat.js';
import { heartbeatProbes } from '../src/bringup/bringup.js';
import { recover, stopSession } from '../src/session/recover.js';
import { probeAccel } from '../src/host/accel.js';
import { firstHttp } from './first-http.js';
import { guestImage } from '../test/helpers/guests.js';

const rounds = Number(process.argv[2] ?? 2);
const dir = mkdtempSync(join(tmpdir(), 'rl-bench-recover-'));
const stateDir = join(dir, 'state');

interface Times {
  heartbeat: number;
  http: number;
}

async function main(): Promise<void> {
  const image = await guestImage('web');
  // Decided once, so neither side pays for the probe.
  const env = process.env.RESTORELAB_ACCEL;
  const accel = env === 'kvm' || env === 'tcg' ? env : (await probeAccel({ cacheDir: stateDir })).accel;
  const vm = loadVmDefinition(projectPath('lab-templates', 'vms', 'web.json'));
  const repoDir = join(dir, 'repo');
  const repo = await initRepository(repoDir);
  await backupVm({ repo, vm, disks: { root: image }, source: image });
  const nic = vm.nics[0];
  if (!nic?.ip) throw new Error('the web definition has no NIC address');
  const labFile = join(dir, 'lab.json');
  writeFileSync(
    labFile,
    JSON.stringify({
      name: 'benchrec',
      networks: [{ name: 'prod', subnet: '192.168.77.0/24', gateway: '192.168.77.1', masquerade: '172.18.109.0/24' }],
    }),
  );
  const lab = await labUp(loadLab(labFile), { stateDir });
  const url = `http://${masqueradeAddress(lab, nic.ip)}/`;
  const plain: Times[] = [];
  const ours: Times[] = [];
  try {
    for (let i = 0; i < rounds; i++) {
      // Peer: plain qemu on a local raw copy, on a tap in the same lab.
      const local = join(dir, 'local.raw');
      copyFileSync(image, local);
      const qemu = new QemuDriver({ stateDir, accel });
      const { tap, netns } = await addLabTap(stateDir, lab.name, nic.network);
      const t0 = performance.now();
      const dom = await qemu.start({
        vm: { ...vm, name: 'bench-plain' },
        disks: [{ name: 'root', path: local, format: 'raw' }],
        nics: [{ kind: 'tap', tap, netns, mac: nic.mac }],
      });
      // The heartbeat recover waits for (three agent answers over four seconds), not the first answer.
      const http = firstHttp(url, t0);
      const hb = await heartbeat(heartbeatProbes(dom, vm, { kind: 'lab', lab }), { maxBootSeconds: 300 });
      if (hb.result !== 'passed') throw new Error(`plain qemu: ${hb.detail}`);
      plain.push({ heartbeat: (performance.now() - t0) / 1000, http: await http });
      await dom.destroy();
      await removeLabTap(stateDir, lab.name, tap);
      rmSync(local, { force: true });

      const t1 = performance.now();
      const httpRecovered = firstHttp(url, t1);
      const s = await recover({ repo: repoDir, vm: vm.name, lab: labFile, driver: 'qemu', stateDir, accel });
      const recovered = { heartbeat: (performance.now() - t1) / 1000, http: await httpRecovered };
      ours.push(recovered);
      await stopSession(stateDir, s.id);
      console.log(
        `round ${i + 1}: plain heartbeat ${plain[i]?.heartbeat.toFixed(2)} s, http ${plain[i]?.http.toFixed(2)} s; ` +
          `recover heartbeat ${recovered.heartbeat.toFixed(2)} s (session says ${s.heartbeatSeconds} s), http ${recovered.http.toFixed(2)} s`,
      );
    }
  } finally {
    await labDown(lab.name, { stateDir, quietIfMissing: true });
  }
  const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;
  console.log(`\nweb guest, ${rounds} round(s), accel ${accel}: mean seconds`);
  for (const k of ['heartbeat', 'http'] as const) {
    const o = mean(ours.map((x) => x[k]));
    const p = mean(plain.map((x) => x[k]));
    console.log(
      `command -> ${k.padEnd(9)} recover ${o.toFixed(2).padStart(7)}   plain qemu (local raw) ${p.toFixed(2).padStart(7)}   ratio ${(o / p).toFixed(2)} (target <= 1.30)`,
    );
  }
}

main().then(
  () => rmSync(dir, { recursive: true, force: true }),
  (e: unknown) => {
    console.error(e, `\n(state kept in ${dir})`);
    process.exitCode = 1;
  },
);

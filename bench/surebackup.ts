/**
 * SureBackup benchmark: wall time to verify 6 `web`-class VMs (full web role:
 * heartbeat, ping, tcp, http, screenshot, integrity) with at most 1, 2 and 3
 * VMs at a time, against the sum of their individual recovery times measured
 * in the same run (the concurrency-1 pass, where each VM runs alone).
 * Prints the speed-up and the peak host memory in use (MemTotal -
 * MemAvailable, sampled every 250 ms) per pass.
 *
 * The six VMs are six restore points of the web guest under different names;
 * they share the guest's baked-in address, so each gets a lab of its own and
 * the passes cap them with one shared global Limiter (the same limiter the
 * job-level cap sits on). Disks are published over FUSE from the
 * repository (instant recovery), guests run under TCG.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { projectPath } from '../src/paths.js';
import { initRepository } from '../src/repo/repository.js';
import { backupVm } from '../src/backup/engine.js';
import { loadVmDefinition } from '../src/vm/definition.js';
import { createLabBackend } from '../src/surebackup/backend.js';
import { createTestRunner } from '../src/verify/tests.js';
import { runJob, type Job } from '../src/surebackup/runner.js';
import type { VmResult } from '../src/verify/contract.js';
import { Limiter } from '../src/surebackup/limiter.js';
import { guestImage } from '../test/helpers/guests.js';
import { labFile } from '../test/surebackup/fixtures/guest-lab.js';

const VMS = 6;
const memUsedMiB = (): number => {
  const m = Object.fromEntries(
    readFileSync('/proc/meminfo', 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => {
        const [k, v] = l.split(/:\s+/);
        return [k, parseInt(v ?? '0', 10)];
      }),
  );
  return Math.round(((m.MemTotal ?? 0) - (m.MemAvailable ?? 0)) / 1024);
};

async function main(): Promise<void> {
  const dir = mkdtempSync('/tmp/rlsbb-');
  try {
    const image = await guestImage('web');
    const repo = await initRepository(join(dir, 'repo'));
    const def = loadVmDefinition(projectPath('lab-templates', 'vms', 'web.json'));
    const names = Array.from({ length: VMS }, (_, i) => `web${i + 1}`);
    for (const name of names) await backupVm({ repo, vm: { ...def, name }, disks: { root: image }, source: image });
    const stateDir = join(dir, 'state');
    let individual = 0;
    // Ctrl-C still tears every lab and VM down.
    const ac = new AbortController();
    process.once('SIGINT', () => ac.abort(new Error('interrupted')));
    process.once('SIGTERM', () => ac.abort(new Error('terminated')));
    console.log(`6 web-class VMs, TCG, ${(await import('node:os')).cpus().length} cores`);
    for (const cap of [1, 2, 3]) {
      const limiter = new Limiter(cap, Number.MAX_SAFE_INTEGER);
      const base = memUsedMiB();
      let peak = base;
      const sampler = setInterval(() => {
        peak = Math.max(peak, memUsedMiB());
      }, 250);
      const t0 = Date.now();
      const results: VmResult[] = (
        await Promise.all(
          names.map(async (name, i) => {
            const backend = createLabBackend({ repo: repo.path, stateDir, driver: 'qemu', accel: 'tcg' });
            const job: Job = {
              name: `bench-${name}`,
              lab: labFile(dir, `sbb${cap}${i}`, `172.18.${140 + i}.0/24`),
              point: 'latest',
              concurrency: 1,
              applicationGroup: [],
              verify: { vms: [name], role: 'web', maxBootSeconds: 300 },
            };
            try {
              const r = await runJob(
                job,
                backend,
                createTestRunner({ repo: () => backend.reader(), screenshotDir: join(dir, `shots-${cap}`) }),
                { limiter, signal: ac.signal },
              );
              return r.vms;
            } finally {
              await backend.close();
            }
          }),
        )
      ).flat();
      clearInterval(sampler);
      const wall = (Date.now() - t0) / 1000;
      const sum = results.reduce((s, v) => s + v.recoverySeconds, 0);
      if (cap === 1) individual = sum;
      const failed = results.filter((v) => v.result !== 'success').map((v) => v.name);
      console.log(
        `concurrency ${cap}: wall ${wall.toFixed(1)} s; sum of individual recovery times ${individual.toFixed(1)} s; ` +
          `speed-up ${(individual / wall).toFixed(2)}x; mean recovery at this concurrency ${(sum / results.length).toFixed(1)} s ` +
          `(${(sum / results.length / (individual / VMS)).toFixed(2)}x the solo mean); peak host memory ${peak} MiB (+${peak - base} MiB over ${base} MiB before)` +
          (failed.length ? `; NOT PASSED: ${failed.join(', ')}` : ''),
      );
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();

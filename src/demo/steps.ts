/** The demo's steps in pipeline order; each capability fills in its `run`. */
import { join } from 'node:path';
import { existsSync } from 'node:fs';
import { runDoctor } from '../host/doctor.js';
import { exec } from '../host/exec.js';
import { projectPath } from '../paths.js';
import { RestorelabError, ExitCode } from '../errors.js';
import type { DemoStep } from './pipeline.js';
import { loadVmDefinition } from '../vm/definition.js';
import { initRepository, openRepository, type LocalRepository } from '../repo/repository.js';
import { verifyRepository } from '../repo/verify.js';
import { backupVm } from '../backup/engine.js';
import { openCatalog, recordPoint } from '../catalog/catalog.js';
import { formatBytes } from '../cli/output.js';

/** The demo keeps one repository across runs, so a second run shows an incremental backup. */
async function openOrInitRepository(dir: string): Promise<LocalRepository> {
  return existsSync(join(dir, 'config.json')) ? openRepository(dir) : initRepository(dir);
}

export const demoSteps: DemoStep[] = [
  {
    name: 'build-guest',
    description: 'build the `web` test guest from Debian packages',
    run: async ({ config, values }) => {
      const r = await exec(projectPath('scripts', 'build-guests'), ['--out', config.guestsDir, 'web'], { timeoutMs: 15 * 60_000 });
      if (r.code !== 0) throw new Error(`scripts/build-guests failed: ${r.stderr.trim().split('\n').slice(-3).join(' / ')}`);
      const image = join(config.guestsDir, 'web.raw');
      if (!existsSync(image)) throw new Error(`scripts/build-guests did not produce ${image}`);
      values.image = image;
      return image;
    },
  },
  {
    name: 'doctor',
    description: 'probe the host (QEMU, accelerator, FUSE, netns)',
    run: async ({ config }) => {
      const r = await runDoctor({ cacheDir: config.stateDir, guestsDir: config.guestsDir });
      if (!r.ok) {
        const bad = r.checks.filter((c) => !c.ok && c.required).map((c) => `${c.name} (${c.fix ?? c.detail})`);
        throw new RestorelabError('HOST_UNFIT', `host lacks required components: ${bad.join(', ')}`, { hint: 'run scripts/setup', exitCode: ExitCode.missingComponent });
      }
      return `accelerator ${r.accel}; ${r.checks.filter((c) => c.ok).length}/${r.checks.length} checks ok`;
    },
  },
  {
    name: 'backup',
    description: 'back up the guest into the repository',
    run: async ({ config, values }) => {
      const repo = await openOrInitRepository(config.repository);
      const vm = loadVmDefinition(projectPath('lab-templates', 'vms', 'web.json'));
      const point = await backupVm({ repo, vm, disks: { [vm.disks[0]?.name ?? 'root']: values.image ?? '' } });
      const db = openCatalog(config.catalog);
      try { recordPoint(db, repo.path, point); } finally { db.close(); }
      values.point = point.id;
      const s = point.stats;
      return `restore point ${point.id} in ${config.repository}: read ${formatBytes(s.bytesRead)}, new ${formatBytes(s.bytesNew)}, ` +
        `reused ${formatBytes(s.bytesReused)}, zero ${formatBytes(s.bytesZero)} in ${s.seconds} s`;
    },
  },
  {
    name: 'verify',
    description: 'verify every chunk of the restore point',
    run: async ({ config, values }) => {
      const repo = await openRepository(config.repository);
      const r = await verifyRepository(repo, values.point ? { point: values.point } : {});
      if (!r.ok) throw new RestorelabError('VERIFY_FAILED', `${r.corrupt.length} corrupt item(s) in ${config.repository}`, { hint: 'run restorelab verify --repo ' + config.repository, exitCode: ExitCode.verifyFailed });
      return `${r.chunksChecked} chunks (${formatBytes(r.bytesChecked)}) verified in ${r.seconds.toFixed(1)} s`;
    },
  },
  { name: 'publish', description: 'publish the restore point over FUSE and NFS' },
  { name: 'recover', description: 'boot the VM from the backup inside a virtual lab' },
  { name: 'surebackup', description: 'run the SureBackup verification job and write the report' },
];

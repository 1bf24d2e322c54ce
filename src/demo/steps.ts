/** The demo's steps in pipeline order; each capability fills in its `run`. */
import { join } from 'node:path';
import { existsSync } from 'node:fs';
import { runDoctor } from '../host/doctor.js';
import { exec } from '../host/exec.js';
import { projectPath } from '../paths.js';
import { RestorelabError, ExitCode } from '../errors.js';
import type { DemoStep } from './pipeline.js';

export const demoSteps: DemoStep[] = [
  {
    name: 'doctor',
    description: 'probe the host (QEMU, accelerator, FUSE, netns)',
    run: async ({ config }) => {
      const r = await runDoctor({ cacheDir: config.stateDir });
      if (!r.ok) {
        const bad = r.checks.filter((c) => !c.ok && c.required).map((c) => `${c.name} (${c.fix ?? c.detail})`);
        throw new RestorelabError('HOST_UNFIT', `host lacks required components: ${bad.join(', ')}`, { hint: 'run scripts/setup', exitCode: ExitCode.missingComponent });
      }
      return `accelerator ${r.accel}; ${r.checks.filter((c) => c.ok).length}/${r.checks.length} checks ok`;
    },
  },
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
  { name: 'backup', description: 'back up the guest into the repository' },
  { name: 'verify', description: 'verify every chunk of the restore point' },
  { name: 'publish', description: 'publish the restore point over FUSE and NFS' },
  { name: 'recover', description: 'boot the VM from the backup inside a virtual lab' },
  { name: 'surebackup', description: 'run the SureBackup verification job and write the report' },
];

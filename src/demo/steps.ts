/** The demo's steps in pipeline order; each capability fills in its `run`. */
import { dirname, join } from 'node:path';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import { existsSync } from 'node:fs';
import { runDoctor } from '../host/doctor.js';
import { exec } from '../host/exec.js';
import { projectPath } from '../paths.js';
import { RestorelabError } from '../errors.js';
import type { DemoStep } from './pipeline.js';
import { loadVmDefinition } from '../vm/definition.js';
import { initRepository, openRepository } from '../repo/repository.js';
import type { RepositoryMaintenance } from '../repo/api.js';
import { verifyRepository } from '../repo/verify.js';
import { backupVm } from '../backup/engine.js';
import { connectCatalog, recordPoint } from '../catalog/catalog.js';
import { formatBytes } from '../format/output.js';
import { startPublication } from '../publish/publish.js';
import { startNfsExport } from '../nfs/export.js';
import { loadJob } from '../surebackup/job.js';
import { createLabBackend } from '../surebackup/backend.js';
import { executeRun } from '../surebackup/execute.js';
import { History } from '../surebackup/history.js';
import { Limiter } from '../surebackup/limiter.js';
import { recover, stopSession } from '../session/recover.js';

/**
 * Streamed, and asynchronous on purpose: this process also serves the FUSE
 * mount being read, so a synchronous read would deadlock it.
 */
async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  await pipeline(createReadStream(path, { highWaterMark: 1 << 20 }), h);
  return h.digest('hex');
}

/** The demo keeps one repository across runs, so a second run shows an incremental backup. */
async function openOrInitRepository(dir: string): Promise<RepositoryMaintenance> {
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
        throw new RestorelabError('HOST_UNFIT', `host lacks required components: ${bad.join(', ')}`, { hint: 'run scripts/setup' });
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
      const db = await connectCatalog(config.catalog);
      try {
        await recordPoint(db, repo.path, point);
      } finally {
        await db.close();
      }
      values.point = point.id;
      const s = point.stats;
      return (
        `restore point ${point.id} in ${config.repository}: read ${formatBytes(s.bytesRead)}, new ${formatBytes(s.bytesNew)}, ` +
        `reused ${formatBytes(s.bytesReused)}, zero ${formatBytes(s.bytesZero)} in ${s.seconds} s`
      );
    },
  },
  {
    name: 'verify',
    description: 'verify every chunk of the restore point',
    run: async ({ config, values }) => {
      const repo = await openRepository(config.repository);
      const r = await verifyRepository(repo, values.point ? { point: values.point } : {});
      if (!r.ok)
        throw new RestorelabError('VERIFY_FAILED', `${r.corrupt.length} corrupt item(s) in ${config.repository}`, {
          hint: 'run restorelab verify --repo ' + config.repository,
        });
      return `${r.chunksChecked} chunks (${formatBytes(r.bytesChecked)}) verified in ${r.seconds.toFixed(1)} s`;
    },
  },
  {
    name: 'publish',
    description: 'publish the restore point over FUSE and NFS',
    run: async ({ config, values }) => {
      const pub = await startPublication({
        repo: config.repository,
        point: values.point ?? '',
        stateDir: config.stateDir,
        fuseDir: join(config.stateDir, 'demo-mount'),
      });
      try {
        // Ephemeral ports and no portmapper: the demo must not collide with an NFS server already on this host.
        const nfs = await startNfsExport({
          datastore: pub.datastore,
          stateDir: config.stateDir,
          port: 0,
          mountPort: 0,
          portmapPort: null,
          listen: '127.0.0.1',
        });
        try {
          const [disk, path] = Object.entries(pub.disks)[0] ?? [];
          if (!disk || !path) throw new Error(`publication ${pub.id} has no disk`);
          const [published, source] = await Promise.all([sha256File(path), sha256File(values.image ?? '')]);
          if (published !== source)
            throw new Error(`${path} differs from ${values.image}: the published disk must read back the backed-up bytes`);
          const ls = await exec('nfs-ls', [nfs.url(pub.name)], { timeoutMs: 60_000 });
          if (ls.code !== 0 || !ls.stdout.includes(`${disk}.raw`)) throw new Error(`nfs-ls of the export failed: ${ls.stderr.trim()}`);
          return `${disk}.raw on FUSE (${path}) reads back the source image bit for bit; NFS export lists it (${nfs.url(pub.name, `${disk}.raw`)})`;
        } finally {
          await nfs.stop();
        }
      } finally {
        await pub.close({ discard: true });
      }
    },
  },
  {
    name: 'recover',
    description: 'boot the VM from the backup inside a virtual lab',
    run: async ({ config, values }) => {
      const session = await recover({
        repo: config.repository,
        vm: 'web',
        ...(values.point ? { point: values.point } : {}),
        lab: projectPath('lab-templates', 'labs', 'prod-lab.json'),
        driver: config.driver,
        stateDir: config.stateDir,
        accel: config.accel,
        ...(config.fuse.group !== undefined ? { fuseGroup: config.fuse.group } : {}),
      });
      try {
        const ip = Object.values(session.addresses)[0];
        if (!ip) throw new Error(`session ${session.id} reports no address`);
        const page = await fetch(`http://${ip}/`, { signal: AbortSignal.timeout(60_000) });
        if (page.status !== 200) throw new Error(`the recovered web guest answered HTTP ${page.status} on ${ip}`);
        return `session ${session.id}: heartbeat after ${session.heartbeatSeconds?.toFixed(1)} s, HTTP 200 from ${ip} (the masquerade address of 192.168.77.10)`;
      } finally {
        await stopSession(config.stateDir, session.id);
      }
    },
  },
  {
    name: 'surebackup',
    description: 'run the SureBackup verification job and write the report',
    run: async ({ config, out }) => {
      const jobFile = projectPath('lab-templates', 'jobs', 'demo.json');
      const job = loadJob(jobFile);
      const backend = createLabBackend({
        repo: config.repository,
        stateDir: config.stateDir,
        driver: config.driver,
        accel: config.accel,
        baseDir: dirname(jobFile),
        ...(config.fuse.group !== undefined ? { fuseGroup: config.fuse.group } : {}),
      });
      const history = await History.open(config.catalog);
      try {
        const rep = await executeRun({
          job,
          jobFile,
          backend,
          repo: () => backend.reader(),
          stateDir: config.stateDir,
          history,
          trigger: 'manual',
          limiter: new Limiter(config.limits.maxConcurrentVms, config.limits.memoryBudgetMiB),
          log: { warn: (l) => out.warn(l) },
        });
        const vms = rep.vms.map(
          (v) =>
            `${v.name} ${v.result} (recovered in ${v.recoverySeconds.toFixed(1)} s; ${v.tests.map((x) => `${x.name} ${x.result}`).join(', ')})`,
        );
        if (rep.result !== 'success')
          throw new RestorelabError('VERIFY_FAILED', `job ${job.name}: ${rep.result}: ${vms.join('; ')}`, {
            hint: `see the report ${rep.report}`,
          });
        return `${rep.result}: ${vms.join('; ')}; report ${rep.report}`;
      } finally {
        await history.close();
        await backend.close();
      }
    },
  },
];

/**
 * `restorelab recover --repo R <vm>[@<point>] [--lab F | --network BR] [--driver D] [--publish fuse|nfs|nbd]`:
 * instant VM recovery (docs/recovery.md). Prints once the guest's heartbeat
 * is seen and returns; the VM keeps running under a detached session
 * supervisor (the hidden `session-supervise` command).
 */
import type { Command } from 'commander';
import { contextFor } from '../context.js';
import { badInput } from '../../errors.js';
import { recoverResult, type RecoverResult, type SessionPublish } from '../../session/session.js';

export function parseTarget(target: string): { vm: string; point?: string } {
  const at = target.indexOf('@');
  if (at === 0 || at === target.length - 1)
    throw badInput('BAD_TARGET', `"${target}" is not <vm> or <vm>@<point>`, 'e.g. restorelab recover web or web@<point id>');
  return at < 0 ? { vm: target } : { vm: target.slice(0, at), point: target.slice(at + 1) };
}

/** The human result (shared with remote mode, src/cli/remote-commands.ts). */
export function renderRecovered(r: RecoverResult): string {
  const addrs = Object.entries(r.addresses).map(([n, a]) => `  ${n}: ${a}`);
  const scan = r.scan
    ? [
        `scan: ${r.scan.verdict} (${r.scan.files.scanned} file(s) scanned, ${r.scan.files.cached} from the cache)`,
        ...r.scan.matches.map((m) => `  ${m.rule}  ${m.disk} p${m.partition} ${m.path}`),
      ]
    : [];
  const quarantine = r.quarantine
    ? [
        `INFECTED point recovered in quarantine: ${r.quarantine.lab ? `lab ${r.quarantine.lab}, with no uplink at all` : 'no NIC at all'}; the host cannot reach it and it cannot reach anything`,
      ]
    : [];
  return [
    ...scan,
    `session ${r.session}: ${r.vm} is running (heartbeat after ${r.heartbeatSeconds} s)`,
    ...quarantine,
    ...addrs,
    `stop it with: restorelab stop ${r.session}`,
  ].join('\n');
}

/** `recover --run-on workers`: the recovery goes to the lab workers' queue; one of them runs the session. */
async function recoverOnWorkersCli(
  target: string,
  o: { repo?: string; keyFile?: string; lab?: string; network?: string; driver?: string; accel?: string; publish?: string; scan?: string },
  c: Command,
): Promise<void> {
  // These name things on this host, or choices each worker makes from its own config.
  const here = (['network', 'driver', 'accel', 'scan'] as const).filter((k) => o[k] !== undefined);
  if (here.length > 0)
    throw badInput(
      'BAD_FLAGS',
      `--run-on workers does not go with ${here.map((k) => `--${k.replace(/[A-Z]/g, (x) => '-' + x.toLowerCase())}`).join(', ')}`,
      'a worker recovers into a lab (--lab) with its own driver and accelerator (its config)',
    );
  if (o.publish !== undefined && o.publish !== 'fuse' && o.publish !== 'nbd')
    throw badInput('BAD_PUBLISH', `--run-on workers serves the disks over fuse or nbd, not "${o.publish}"`, 'use --publish fuse or nbd');
  const { recoverQueueUrl, planWorkerRecovery, recoverOnWorkers, withQueue } = await import('../../workers/sessions.js');
  const { depsWithKey } = await import('../../session/deps.js');
  const { keyFileOption } = await import('../../config/key-file.js');
  const ctx = contextFor(c);
  const cfg = await ctx.config();
  const url = recoverQueueUrl(cfg.catalog);
  const { vm, point } = parseTarget(target);
  const repoPath = o.repo ?? cfg.repository;
  // Read here only to check the point; the worker opens the repository with its own key file.
  const repo = await depsWithKey(keyFileOption(o.keyFile, cfg).keyFile).openRepository(repoPath);
  const task = await planWorkerRecovery(
    {
      repo: repoPath,
      vm,
      ...(point ? { point } : {}),
      ...(o.lab ? { lab: o.lab } : {}),
      ...(o.publish === 'nbd' ? { publish: 'nbd' as const } : {}),
      baseDir: process.cwd(),
    },
    repo,
  );
  ctx.out.info(`recovering ${vm}@${task.point} on a lab worker...`);
  const s = await withQueue(url, (q) => recoverOnWorkers(q, task, { log: (l) => ctx.out.info(l) }));
  const result = {
    session: s.id,
    vm: s.vm,
    state: s.state as RecoverResult['state'],
    heartbeatSeconds: s.heartbeatSeconds ?? 0,
    addresses: s.addresses,
    worker: s.worker,
    point: s.point,
    lab: s.lab,
  };
  ctx.out.result(
    result,
    (v) => `${renderRecovered(v as RecoverResult)}\n(on worker ${s.worker}; its addresses are reachable from that host)`,
  );
}

export function registerRecover(program: Command): void {
  program
    .command('recover <vm[@point]>')
    .description('run a VM straight from a restore point (latest by default), in a lab or on a bridge')
    .option('--repo <repo>', 'backup repository, a directory or s3:// URL (default from config)')
    .option('--key-file <file>', 'key file of an encrypted repository (default: RESTORELAB_KEY_FILE, then repositoryKeyFile)')
    .option('--lab <lab.json>', 'run inside this virtual lab (brought up if it is not)')
    .option('--network <bridge>', 'attach the NICs to this existing host bridge (production network)')
    .option('--driver <driver>', 'hypervisor driver: qemu or libvirt (default from config)')
    .option('--accel <accel>', 'kvm or tcg (default: probe)')
    .option(
      '--publish <via>',
      'serve the disks to the hypervisor over fuse, nfs (our NFSv3 server on the configured nfs ports) or nbd (our NBD server on a unix socket; no FUSE in the data path); default fuse',
    )
    .option('--scan <rules>', 'scan the point with this YARA rule file first; an infected point is refused (exit 3)')
    .option('--allow-infected', 'with --scan: recover an infected point anyway, in a lab with no uplink at all (never on --network)')
    .option(
      '--run-on <where>',
      'host (default): here; workers: on a lab worker, through the queue (RESTORELAB_QUEUE), under the worker’s driver and key file',
    )
    .action(
      async (
        target: string,
        o: {
          repo?: string;
          keyFile?: string;
          lab?: string;
          network?: string;
          driver?: string;
          accel?: string;
          publish?: string;
          scan?: string;
          allowInfected?: boolean;
          runOn?: string;
        },
        c: Command,
      ) => {
        if (o.runOn !== undefined && o.runOn !== 'host' && o.runOn !== 'workers')
          throw badInput('BAD_FLAGS', `--run-on is host or workers, not "${o.runOn}"`, 'e.g. restorelab recover web --run-on workers');
        if (o.runOn === 'workers') return recoverOnWorkersCli(target, o, c);
        const { recover } = await import('../../session/recover.js');
        const { keyFileOption } = await import('../../config/key-file.js');
        const ctx = contextFor(c);
        const cfg = await ctx.config();
        const { vm, point } = parseTarget(target);
        const driver = o.driver ?? cfg.driver;
        if (driver !== 'qemu' && driver !== 'libvirt')
          throw badInput('UNKNOWN_DRIVER', `unknown hypervisor driver "${driver}"`, 'use --driver qemu or --driver libvirt');
        const accel = o.accel ?? cfg.accel;
        if (accel !== 'auto' && accel !== 'kvm' && accel !== 'tcg')
          throw badInput('BAD_ACCEL', `unknown accelerator "${accel}"`, 'use --accel kvm or --accel tcg');
        const via = o.publish ?? 'fuse';
        if (via !== 'fuse' && via !== 'nfs' && via !== 'nbd')
          throw badInput('BAD_PUBLISH', `unknown --publish "${o.publish}"`, 'use --publish fuse, --publish nfs or --publish nbd');
        if (via === 'nfs' && cfg.nfs.portmapPort !== 111) {
          throw badInput(
            'NFS_NEEDS_PORTMAPPER',
            `--publish nfs needs the portmapper on port 111 (nfs.portmapPort is ${cfg.nfs.portmapPort})`,
            "QEMU's NFS driver finds the server only through port 111: set nfs.portmapPort to 111, or use --publish fuse",
          );
        }
        const publish: SessionPublish =
          via === 'nfs' ? { via: 'nfs', port: cfg.nfs.port, mountPort: cfg.nfs.mountPort, portmapPort: cfg.nfs.portmapPort } : { via };
        if (o.allowInfected && !o.scan)
          throw badInput('ALLOW_INFECTED_NEEDS_SCAN', '--allow-infected only means something with --scan RULES', 'add --scan <rules.yar>');
        ctx.out.info(
          `recovering ${target} with the ${driver} driver (disks over ${via})${o.scan ? `, after a scan with ${o.scan}` : ''}...`,
        );
        const s = await recover({
          repo: o.repo ?? cfg.repository,
          vm,
          ...(point ? { point } : {}),
          driver,
          accel,
          stateDir: cfg.stateDir,
          ...(o.lab ? { lab: o.lab } : {}),
          ...(o.network ? { network: o.network } : {}),
          publish,
          ...keyFileOption(o.keyFile, cfg),
          ...(cfg.fuse.group !== undefined ? { fuseGroup: cfg.fuse.group } : {}),
          ...(o.scan ? { scan: { rules: o.scan, allowInfected: o.allowInfected === true, catalog: cfg.catalog } } : {}),
        });
        ctx.out.result(recoverResult(s), (v) => renderRecovered(v as RecoverResult));
      },
    );
  program
    .command('publisher-serve', { hidden: true })
    .description("internal: the shared publisher serving every recovery session's NBD exports (started on demand)")
    .requiredOption('--state-dir <dir>', 'state directory')
    .action(async (o: { stateDir: string }) => {
      // The lock first: of several started at once, the losers exit before loading the publisher.
      const lock = await (await import('../../publish/publisher-wire.js')).holdPublisherLock(o.stateDir);
      if (!lock) process.exit(0);
      const { serveSharedPublisher } = await import('../../publish/shared-publisher.js');
      const idle = Number(process.env.RESTORELAB_PUBLISHER_IDLE_MS);
      // Idle decode threads and closed servers leave nothing running, but a stray handle must not keep it alive.
      process.exit(await serveSharedPublisher({ stateDir: o.stateDir, lock, ...(idle > 0 ? { idleMs: idle } : {}) }));
    });
  program
    .command('session-supervise <session>', { hidden: true })
    .description('internal: the detached process that owns a recovery session')
    .requiredOption('--state-dir <dir>', 'state directory')
    .option('--heartbeat-timeout <ms>', 'how long to wait for the guest agent')
    .action(async (id: string, o: { stateDir: string; heartbeatTimeout?: string }) => {
      const { superviseSession } = await import('../../session/supervisor.js');
      const { depsWithKey } = await import('../../session/deps.js');
      const { SessionStore } = await import('../../session/store.js');
      // The key file recover resolved is in the owner-only session record: only its path, never the key, reaches this process.
      const code = await superviseSession(
        o.stateDir,
        id,
        depsWithKey(new SessionStore(o.stateDir).get(id).keyFile),
        o.heartbeatTimeout ? { heartbeatTimeoutMs: Number(o.heartbeatTimeout) } : {},
      );
      // Its last state reaches the shared catalog before it goes.
      await (await import('../../session/catalog.js')).flushSessionCatalog();
      // Whatever a lower layer left open (a FUSE channel, a libvirt
      // connection) must not keep a finished supervisor alive.
      process.exit(code);
    });
}

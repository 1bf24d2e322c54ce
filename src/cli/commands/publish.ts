/**
 * `restorelab publish`: a restore point as live, writable disk files on a FUSE
 * mount and/or over NFS, or as NBD exports (`--nbd`, one per disk, on a unix
 * socket or `--tcp HOST:PORT`; see docs/publish.md). In the foreground it serves until SIGINT or
 * SIGTERM, then unmounts; `--background` starts that same foreground command
 * as a detached child and returns once the child reports the mount ready.
 *
 * The child's output goes to a log that is never deleted: once published,
 * the child moves it into its publication's state directory
 * (`publisher.log`), where `restorelab publications` names it if the child
 * dies; one that fails to start leaves it in `<stateDir>/publications/` and
 * the error names it.
 */
import { Option, type Command } from 'commander';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { writeFileAtomicSync } from '../../host/atomic-file.js';
import { randomBytes } from 'node:crypto';
import { contextFor } from '../context.js';
import { parseSize } from './repo.js';
import { keyFileOption } from '../../config/key-file.js';
import { RestorelabError, badInput } from '../../errors.js';
import type { NfsExport } from '../../nfs/export.js';
import { parsePort, withNfsExportOptions } from './server.js';
import { parseHostPort } from '../../nbd/url.js';
import { allowListMatcher } from '../../host/allow-list.js';

interface PublishFlags {
  repo?: string;
  keyFile?: string;
  fuse?: string;
  fuseGroup?: string;
  nfs?: boolean;
  nbd?: boolean;
  tcp?: string;
  nbdSocket?: string;
  nfsPort?: string;
  mountPort?: string;
  portmapPort?: string;
  allow: string[];
  nfsListen: string[];
  rootSquash?: boolean;
  overlayDir?: string;
  overlayLimit?: string;
  resume?: boolean;
  readOnly?: boolean;
  background?: boolean;
  readyFile?: string;
  logFile?: string;
}

/**
 * What `publish --nbd --json` prints (issue 18's interface: scripts depend
 * on it): each disk's URL, usable as is by qemu-img and qemu-system-x86_64.
 */
export interface NbdPublishResult {
  publication: string;
  disks: Array<{ name: string; nbd: string }>;
  /** A background publisher's log. */
  log?: string;
}

export interface PublishResult {
  publication: string;
  path: string;
  disks: Record<string, string>;
  nfs?: { host: string; port: number; mountPort: number; export: string; url: string; urls: Record<string, string> };
  /** A background publisher's log. */
  log?: string;
}

const READY_WAIT_MS = 120_000;

function render(r: PublishResult | NbdPublishResult): string {
  if (Array.isArray(r.disks)) {
    return [
      `published ${r.publication} over NBD`,
      ...r.disks.map((d) => `  ${d.name}: ${d.nbd}`),
      ...(r.log ? [`  publisher log: ${r.log}`] : []),
    ].join('\n');
  }
  r = r as PublishResult;
  return [
    `published ${r.publication}${r.path ? ` at ${r.path}` : ''}`,
    ...(r.path ? Object.entries(r.disks).map(([n, p]) => `  ${n}: ${p}`) : []),
    ...(r.nfs
      ? [
          `  NFS export ${r.nfs.host}:${r.nfs.export} (nfsd ${r.nfs.port}, mountd ${r.nfs.mountPort})`,
          ...Object.entries(r.nfs.urls).map(([n, u]) => `  ${n}: ${u}`),
        ]
      : []),
    ...(r.log ? [`  publisher log: ${r.log}`] : []),
  ].join('\n');
}

/** The lines of a log; one the child already moved (it died right after) reads as empty. */
function readLog(file: string): string[] {
  try {
    return fs.readFileSync(file, 'utf8').trim().split('\n');
  } catch {
    return [];
  }
}

/** Starts the foreground command detached and waits for its ready file (or its death). */
async function background(stateDir: string): Promise<PublishResult | NbdPublishResult> {
  const { longRunningEnv } = await import('../../host/malloc.js');
  const spawnDir = path.join(stateDir, 'publications');
  fs.mkdirSync(spawnDir, { recursive: true });
  const tag = randomBytes(4).toString('hex');
  const readyFile = path.join(spawnDir, `.ready-${tag}.json`);
  const logFile = path.join(spawnDir, `.publish-${tag}.log`);
  const args = process.argv.slice(1).filter((a) => a !== '--background');
  const log = fs.openSync(logFile, 'a');
  const child = spawn(process.execPath, [...args, '--ready-file', readyFile, '--log-file', logFile], {
    detached: true,
    stdio: ['ignore', log, log],
    env: longRunningEnv(),
  });
  fs.closeSync(log);
  let exited: number | null | undefined;
  child.on('exit', (code) => {
    exited = code;
  });
  child.unref();
  const deadline = Date.now() + READY_WAIT_MS;
  try {
    while (Date.now() < deadline) {
      if (fs.existsSync(readyFile)) return JSON.parse(fs.readFileSync(readyFile, 'utf8')) as PublishResult | NbdPublishResult;
      if (exited !== undefined) {
        const log = readLog(logFile);
        // The child ran with --json when we did: its error object is the most precise report.
        const reported = log
          .map((l) => {
            try {
              return (JSON.parse(l) as { error?: { code: string; message: string; hint?: string } }).error;
            } catch {
              return undefined;
            }
          })
          .find(Boolean);
        const seeLog = `the publisher's log: ${logFile}`;
        if (reported)
          throw RestorelabError.revive({
            code: reported.code,
            message: reported.message,
            hint: reported.hint ? `${reported.hint}; ${seeLog}` : seeLog,
            exitCode: exited ?? 1,
          });
        const first = log.find((l) => /error/i.test(l)) ?? '';
        throw RestorelabError.revive({
          code: 'PUBLISH_FAILED',
          message: `the background publisher exited (code ${exited}): ${first} ... ${log.slice(-3).join(' ')}`,
          hint: `see ${seeLog}`,
          exitCode: exited ?? 1,
        });
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    child.kill('SIGTERM');
    throw new RestorelabError('PUBLISH_TIMEOUT', `the background publisher was not ready within ${READY_WAIT_MS / 1000} s`, {
      hint: `see the publisher's log: ${logFile}`,
    });
  } finally {
    // The log stays: it is all that tells why a publisher died (see the top of this file).
    fs.rmSync(readyFile, { force: true });
  }
}

export function registerPublish(program: Command): void {
  const publish = program
    .command('publish <point>')
    .description('publish a restore point as writable disk files on a FUSE mount and/or over NFS, or over NBD (writes go to an overlay)')
    .option('--repo <repo>', 'repository directory or s3:// URL (default: the configured one)')
    .option('--key-file <file>', 'key file of an encrypted repository')
    .option('--fuse <dir>', 'mount the publications here (created if missing)')
    .option(
      '--fuse-group <group>',
      "group (name or gid) that may use the FUSE mount besides you, e.g. the hypervisor's (default: config fuse.group; none)",
    )
    .option('--nfs', 'export the publication over NFSv3 (docs/nfs.md)')
    .option('--nbd', 'serve each disk as an NBD export named after it, on a unix socket (alone: not with --fuse or --nfs)')
    .option('--nbd-socket <path>', 'with --nbd: the unix socket (default: <stateDir>/publications/<id>/nbd.sock)')
    .option(
      '--tcp <host:port>',
      'with --nbd: also listen on TCP and print nbd:// URLs; only loopback clients get in unless --allow names others (NBD has no access control of its own)',
    );
  withNfsExportOptions(publish, 'NFS port (default from config, 2049; 0 = any free port)')
    .option('--overlay-dir <dir>', 'where overlays (the write cache) live (default: <stateDir>/overlays)')
    .option('--overlay-limit <size>', 'overlay size limit, e.g. 10G: writes past it fail with ENOSPC (default: limits.overlayLimitMiB)')
    .option('--resume', 'keep the overlay of an earlier publication of this point (default: start from the restore point)')
    .option('--read-only', 'refuse all writes')
    .option('--background', 'detach once the mount is ready')
    .addOption(new Option('--ready-file <file>', 'written with the result once mounted (used by --background)').hideHelp())
    .addOption(
      new Option(
        '--log-file <file>',
        "this process's log, moved into the publication's state directory once published (used by --background)",
      ).hideHelp(),
    )
    .option('--json', 'print one JSON object')
    .action(async (point: string, o: PublishFlags, c: Command) => {
      const ctx = contextFor(c);
      const cfg = await ctx.config();
      if ((o.tcp !== undefined || o.nbdSocket !== undefined) && !o.nbd)
        throw badInput('PUBLISH_NBD_ALONE', `${o.tcp !== undefined ? '--tcp' : '--nbd-socket'} only goes with --nbd`, 'add --nbd');
      if (!o.fuse && !o.nfs && !o.nbd)
        throw badInput('PUBLISH_NO_FRONTEND', 'publish needs somewhere to serve the disks', 'pass --fuse <dir>, --nfs, or both; or --nbd');
      if (o.nbd && (o.fuse || o.nfs))
        throw badInput(
          'PUBLISH_NBD_ALONE',
          '--nbd serves the disks on its own, not with --fuse or --nfs',
          'publish twice (a second publication of the point is its own), or drop --nbd',
        );
      const tcp = o.tcp !== undefined ? { ...parseHostPort(o.tcp, '--tcp'), ...(o.allow.length > 0 ? { allow: o.allow } : {}) } : undefined;
      if (tcp?.allow) {
        try {
          allowListMatcher(tcp.allow);
        } catch (err) {
          throw badInput('BAD_ALLOW_ENTRY', `--allow: ${(err as Error).message}`, 'give an address or CIDR, e.g. --allow 192.0.2.0/24');
        }
      }
      if (o.background) {
        const r = await background(cfg.stateDir);
        ctx.out.result(r, (v) => render(v as PublishResult | NbdPublishResult));
        return;
      }
      // Loaded here, not above: the --background parent only spawns the process that serves.
      const { PUBLISHER_LOG, startPublication } = await import('../../publish/publish.js');
      const pub = await startPublication(
        {
          repo: o.repo ?? cfg.repository,
          point,
          stateDir: cfg.stateDir,
          ...(o.fuse ? { fuseDir: o.fuse } : {}),
          ...((o.fuse || o.nbd) && (o.fuseGroup ?? cfg.fuse.group) !== undefined ? { fuseGroup: o.fuseGroup ?? cfg.fuse.group } : {}),
          ...(o.nbd ? { nbd: { ...(o.nbdSocket !== undefined ? { socket: o.nbdSocket } : {}), ...(tcp ? { tcp } : {}) } } : {}),
          ...(o.overlayDir ? { overlayDir: o.overlayDir } : {}),
          overlayLimitBytes: o.overlayLimit ? parseSize(o.overlayLimit) : cfg.limits.overlayLimitMiB * 1024 * 1024,
          resume: o.resume ?? false,
          readOnly: o.readOnly ?? false,
          cacheMiB: cfg.limits.chunkCacheMiB,
        },
        { ...keyFileOption(o.keyFile, cfg), objectCacheMiB: cfg.limits.objectCacheMiB, onWarning: (m) => ctx.out.warn(m) },
      );
      const result: PublishResult | NbdPublishResult = pub.nbd
        ? { publication: pub.id, disks: Object.entries(pub.nbd).map(([name, nbd]) => ({ name, nbd })) }
        : { publication: pub.id, path: pub.path ?? '', disks: pub.disks };
      let nfs: NfsExport | undefined;
      if (o.nfs && !Array.isArray(result.disks)) {
        const files = result as PublishResult;
        const portmap = parsePort('--portmap-port', o.portmapPort) ?? cfg.nfs.portmapPort;
        try {
          const { startNfsExport } = await import('../../nfs/export.js');
          nfs = await startNfsExport({
            datastore: pub.datastore,
            stateDir: cfg.stateDir,
            port: parsePort('--nfs-port', o.nfsPort) ?? cfg.nfs.port,
            mountPort: parsePort('--mount-port', o.mountPort) ?? cfg.nfs.mountPort,
            portmapPort: portmap === 0 ? null : portmap,
            allow: o.allow.length > 0 ? o.allow : cfg.nfs.allow,
            listen: o.nfsListen.length > 0 ? o.nfsListen : cfg.nfs.listen,
            // The flag can only turn squash off; without it the configuration decides.
            rootSquash: o.rootSquash === false ? false : cfg.nfs.rootSquash,
            ...(cfg.nfs.limits ? { limits: cfg.nfs.limits } : {}),
            readOnly: (o.readOnly ?? false) || cfg.nfs.readOnly,
            log: { warn: (m) => ctx.out.warn(m) },
          });
        } catch (err) {
          await pub.close();
          throw err;
        }
        const urls = Object.fromEntries(Object.keys(pub.disks).map((d) => [d, nfs!.url(pub.name, `${d}.raw`)]));
        files.nfs = {
          host: nfs.host,
          port: nfs.port,
          mountPort: nfs.mountPort,
          export: `${nfs.exportPath}/${pub.name}`,
          url: Object.values(urls)[0] ?? '',
          urls,
        };
      }
      if (o.logFile) result.log = keepLog(o.logFile, path.join(cfg.stateDir, 'publications', pub.id, PUBLISHER_LOG));
      ctx.out.result(result, (v) => render(v as PublishResult | NbdPublishResult));
      if (o.readyFile) {
        const ready = path.resolve(o.readyFile);
        writeFileAtomicSync(path.dirname(ready), path.basename(ready), JSON.stringify(result));
      }
      ctx.out.info('serving until SIGINT or SIGTERM (restorelab unpublish ' + pub.id + ')');
      await new Promise<void>((resolve) => {
        const stop = (): void => resolve();
        process.once('SIGINT', stop);
        process.once('SIGTERM', stop);
      });
      await nfs?.stop();
      await pub.close();
      ctx.out.info(`unpublished ${pub.id} (overlay kept: restorelab publish --resume ${point})`);
    });
}

/**
 * Moves a background publisher's log (still open as its stdout and stderr)
 * into the publication's state directory, where it lives and goes with the
 * publication; the path it ends up at.
 */
function keepLog(from: string, to: string): string {
  try {
    fs.renameSync(from, to);
    return to;
  } catch {
    // Another filesystem or a vanished file: where it is, it is still kept.
    return from;
  }
}

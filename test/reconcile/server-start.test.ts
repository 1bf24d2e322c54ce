/**
 * The server starts whatever its state holds. Made for real beforehand: a
 * publication whose repository was deleted (its overlay holds writes), one
 * whose publisher was killed with SIGKILL while its point still exists, a
 * recovery session whose supervisor and QEMU were killed with SIGKILL, and a
 * lab whose owner (a run) was killed. `cleanup --dry-run` reports all of it
 * and changes nothing; then the real `restorelab server` starts: /healthz
 * answers, the live publication is served again over NFS, the rest is
 * reported stale with its reason, what is safe is removed (session leftovers,
 * the killed run's lab, the dead publisher's mount) and the overlay with
 * writes is kept, until an admin names it through POST /state/cleanup.
 * Boots a VM and makes namespaces: run it under /tmp/rl-heavy.lock.
 */
import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { projectPath } from '../../src/paths.js';
import { exec } from '../../src/host/exec.js';
import { detachMount } from '../../src/fuse/mounts.js';
import { mountEntry } from '../../src/host/mounts.js';
import { backupVm } from '../../src/backup/engine.js';
import { readLabState } from '../../src/lab/lab.js';
import { SessionStore } from '../../src/session/store.js';
import type { ReconcileReport } from '../../src/reconcile/reconcile.js';
import { guestRepository } from '../helpers/repository.js';
import { cli as cliRun } from '../api/fixtures/cli.js';
import { cleanState, writeLabTemplate } from '../api/fixtures/lab-api.js';
import { BOOT_TIMEOUT_MS, residue, running, waitFor } from '../session/fixtures/recovery.js';
import { fingerprint, publicationOfDeletedRepo, scribble } from './fixtures/state.js';
import { subnet } from '../helpers/subnets.js';

const home = mkdtempSync('/tmp/rlsr-'); // short: QEMU's socket paths must stay under 108 bytes
const state = join(home, 'state');
const tag = randomBytes(2).toString('hex');
const children: ChildProcess[] = [];
const ours = (r: { stale: ReconcileReport['stale'] }): ReconcileReport['stale'] => r.stale.filter((s) => s.kind !== 'netns');

t.teardown(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await cleanState(state);
  for (const m of [join(home, 'ma'), join(home, 'mb')]) if (mountEntry(m)) await detachMount(m);
  rmSync(home, { recursive: true, force: true });
});

const live = await guestRepository(join(home, 'a'), 'web');
const env = { RESTORELAB_STATE_DIR: state, RESTORELAB_ACCEL: 'tcg', RESTORELAB_DRIVER: 'qemu', RESTORELAB_REPO: live.repo };
const cli = async (args: string[]): Promise<Record<string, unknown>> => {
  const r = await cliRun([...args, '--json'], env);
  if (r.code !== 0) throw new Error(`restorelab ${args.join(' ')} exited ${r.code}: ${r.stdout} ${r.stderr}`);
  return r.json;
};

// 1. A publication of a repository that is then deleted (its overlay holds writes).
const gone = await publicationOfDeletedRepo(join(home, 'b'), state, join(home, 'mb'));

// 2. A publisher killed with SIGKILL; its point stays. The session below takes a newer point of the same VM.
const mnt = join(home, 'ma');
const killedPub = (await cli(['publish', '--repo', live.repo, live.point.id, '--fuse', mnt, '--background'])) as {
  publication: string;
  disks: Record<string, string>;
};
await scribble(killedPub.disks.root as string);
const publisherPid = JSON.parse(readFileSync(join(state, 'publications', killedPub.publication, 'publication.json'), 'utf8')).pid as number;
process.kill(publisherPid, 'SIGKILL');
await waitFor('the publisher to die', () => !running(publisherPid));
await backupVm({ repo: live.repository, vm: live.vm, disks: { root: live.image }, source: live.image });

// 3. A session in a lab; its supervisor, then its QEMU, are killed with SIGKILL.
const labsDir = join(home, 'labs');
const sessionLab = `rs${tag}`;
writeLabTemplate(labsDir, sessionLab, subnet('reconcile/server-start:session'));
const recovered = await cliRun(['recover', 'web', '--lab', join(labsDir, `${sessionLab}.json`), '--json'], env);
if (recovered.code !== 0) throw new Error(`recover failed: ${recovered.stdout} ${recovered.stderr}`);
const sessionId = String(recovered.json.session);
const session = new SessionStore(state).get(sessionId);
const sessionNetns = readLabState(state, sessionLab)?.netns as string;
for (const pid of [session.supervisorPid, session.qemuPid] as number[]) {
  process.kill(pid, 'SIGKILL');
  await waitFor(`pid ${pid} to die`, () => !running(pid));
}

// 4. A lab brought up by a run that is killed with SIGKILL.
const runLab = `rr${tag}`;
const run = spawn(
  process.execPath,
  [
    '--input-type=module',
    '-e',
    `
  const { labUp, parseLab } = await import(${JSON.stringify(projectPath('dist', 'src', 'lab', 'lab.js'))});
  await labUp(parseLab({ name: ${JSON.stringify(runLab)}, networks: [{ name: 'prod', subnet: '192.168.77.0/24', gateway: '192.168.77.1', masquerade: ${JSON.stringify(subnet('reconcile/server-start:run'))} }] }, 'run'),
    { stateDir: ${JSON.stringify(state)}, owner: { pid: process.pid, what: 'SureBackup run' } });
  process.stdout.write('up\\n');
  setInterval(() => undefined, 1000);
`,
  ],
  { stdio: ['ignore', 'pipe', 'inherit'] },
);
children.push(run);
let runOut = '';
run.stdout?.on('data', (c: Buffer) => {
  runOut += c.toString();
});
await waitFor('the run to bring its lab up', () => runOut.includes('up'), 60_000);
const runNetns = readLabState(state, runLab)?.netns as string;
run.kill('SIGKILL');
await waitFor('the run to die', () => run.signalCode !== null);

const netnsList = async (): Promise<string> => (await exec('ip', ['netns', 'list'])).stdout;

t.test('cleanup --dry-run reports every stale item and changes nothing', async (t) => {
  const before = fingerprint(state);
  const mountsBefore = readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter((l) => l.includes(home)).length;
  const r = (await cli(['cleanup', '--dry-run'])) as unknown as ReconcileReport;
  const byId = new Map(ours(r).map((s) => [s.id, s]));
  t.match(byId.get(`publication:${gone.id}`), { safe: false, reason: /repository .* is gone/ });
  t.match(byId.get(`session:${sessionId}`), {
    safe: true,
    reason: /was running, its supervisor \(pid \d+\) is gone; QEMU \(pid \d+\) is gone/,
  });
  t.match(byId.get(`lab:${runLab}`), { safe: true, reason: /SureBackup run \(pid \d+\) is gone .* namespace .* is empty/ });
  t.match(byId.get(`mount:${mnt}`), { safe: true, reason: /serving process is gone/ });
  t.same(
    r.resumable.filter((p) => p.id === killedPub.publication),
    [{ id: killedPub.publication, point: live.point.id, publisherDied: true }],
  );
  t.equal(fingerprint(state), before, 'the state directory is unchanged');
  t.equal(
    readFileSync('/proc/self/mountinfo', 'utf8')
      .split('\n')
      .filter((l) => l.includes(home)).length,
    mountsBefore,
    'no mount was removed',
  );
  t.match(await netnsList(), runNetns, "the killed run's namespace is still there");
});

t.test(
  'the server starts, resumes the live publication, reports and removes the stale',
  { timeout: BOOT_TIMEOUT_MS + 300_000 },
  async (t) => {
    const server = spawn(
      process.execPath,
      [
        projectPath('bin', 'restorelab.js'),
        'server',
        '--json',
        '--port',
        '0',
        '--nfs-port',
        '0',
        '--mount-port',
        '0',
        '--portmap-port',
        '0',
        '--no-schedule',
      ],
      {
        env: { ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('RESTORELAB_'))), ...env },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    children.push(server);
    let out = '';
    let err = '';
    server.stdout?.on('data', (c: Buffer) => {
      out += c.toString();
    });
    server.stderr?.on('data', (c: Buffer) => {
      err += c.toString();
    });
    t.teardown(async () => {
      if (server.exitCode === null) server.kill('SIGTERM');
      await waitFor('the server to stop', () => server.exitCode !== null || server.signalCode !== null, 60_000).catch(() =>
        server.kill('SIGKILL'),
      );
    });
    await waitFor('the server to serve', () => out.includes('\n') || server.exitCode !== null, 240_000);
    t.equal(server.exitCode, null, `the server runs (stderr: ${err})`);
    const started = JSON.parse(out.split('\n')[0] as string) as {
      api: { url: string };
      nfs: { publications: string[]; skipped: Array<{ id: string; reason: string }> };
      reconcile: { resumable: string[]; stale: Array<{ id: string; reason: string; action: string }> };
    };
    const health = await fetch(`${started.api.url}/healthz`);
    t.equal(health.status, 200, '/healthz answers');
    t.ok(started.nfs.publications.includes(killedPub.publication), 'the publication whose publisher was killed is served again');
    t.match(
      started.nfs.skipped,
      [{ id: gone.id, reason: /REPO_NOT_FOUND|no restorelab repository/ }],
      'the one whose repository is gone is skipped with its reason',
    );
    const action = new Map(started.reconcile.stale.map((s) => [s.id, s]));
    t.match(action.get(`publication:${gone.id}`), { action: 'kept', reason: /repository .* is gone/ });
    t.match(action.get(`session:${sessionId}`), { action: 'removed', reason: /supervisor/ });
    t.match(action.get(`lab:${runLab}`), { action: 'removed', reason: /SureBackup run/ });
    t.match(action.get(`mount:${mnt}`), { action: 'removed' });
    t.match(err, new RegExp(`stale: publication:${gone.id}: its repository`), 'the kept stale item is logged');

    t.equal(mountEntry(mnt), undefined, "the dead publisher's mount is gone");
    const ns = await netnsList();
    t.notMatch(ns, runNetns, "the killed run's namespace is gone");
    t.notMatch(ns, sessionNetns, 'the lab the session brought up is gone');
    t.equal(readLabState(state, runLab), undefined);
    t.equal(readLabState(state, sessionLab), undefined);
    const s = new SessionStore(state).get(sessionId);
    t.same(s.resources, { taps: [] }, 'the session holds nothing any more');
    t.same(await residue({ domain: s.domain, mount: join(state, 'sessions', sessionId) }), [], 'no QEMU or mount of the session remains');
    t.ok(existsSync(join(state, 'overlays', gone.id, 'root.data')), 'the overlay with writes is kept');

    // cleanup beside the running server: only what it keeps is left.
    const again = (await cli(['cleanup'])) as unknown as ReconcileReport;
    t.same(
      ours(again).map((x) => [x.id, x.outcome?.action]),
      [[`publication:${gone.id}`, 'kept']],
    );

    // The API: a viewer sees it, only an admin cleans it, naming it with discardWrites.
    const admin = String((await cli(['token', 'create', 'reconcile-admin', '--role', 'admin'])).token);
    const viewer = String((await cli(['token', 'create', 'reconcile-viewer', '--role', 'viewer'])).token);
    const api = (path: string, token: string, body?: unknown): Promise<Response> =>
      fetch(`${started.api.url}/api/v1${path}`, {
        method: body ? 'POST' : 'GET',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
        ...(body ? { body: JSON.stringify(body) } : {}),
      });
    const listed = (await (await api('/state/stale', viewer)).json()) as ReconcileReport;
    t.same(
      ours(listed).map((x) => [x.id, x.safe]),
      [[`publication:${gone.id}`, false]],
      'GET /state/stale lists it for a viewer',
    );
    t.equal((await api('/state/cleanup', viewer, { items: [`publication:${gone.id}`] })).status, 403, 'a viewer may not clean');
    const bad = await api('/state/cleanup', admin, { items: ['nonsense'] });
    t.equal(bad.status, 400, 'an item id that is no id is refused by the schema');
    const cleaned = (await (
      await api('/state/cleanup', admin, { items: [`publication:${gone.id}`], discardWrites: true })
    ).json()) as ReconcileReport;
    t.equal(cleaned.stale.find((x) => x.id === `publication:${gone.id}`)?.outcome?.action, 'removed');
    t.notOk(existsSync(join(state, 'overlays', gone.id)), 'named by an admin with discardWrites, the overlay is discarded');
  },
);

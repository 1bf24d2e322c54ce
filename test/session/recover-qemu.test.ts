/**
 * Instant recovery with the embedded qemu driver, for real: a repository
 * holding a backup of the `web` guest, published over FUSE, booted (TCG)
 * inside a virtual lab. Two boots: one through the CLI as a script runs it
 * (recover --json returns while the VM runs; HTTP through the masquerade
 * address; sessions; stop leaves nothing and the repository unchanged), one
 * through the library whose QEMU is then killed (session failed, lab and
 * publication cleaned by the supervisor), and one whose supervisor is
 * killed (sessions marks it failed; stop cleans up from the record).
 */
import t from 'tap';
import { readLabState } from '../../src/lab/lab.js';
import { recover } from '../../src/session/recover.js';
import { SessionStore } from '../../src/session/store.js';
import { listPublications } from '../../src/publish/publish.js';
import type { RecoverResult } from '../../src/session/session.js';
import {
  BOOT_TIMEOUT_MS,
  WEB_EXPECT,
  chunkFingerprint,
  cli,
  httpGet,
  lastJsonLine,
  residue,
  sessionResidue,
  running,
  waitFor,
  webRepository,
  recoveryWorkspace,
} from './fixtures/recovery.js';
import { address, subnet } from '../helpers/subnets.js';

const { dir, stateDir, store, tag, labFile } = recoveryWorkspace(t, 'rl-recover-qemu-');

const fixture = webRepository(dir);

t.test('recover --json into a lab: heartbeat, HTTP via the masquerade address, sessions, stop', async (t) => {
  const { repo } = await fixture;
  const before = chunkFingerprint(repo);
  const lab = `rq${tag}`;
  const r = await cli(
    ['recover', '--repo', repo, 'web', '--lab', labFile(lab, subnet('session/recover-qemu:cli')), '--driver', 'qemu', '--json'],
    stateDir,
  );
  t.equal(r.code, 0, `recover exits 0 ${r.stderr}`);
  const out = lastJsonLine<RecoverResult>(r.stdout);
  t.same(Object.keys(out).sort(), ['addresses', 'heartbeatSeconds', 'session', 'state', 'vm'], 'the documented line');
  t.equal(out.state, 'running');
  t.equal(out.vm, 'web');
  t.ok(out.heartbeatSeconds > 0 && out.heartbeatSeconds < BOOT_TIMEOUT_MS / 1000, `command to heartbeat: ${out.heartbeatSeconds} s`);
  t.same(out.addresses, { nic0: address('session/recover-qemu:cli') }, 'the masquerade address of 192.168.77.10');

  const page = await httpGet(`http://${out.addresses.nic0}/`);
  t.equal(page.status, 200, 'the VM kept running after recover returned, and answers HTTP through the lab');
  t.match(page.body, WEB_EXPECT);

  const listed = await cli(['sessions', '--json'], stateDir, 30_000);
  t.equal(listed.code, 0);
  const sessions = lastJsonLine<{ sessions: { session: string; state: string; ageSeconds: number }[] }>(listed.stdout).sessions;
  const mine = sessions.find((s) => s.session === out.session);
  t.equal(mine?.state, 'running', 'listed as running');
  t.ok((mine?.ageSeconds ?? -1) >= out.heartbeatSeconds - 1, `with its age (${mine?.ageSeconds} s)`);
  t.ok(
    (await store.catalogRows()).some((row) => row.id === out.session),
    'and in the catalog',
  );

  const s = store.get(out.session);
  const netns = readLabState(stateDir, lab)?.netns;
  const stop = await cli(['stop', out.session, '--json'], stateDir, 120_000);
  t.equal(stop.code, 0, stop.stderr);
  t.equal(lastJsonLine<{ state: string }>(stop.stdout).state, 'stopped');
  const left = await sessionResidue(store, s, netns);
  t.same(left, [], 'no process, namespace, tap or mount remains');
  t.equal(readLabState(stateDir, lab), undefined, 'the lab recover brought up is down');
  t.equal(chunkFingerprint(repo), before, 'the repository chunks are unchanged');
  const again = await cli(['stop', out.session, '--json'], stateDir, 60_000);
  t.equal(again.code, 0, `stop is idempotent ${again.stderr}`);
  t.equal(lastJsonLine<{ state: string }>(again.stdout).state, 'stopped');
});

t.test('QEMU killed under a running session: failed, lab and publication cleaned', async (t) => {
  const { repo, point } = await fixture;
  const lab = `rk${tag}`;
  const s = await recover({
    repo,
    vm: 'web',
    point: point.id,
    lab: labFile(lab, subnet('session/recover-qemu:lib')),
    driver: 'qemu',
    accel: 'tcg',
    stateDir,
  });
  t.equal(s.state, 'running');
  t.equal(s.point, point.id, 'the point asked for');
  const netns = readLabState(stateDir, lab)?.netns;
  t.ok(netns, 'lab up');
  t.ok(s.qemuPid, 'QEMU pid recorded');
  process.kill(s.qemuPid as number, 'SIGKILL');
  await waitFor('the session to be marked failed', () => store.get(s.id).state === 'failed', 60_000);
  const after = store.get(s.id);
  t.match(after.error?.message, /VM stopped/, `reason recorded: ${after.error?.message}`);
  await waitFor('the supervisor to exit', async () => (await sessionResidue(store, s)).length === 0, 30_000);
  t.same(
    await residue({ domain: s.domain, ...(netns ? { netns } : {}), mount: store.workDir(s.id) }),
    [],
    'lab namespace and publication mount are gone',
  );
  t.equal(readLabState(stateDir, lab), undefined, 'lab state removed');
  t.same(after.resources, { taps: [] }, 'nothing left in the record');
});

t.test('supervisor killed under a running session: failed, and stop removes what it left', async (t) => {
  const { repo } = await fixture;
  const lab = `rs${tag}`;
  const s = await recover({
    repo,
    vm: 'web',
    lab: labFile(lab, subnet('session/recover-qemu:stop')),
    driver: 'qemu',
    accel: 'tcg',
    stateDir,
  });
  const netns = readLabState(stateDir, lab)?.netns;
  const pub = s.resources.publication?.id;
  t.ok(pub && listPublications(stateDir).some((p) => p.id === pub), 'published');
  process.kill(s.supervisorPid as number, 'SIGKILL');
  await waitFor('the supervisor to die', () => !running(s.supervisorPid as number), 10_000);
  const listed = await cli(['sessions', '--json'], stateDir, 60_000);
  const mine = lastJsonLine<{ sessions: { session: string; state: string; error?: { code: string } }[] }>(listed.stdout).sessions.find(
    (x) => x.session === s.id,
  );
  t.equal(mine?.state, 'failed', 'a running session without its supervisor is failed');
  t.equal(mine?.error?.code, 'SUPERVISOR_GONE');
  const stop = await cli(['stop', s.id, '--json'], stateDir, 120_000);
  t.equal(stop.code, 0, stop.stderr);
  t.same(
    await residue({ domain: s.domain, ...(netns ? { netns } : {}), mount: store.workDir(s.id) }),
    [],
    'no QEMU, namespace or mount remains',
  );
  t.notOk(
    listPublications(stateDir).some((p) => p.id === pub),
    'the publication and its overlay are gone',
  );
  t.same(store.get(s.id).resources, { taps: [] }, 'nothing left in the record');
});

t.test('recover --json with bad input: a clear error and nothing left', async (t) => {
  const { repo } = await fixture;
  const before = new SessionStore(stateDir).list().length;
  const cases: [string[], number, string][] = [
    [['nosuch'], 5, 'VM_NOT_FOUND'],
    [['web@20990101T000000Z-000000'], 5, 'POINT_NOT_FOUND'],
    [['web', '--network', `nobr${tag}`], 2, 'BRIDGE_NOT_FOUND'],
    [['web', '--lab', labFile(`ro${tag}`, '127.0.0.0/24')], 2, 'LAB_MASQUERADE_OVERLAP'],
    [['web', '--driver', 'xen'], 2, 'UNKNOWN_DRIVER'],
  ];
  for (const [args, exit, code] of cases) {
    const r = await cli(['recover', '--repo', repo, ...args, '--json'], stateDir, 60_000);
    t.equal(r.code, exit, `${args.join(' ')}: exit ${exit}`);
    const out = lastJsonLine<{ ok: boolean; error: { code: string; hint?: string } }>(r.stdout);
    t.equal(out.error.code, code, `${args.join(' ')}: ${code}`);
    t.ok(out.error.hint, 'with a hint');
  }
  t.equal(new SessionStore(stateDir).list().length, before, 'no session was recorded');
  t.equal(readLabState(stateDir, `ro${tag}`), undefined, 'no lab was brought up');
});

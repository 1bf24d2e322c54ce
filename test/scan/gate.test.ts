/**
 * The recovery gate, for real (qemu under TCG, FUSE, a lab namespace, YARA):
 * the web guest's second point carries a file the test rule matches.
 * `recover --scan` refuses it (exit 3, POINT_INFECTED, nothing started);
 * with --allow-infected it boots, in a copy of the lab with no uplink at all:
 * no host veth, no host route to the masquerade subnet, no `uplink` link in
 * the namespace, no address the host can reach, while the guest still
 * answers inside the lab. A SureBackup job with a `scan` gate refuses to
 * boot the infected point, and with allowInfected verifies it in a lab with
 * no uplink, saying so in the VM's `scan` test.
 * Through the server (the API in this process, the CLI with --server in a
 * child): POST /sessions with `scan` refuses the infected point (the
 * operation fails POINT_INFECTED, 422; no session, lab, publication, mount or
 * QEMU left), and `recover --server --scan FILE --allow-infected` sends the
 * rule file's text and gets the point running in a quarantine lab with no
 * uplink, as GET /sessions/<id> then says.
 * Run it under `flock /tmp/rl-heavy.lock` (docs: test/README, common rules).
 */
import t from 'tap';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { exec } from '../../src/host/exec.js';
import { labDown, listLabs, readLabState } from '../../src/lab/lab.js';
import { stopSession } from '../../src/session/recover.js';
import { SessionStore } from '../../src/session/store.js';
import type { RecoverResult } from '../../src/session/session.js';
import { cli, lastJsonLine } from '../session/fixtures/recovery.js';
import { PLANTED_PATH, TEST_RULES, plantedGuest } from '../helpers/planted-guest.js';
import { subnet } from '../helpers/subnets.js';
import request from 'supertest';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { readFileSync } from 'node:fs';
import { listPublications } from '../../src/publish/publish.js';
import type { RecoverySession } from '../../src/session/session.js';
import { testApi } from '../helpers/api.js';
import { ENV, cleanState, settled, writeLabTemplate } from '../api/fixtures/lab-api.js';
import { cli as remoteCli } from '../api/fixtures/cli.js';

const dir = mkdtempSync(join(tmpdir(), 'rl-scan-gate-'));
const stateDir = join(dir, 'state');
const store = new SessionStore(stateDir);
const tag = randomBytes(2).toString('hex');
const rules = join(dir, 'test.yar');
writeFileSync(rules, TEST_RULES);

t.teardown(async () => {
  for (const s of store.list()) await stopSession(stateDir, s.id).catch(() => undefined);
  for (const l of listLabs(stateDir)) await labDown(l.name, { stateDir });
  rmSync(dir, { recursive: true, force: true });
});

function labFile(name: string, masquerade: string): string {
  const p = join(dir, `${name}.json`);
  writeFileSync(p, JSON.stringify({ name, networks: [{ name: 'prod', subnet: '192.168.77.0/24', gateway: '192.168.77.1', masquerade }] }));
  return p;
}

async function hostLinks(): Promise<string[]> {
  return (JSON.parse((await exec('ip', ['-j', 'link', 'show'])).stdout || '[]') as { ifname: string }[]).map((l) => l.ifname);
}

const guest = await plantedGuest(dir);
const infected = guest.points[1]!.id;

t.test('recover --scan refuses the infected point; nothing is started', async (t) => {
  const lab = `sg${tag}`;
  const r = await cli(
    [
      'recover',
      '--repo',
      guest.repoDir,
      `web@${infected}`,
      '--lab',
      labFile(lab, subnet('scan:scan/gate:refused')),
      '--driver',
      'qemu',
      '--scan',
      rules,
      '--json',
    ],
    stateDir,
  );
  t.equal(r.code, 3, r.stderr);
  const out = lastJsonLine<{ ok: boolean; error: { code: string; message: string } }>(r.stdout);
  t.equal(out.error.code, 'POINT_INFECTED');
  t.match(out.error.message, new RegExp(`RestorelabTestDropper in root p1 ${PLANTED_PATH}`));
  t.same(store.list(), [], 'no session was created');
  t.same(listLabs(stateDir), [], 'no lab was brought up');
});

t.test('--allow-infected boots it in a lab with no uplink at all', async (t) => {
  const lab = `sg${tag}`;
  const r = await cli(
    [
      'recover',
      '--repo',
      guest.repoDir,
      `web@${infected}`,
      '--lab',
      labFile(lab, subnet('scan:scan/gate:quarantine')),
      '--driver',
      'qemu',
      '--scan',
      rules,
      '--allow-infected',
      '--json',
    ],
    stateDir,
  );
  t.equal(r.code, 0, r.stderr);
  const out = lastJsonLine<RecoverResult>(r.stdout);
  t.equal(out.state, 'running');
  t.match(out.scan, { verdict: 'infected', matches: [{ rule: 'RestorelabTestDropper', path: PLANTED_PATH }] });
  t.same(out.quarantine, { lab: `${lab}-q${out.session}`, uplink: false }, 'the JSON says where and that there is no uplink');
  t.same(out.addresses, {}, 'no address the host could reach it on');

  const st = readLabState(stateDir, `${lab}-q${out.session}`);
  t.ok(st?.ready, 'the quarantine lab is up');
  t.equal(st?.uplink, false);
  t.same(st?.routes, []);
  // Only this lab's own names: other test files bring their labs up beside this one.
  t.notOk((await hostLinks()).includes(st!.hostVeth), `no host link ${st?.hostVeth}: no uplink veth`);
  const routes = await exec('ip', ['route', 'show', 'table', 'all']);
  t.notMatch(routes.stdout, subnet('scan:scan/gate:quarantine').replace(/\.0\/24$/, '.'), 'no host route to the masquerade subnet');
  const inLab = JSON.parse((await exec('ip', ['-n', st!.netns, '-j', 'link', 'show'])).stdout) as { ifname: string }[];
  t.notOk(
    inLab.some((l) => l.ifname === 'uplink' || l.ifname.startsWith('veth')),
    `links in the lab: ${inLab.map((l) => l.ifname).join(', ')}`,
  );
  t.ok(
    inLab.some((l) => l.ifname.startsWith('tap')),
    "the VM's tap is there",
  );
  const ping = await exec('ip', ['netns', 'exec', st!.netns, 'ping', '-c', '1', '-W', '2', '192.168.77.10'], { timeoutMs: 10_000 });
  t.equal(ping.code, 0, 'the guest answers inside the lab');
  const fromHost = await exec('ping', ['-c', '1', '-W', '1', '192.168.77.10'], { timeoutMs: 5000 });
  t.not(fromHost.code, 0, 'and not from the host');

  const stop = await cli(['stop', out.session, '--json'], stateDir, 120_000);
  t.equal(stop.code, 0, stop.stderr);
  t.same(listLabs(stateDir), [], 'stop took the quarantine lab down');
});

t.test('a SureBackup job with a scan gate: refused without allowInfected, verified with no uplink with it', async (t) => {
  const lab = `sj${tag}`;
  const job = (allow: boolean): string => {
    const p = join(dir, `job-${allow}.json`);
    writeFileSync(
      p,
      JSON.stringify({
        name: `scan-gate-${allow}`,
        lab: labFile(lab, subnet('scan:scan/gate:surebackup')),
        point: guest.points[1]!.time,
        concurrency: 1,
        verify: { vms: ['web'], tests: [{ kind: 'heartbeat' }, { kind: 'ping' }] },
        scan: { rules, allowInfected: allow },
      }),
    );
    return p;
  };
  const refused = await cli(['surebackup', 'run', job(false), '--repo', guest.repoDir, '--json'], stateDir);
  const r1 = lastJsonLine<{
    result: string;
    vms: { name: string; point: string; result: string; tests: { name: string; result: string; detail: string }[] }[];
  }>(refused.stdout);
  t.equal(r1.result, 'failed', refused.stderr);
  t.match(r1.vms, [
    { name: 'web', point: infected, result: 'failed', tests: [{ name: 'scan', result: 'failed', detail: /INFECTED.*not booted/ }] },
  ]);
  t.equal(r1.vms[0]!.tests.length, 1, 'nothing else ran: the VM was never booted');

  const allowed = await cli(['surebackup', 'run', job(true), '--repo', guest.repoDir, '--json'], stateDir);
  const r2 = lastJsonLine<typeof r1>(allowed.stdout);
  t.match(
    r2.vms,
    [
      {
        name: 'web',
        point: infected,
        tests: [
          { name: 'scan', result: 'warning', detail: /INFECTED.*NO uplink/ },
          { name: 'heartbeat', result: 'passed' },
          { name: 'ping', result: 'passed' },
        ],
      },
    ],
    allowed.stderr,
  );
  t.equal(r2.result, 'warning', 'an infected point verified in quarantine is a warning, never a success');
  t.same(listLabs(stateDir), [], 'the quarantine lab is gone after the run');
});

t.test('through the server: POST /sessions refuses the infected point; the remote CLI recovers it in quarantine', async (t) => {
  const home = join(dir, 'srv');
  const labsDir = join(home, 'labs');
  const lab = `sa${tag}`;
  writeLabTemplate(labsDir, lab, subnet('scan:scan/gate:api'));
  // Read by the labs routes at request time (src/api/routes/labs.ts).
  process.env.RESTORELAB_LABS_DIR = labsDir;
  const api = await testApi({ home, env: { RESTORELAB_REPO: guest.repoDir, ...ENV } });
  const srvState = api.config.stateDir;
  t.teardown(async () => {
    await api.close().catch(() => undefined);
    await cleanState(srvState);
  });

  const started = await request(api.app)
    .post('/api/v1/sessions')
    .set('authorization', api.auth.operator)
    .send({ vm: 'web', point: infected, lab, scan: { rules: TEST_RULES } })
    .expect(202);
  const op = await settled(api, started.body.id);
  t.equal(op.state, 'failed');
  t.match(op.error, {
    code: 'POINT_INFECTED',
    status: 422,
    message: new RegExp(`RestorelabTestDropper in root p1 ${PLANTED_PATH}.*not recovered`),
    hint: /allowInfected/,
  });
  t.same(new SessionStore(srvState).list(), [], 'no session was recorded');
  t.same(listLabs(srvState), [], 'no lab was brought up');
  t.same(listPublications(srvState), [], 'no publication is left');
  t.notOk(readFileSync('/proc/mounts', 'utf8').includes(srvState), 'no mount is left');
  const ps = await exec('ps', ['-eo', 'args']);
  t.notOk(
    ps.stdout.split('\n').some((l) => l.includes('qemu-system') && l.includes(srvState)),
    'no QEMU was started',
  );
  const points = await request(api.app).get('/api/v1/points').set('authorization', api.auth.viewer).expect(200);
  t.match(
    points.body.points.map((p: { id: string; scan: string }) => [p.id, p.scan]),
    [
      [guest.points[0]!.id, 'unscanned'],
      [infected, 'infected'],
      [guest.points[2]!.id, 'suspect'],
    ],
    "the gate's verdict is in the server's catalog",
  );

  const server = createServer(api.app);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(
    () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  );
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const client = join(dir, 'client');
  const operator = api.auth.operator.replace(/^Bearer /, '');
  const remote = (args: string[]): ReturnType<typeof remoteCli> =>
    remoteCli(['--server', url, '--token', operator, ...args], { RESTORELAB_HOME: client });

  const refused = await remote(['recover', `web@${infected}`, '--lab', lab, '--scan', rules, '--json']);
  t.equal(refused.code, 3, `exit 3 as embedded: ${refused.stderr}`);
  t.match(refused.json, { ok: false, error: { code: 'POINT_INFECTED' } });
  const hostile = join(dir, 'include.yar');
  writeFileSync(hostile, 'include "/etc/shadow"\n' + TEST_RULES);
  const policy = await remote(['recover', `web@${infected}`, '--lab', lab, '--scan', hostile, '--json']);
  t.equal(policy.code, 2, policy.stderr);
  t.match(policy.json, { ok: false, error: { code: 'YARA_RULES_INVALID', message: /include/ } }, "the API's rule policy holds");
  const noRules = await remote(['recover', 'web', '--lab', lab, '--scan', join(dir, 'nothing.yar')]);
  t.equal(noRules.code, 5, 'a rule file that is not there');
  t.match(noRules.stderr, /YARA rule file .*nothing\.yar/);

  const rec = await remote(['recover', `web@${infected}`, '--lab', lab, '--scan', rules, '--allow-infected', '--json']);
  t.equal(rec.code, 0, rec.stderr);
  const out = rec.json as unknown as RecoverResult;
  t.equal(out.state, 'running');
  t.match(out.scan, { verdict: 'infected', matches: [{ rule: 'RestorelabTestDropper', path: PLANTED_PATH }] });
  const qlab = `${lab}-q${out.session}`;
  t.same(out.quarantine, { lab: qlab, uplink: false }, 'quarantined, with no uplink');
  t.same(out.addresses, {}, 'no address the host could reach it on');
  const one = await request(api.app).get(`/api/v1/sessions/${out.session}`).set('authorization', api.auth.viewer).expect(200);
  const s = one.body as RecoverySession;
  t.match(s, { state: 'running', lab: qlab, quarantine: true, scan: { verdict: 'infected' } }, 'GET /sessions/<id> says so');
  const st = readLabState(srvState, qlab);
  t.ok(st?.ready, 'the quarantine lab is up');
  t.equal(st?.uplink, false);
  t.notOk((await hostLinks()).includes(st!.hostVeth), 'no uplink veth on the host');
  const ping = await exec('ip', ['netns', 'exec', st!.netns, 'ping', '-c', '1', '-W', '2', '192.168.77.10'], { timeoutMs: 10_000 });
  t.equal(ping.code, 0, 'the guest answers inside the lab');

  const stop = await remote(['stop', out.session, '--json']);
  t.equal(stop.code, 0, stop.stderr);
  t.same(listLabs(srvState), [], 'stop took the quarantine lab down');
});

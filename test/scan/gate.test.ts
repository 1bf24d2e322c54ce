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

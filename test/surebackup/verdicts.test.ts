// Verdicts a user can trust (issue #14): real guests under TCG through
// `surebackup run`, as a script calls it.
// - web: healthy, passes.
// - damaged: its dynamic loader is corrupt, so its guest agent cannot start,
//   yet the kernel answers ICMP and the static httpd serves its page. Its VM
//   definition expects an agent: the heartbeat fails and says the agent never
//   answered. (Before, this passed "via IP on the lab bridge".)
// - no-agent: defined with "agent": false, so ICMP is its heartbeat: passes.
import t from 'tap';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { waitForAgent } from '../../src/hypervisor/qga.js';
import { cli, shortDir, guestRepository, labFile, leftovers } from './fixtures/guest-lab.js';
import { GUESTS, GuestNetwork, waitFor } from '../helpers/guests.js';
import { subnet } from '../helpers/subnets.js';

t.test('the damaged guest really is half alive: HTTP and ICMP answer, the agent never does', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'rl-damaged-'));
  const net = await GuestNetwork.create(dir);
  t.teardown(async () => {
    await net.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const g = GUESTS.damaged!;
  const { dom } = await net.boot('damaged');
  const page = await waitFor('HTTP from damaged', 120_000, async () => {
    const r = await net.http(`http://${g.ip}/`);
    return r.status === 200 ? r : undefined;
  });
  t.equal(page.body?.trim(), g.services[0]?.expect, 'the static httpd serves');
  // The agent's own wrapper reports each failed start on the console.
  await waitFor('the agent failure on the console', 60_000, async () =>
    /restorelab-guest: guest agent exited \(status \d+\)/.test(readFileSync(dom.consoleLog, 'utf8')) ? true : undefined,
  );
  await t.rejects(waitForAgent(dom.agentSocket, 15_000), /gave no heartbeat/, 'the agent does not answer');
});

t.test(
  'surebackup run over web, damaged and no-agent on an encrypted repository (key from RESTORELAB_KEY_FILE): success, failed on the heartbeat, success',
  async (t) => {
    const dir = shortDir(t);
    const stateDir = join(dir, 'state');
    // On an encrypted repository, its key found through RESTORELAB_KEY_FILE alone (no --key-file).
    const keyFile = join(dir, 'repo.key');
    const { repo } = await guestRepository(dir, ['web', 'damaged', 'no-agent'], { keyFile });
    const labName = `sbv${process.pid % 10000}`;
    const jobFile = join(dir, 'verdicts.json');
    writeFileSync(
      jobFile,
      JSON.stringify({
        name: 'verdicts',
        lab: labFile(dir, labName, subnet('surebackup/verdicts')),
        concurrency: 3,
        verify: {
          vms: ['web', 'damaged', 'no-agent'],
          role: 'web',
          maxBootSeconds: 150,
          appInitSeconds: 30,
          overrides: { damaged: { maxBootSeconds: 60 } },
        },
      }),
    );
    const r = await cli(['surebackup', 'run', jobFile, '--repo', repo, '--json'], stateDir, 600_000, { RESTORELAB_KEY_FILE: keyFile });
    t.equal(r.code, 3, `exit 3 when verification failed; stderr: ${r.stderr.slice(-800)}`);
    const rep = JSON.parse(r.stdout) as {
      result: string;
      report: string;
      vms: { name: string; result: string; tests: { name: string; kind: string; result: string; seconds: number; detail: string }[] }[];
    };
    const vm = (n: string) => rep.vms.find((v) => v.name === n)!;
    const test = (n: string, name: string) => vm(n).tests.find((x) => x.name === name)!;
    const show = (n: string): string =>
      vm(n)
        .tests.map((x) => `${x.name}=${x.result} ${x.detail}`)
        .join(' | ');
    t.equal(rep.result, 'failed');

    t.equal(vm('web').result, 'success', show('web'));
    t.match(test('web', 'heartbeat').detail, /via guest agent: .*; the guest agent kept answering through the test window/);
    t.equal(test('web', 'http:80/').result, 'passed');

    const d = vm('damaged');
    t.equal(d.result, 'failed', show('damaged'));
    const hb = test('damaged', 'heartbeat');
    t.equal(hb.result, 'failed', hb.detail);
    t.match(hb.detail, /the guest agent never answered within the maximum boot time \(60 s\)/);
    t.match(
      hb.detail,
      /its address answered ICMP stably after [\d.]+ s, so the guest runs but is not healthy/,
      'the address answered, and did not save it',
    );
    t.ok(hb.seconds >= 59 && hb.seconds < 90, `failed at its boot timeout (${hb.seconds} s)`);
    t.same(
      d.tests.filter((x) => x.result === 'skipped').map((x) => x.kind),
      ['ping', 'tcp', 'http'],
    );
    t.equal(test('damaged', 'integrity').result, 'passed', 'its backup is intact: the damage is inside the guest');
    t.match(readFileSync(rep.report, 'utf8'), /guest agent never answered/, 'the report says why');

    t.equal(vm('no-agent').result, 'success', show('no-agent'));
    t.match(
      test('no-agent', 'heartbeat').detail,
      /via ICMP on the lab bridge \(VM has no guest agent\).*kept answering through the test window/,
    );
    t.equal(test('no-agent', 'http:80/').result, 'passed');

    t.same(await leftovers(stateDir, undefined, labName), []);
  },
);

/**
 * `restorelab recover` through the server, for real: the API over a
 * repository of the `web` guest served on 127.0.0.1 (an ephemeral port), and
 * the CLI in a child process with --server/--token recovering `web` in a lab
 * of this file's own (its own masquerade subnet, QEMU under TCG), following
 * the operation's progress over SSE, then listing and stopping the session;
 * then a SureBackup job of the server run from the CLI, and its history.
 */
import t from 'tap';
import { cli, type Cli } from './fixtures/cli.js';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { labApi } from './fixtures/lab-api.js';
import { httpGet, WEB_EXPECT } from '../session/fixtures/recovery.js';
import { address, subnet } from '../helpers/subnets.js';

t.test('recover web, list it, stop it, all through the server', async (t) => {
  const { api, lab } = await labApi(t, { prefix: 'cr', masquerade: subnet('api/cli-remote-recover') });
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
  const elsewhere = mkdtempSync(join(tmpdir(), 'rl-remote-client-'));
  t.teardown(() => rmSync(elsewhere, { recursive: true, force: true }));
  const operator = api.auth.operator.replace(/^Bearer /, '');
  const remote = (args: string[]): Promise<Cli> => cli(['--server', url, '--token', operator, ...args], { RESTORELAB_HOME: elsewhere });

  const unknown = await remote(['recover', 'nosuchvm', '--lab', lab]);
  t.equal(unknown.code, 5, `an unknown VM is refused before anything starts: ${unknown.stderr}`);
  t.match(unknown.stderr, /error: server: .*nosuchvm/);
  const labFile = await remote(['recover', 'web', '--lab', './labs/x.json']);
  t.equal(labFile.code, 2);
  t.match(labFile.stderr, /--lab names a lab template on the server.*\n.*--lab x/);

  // Without --json, so the progress lines show (--json keeps stderr for warnings only).
  const rec = await remote(['recover', 'web', '--lab', lab]);
  t.equal(rec.code, 0, rec.stderr);
  const nic0 = address('api/cli-remote-recover').replaceAll('.', '\\.');
  const m = new RegExp(
    `^session (\\S+): web is running \\(heartbeat after ([\\d.]+) s\\)\\n {2}nic0: ${nic0}\\nstop it with: restorelab stop \\1\\n$`,
  ).exec(rec.stdout);
  t.ok(m, `the same rendering as embedded recover: ${rec.stdout}`);
  const id = m?.[1] as string;
  t.teardown(() => cli(['--server', url, '--token', operator, 'stop', id], { RESTORELAB_HOME: elsewhere }));
  t.ok(Number(m?.[2]) > 0, 'a heartbeat time');
  t.match(rec.stderr, /operation [0-9a-f-]+ \(recover\) on http:\/\/127\.0\.0\.1/);
  t.match(rec.stderr, /recovering web with the qemu driver/, 'progress streamed from the server');
  const page = await httpGet(`http://${address('api/cli-remote-recover')}/`);
  t.match(page.body, WEB_EXPECT, 'the VM the CLI recovered answers through the lab');

  const listed = await remote(['sessions', '--json']);
  t.match(listed.json.sessions, [{ session: id, vm: 'web', state: 'running', lab }]);
  const human = await remote(['sessions']);
  t.match(human.stdout, new RegExp(`${id}\\s+web\\s+running`));

  const stop = await remote(['stop', id, '--json']);
  t.equal(stop.code, 0, stop.stderr);
  t.same(stop.json, { session: id, vm: 'web', state: 'stopped' });
  const after = await remote(['sessions', '--json']);
  t.match(after.json.sessions, [{ session: id, state: 'stopped' }]);

  // A SureBackup job of the server's jobs directory, run from here.
  mkdirSync(api.ctx.jobsDir, { recursive: true });
  writeFileSync(
    join(api.ctx.jobsDir, 'remote-demo.json'),
    JSON.stringify({
      name: 'remote-demo',
      lab: `../labs/${lab}.json`,
      verify: { vms: ['web'], role: 'web' },
      point: 'latest',
      concurrency: 1,
    }),
  );
  const run = await remote(['surebackup', 'run', 'jobs/remote-demo.json', '--json']);
  t.equal(run.code, 0, run.stderr);
  // A path names the server's job of that file name (the run above would be a 404 otherwise).
  t.match(
    run.json,
    {
      result: 'success',
      vms: [
        {
          name: 'web',
          result: 'success',
          tests: [
            { kind: 'heartbeat', result: 'passed' },
            { kind: 'ping', result: 'passed' },
          ],
        },
      ],
    },
    'the run --json document',
  );
  t.same(Object.keys(run.json).sort(), ['report', 'result', 'run', 'vms']);
  const history = await remote(['surebackup', 'history', '--job', 'remote-demo', '--json']);
  t.equal(history.code, 0, history.stderr);
  t.match(history.json, {
    job: 'remote-demo',
    passRate: { runs: 1, passed: 1, rate: 1 },
    runs: [{ id: run.json.run, status: 'success', vms: [{ name: 'web', result: 'success' }] }],
  });
  t.match(
    (history.json.recoveryTrend as Record<string, unknown[]>).web,
    [{ run: run.json.run, result: 'success' }],
    'the recovery trend of web',
  );
  const busy = await remote(['surebackup', 'run', 'nosuchjob']);
  t.equal(busy.code, 5, 'an unknown job is not found');
});

// Real guests under TCG, published over FUSE, through `surebackup run --json`
// as a script calls it: dns then db as the application group, web under test.
import t from 'tap';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { History } from '../../src/surebackup/history.js';
import { loadConfig } from '../../src/config/config.js';
import { readLabState } from '../../src/lab/lab.js';
import { cli, guestRepository, labFile, leftovers, shortDir } from './fixtures/guest-lab.js';
import { subnet } from '../helpers/subnets.js';

interface RunOut {
  run: string;
  result: string;
  report: string;
  vms: {
    name: string;
    point: string;
    result: string;
    tests: { name: string; kind: string; result: string; seconds: number; detail: string }[];
    recoverySeconds: number;
    screenshot: string | null;
    console: string | null;
  }[];
}

t.test('application group dns → db, then web: all pass, in order, everything torn down', async (t) => {
  const dir = shortDir(t);
  const stateDir = join(dir, 'state');
  const { repo, points } = await guestRepository(dir, ['dns', 'db', 'web']);
  const labName = `sbag${process.pid % 10000}`;
  const timeouts = { maxBootSeconds: 150, appInitSeconds: 60 };
  const jobFile = join(dir, 'app-group.json');
  writeFileSync(
    jobFile,
    JSON.stringify({
      name: 'app-group',
      lab: labFile(dir, labName, subnet('surebackup/app-group')),
      concurrency: 1,
      applicationGroup: [
        {
          name: 'dns',
          role: 'dns',
          ...timeouts,
          tests: [
            { kind: 'heartbeat' },
            { kind: 'ping' },
            { kind: 'dns', name: 'web.lab.test', expect: '192.168.77.10' },
            { kind: 'screenshot' },
          ],
        },
        {
          name: 'db',
          role: 'postgresql',
          ...timeouts,
          tests: [{ kind: 'heartbeat' }, { kind: 'tcp', port: 5432, banner: '^RESTORELAB-DB READY' }],
        },
      ],
      verify: { vms: ['web'], role: 'web' },
    }),
  );
  const r = await cli(['surebackup', 'run', jobFile, '--repo', repo, '--json'], stateDir);
  t.equal(r.code, 0, `exit 0 on success; stderr: ${r.stderr.slice(-800)}`);
  const out = JSON.parse(r.stdout) as RunOut;
  t.same(Object.keys(out).sort(), ['report', 'result', 'run', 'vms']);
  t.same(Object.keys(out.vms[0]!).sort(), ['console', 'name', 'point', 'recoverySeconds', 'result', 'screenshot', 'tests']);
  t.equal(out.result, 'success', JSON.stringify(out.vms.map((v) => [v.name, v.result, v.tests.filter((x) => x.result !== 'passed')])));
  t.same(
    out.vms.map((v) => [v.name, v.point]),
    [
      ['dns', points.dns!.id],
      ['db', points.db!.id],
      ['web', points.web!.id],
    ],
  );
  for (const v of out.vms)
    t.ok(
      v.tests.every((x) => x.result === 'passed'),
      `${v.name}: ${v.tests.map((x) => `${x.name}=${x.result} ${x.detail}`).join(' | ')}`,
    );
  const web = out.vms[2]!;
  t.same(
    web.tests.map((x) => x.kind),
    ['heartbeat', 'ping', 'tcp', 'http', 'screenshot', 'integrity'],
  );
  t.match(web.tests[0]!.detail, /via guest agent/);
  t.ok(web.screenshot && existsSync(web.screenshot), 'screenshot PNG kept');
  // Every VM's serial console is kept beside the report, and the guest wrote to it while it booted.
  for (const v of out.vms) {
    t.ok(v.console && existsSync(v.console), `${v.name}: console log kept at ${v.console}`);
    t.equal(dirname(v.console ?? ''), dirname(out.report), `${v.name}: in the run's directory`);
    t.ok(v.console && statSync(v.console).size > 0, `${v.name}: the console log is not empty`);
  }
  t.match(readFileSync(out.report, 'utf8'), new RegExp(`serial console: ${web.console}`), 'the report names the console log');
  t.ok(web.recoverySeconds > 0 && web.recoverySeconds < 200);
  // Order, from the catalog: each group VM was up and tested before the next started.
  const history = await History.open(loadConfig({ env: { ...process.env, RESTORELAB_STATE_DIR: stateDir } }).catalog);
  t.teardown(() => history.close());
  const by = Object.fromEntries((await history.vmTimings(out.run)).map((x) => [x.vm, x]));
  t.ok(by.dns!.startedMs < by.db!.startedMs && by.db!.startedMs < by.web!.startedMs, 'dns, then db, then web');
  t.equal((await history.run(out.run))?.status, 'success');
  t.match(readFileSync(out.report, 'utf8'), /data:image\/png;base64,/);
  t.same(await leftovers(stateDir, undefined, labName), [], 'no VM, namespace, mount or publication left');
  t.equal(readLabState(stateDir, labName), undefined, 'lab down');
});

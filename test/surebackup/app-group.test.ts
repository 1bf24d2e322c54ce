// Real guests under TCG: dns then db as the application group, web under test.
import t from 'tap';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { History } from '../../src/surebackup/history.js';
import { createLabBackend } from '../../src/surebackup/backend.js';
import { executeRun, runOutput } from '../../src/surebackup/execute.js';
import type { Job } from '../../src/surebackup/runner.js';
import { readLabState } from '../../src/lab/lab.js';
import { shortDir, guestRepository, labFile, leftovers } from './fixtures/guest-lab.js';

t.test('application group dns → db, then web: all pass, in order, everything torn down', async (t) => {
  const dir = shortDir(t);
  const stateDir = join(dir, 'state');
  const { repo, points } = await guestRepository(dir, ['dns', 'db', 'web']);
  const labName = `sbag${process.pid % 10000}`;
  const backend = createLabBackend({ repo, stateDir, driver: 'qemu', accel: 'tcg' });
  const history = History.open(join(stateDir, 'catalog.sqlite'));
  t.teardown(async () => { history.close(); await backend.labDown().catch(() => undefined); await backend.close(); });
  const timeouts = { maxBootSeconds: 150, appInitSeconds: 60 };
  const job: Job = {
    name: 'app-group', lab: labFile(dir, labName, '172.18.121.0/24'), point: 'latest', concurrency: 1,
    applicationGroup: [
      { name: 'dns', role: 'dns', ...timeouts, tests: [{ kind: 'heartbeat' }, { kind: 'ping' }, { kind: 'dns', name: 'web.lab.test', expect: '192.168.77.10' }, { kind: 'screenshot' }] },
      { name: 'db', role: 'postgresql', ...timeouts, tests: [{ kind: 'heartbeat' }, { kind: 'tcp', port: 5432, banner: '^RESTORELAB-DB READY' }] },
    ],
    verify: { vms: ['web'], role: 'web' },
  };
  let netns: string | undefined;
  const origUp = backend.labUp.bind(backend);
  backend.labUp = async (l, s) => { const r = await origUp(l, s); netns = r.netns; return r; };
  const rep = await executeRun({ job, backend, repo: () => backend.reader(), stateDir, history, trigger: 'manual', log: { warn: (l) => t.comment(l) } });
  const out = runOutput(rep);
  t.equal(out.result, 'success', JSON.stringify(out.vms.map((v) => [v.name, v.result, v.tests.filter((x) => x.result !== 'passed')])));
  t.same(out.vms.map((v) => [v.name, v.point]), [['dns', points.dns!.id], ['db', points.db!.id], ['web', points.web!.id]]);
  for (const v of out.vms) t.ok(v.tests.every((x) => x.result === 'passed'), `${v.name}: ${v.tests.map((x) => `${x.name}=${x.result} ${x.detail}`).join(' | ')}`);
  const web = out.vms[2]!;
  t.same(web.tests.map((x) => x.kind), ['heartbeat', 'ping', 'tcp', 'http', 'screenshot', 'integrity']);
  t.match(web.tests[0]!.detail, /via guest agent/);
  t.ok(web.screenshot && existsSync(web.screenshot), 'screenshot PNG kept');
  t.ok(web.recoverySeconds > 0 && web.recoverySeconds < 200);
  // Order, from the catalog: each group VM was up and tested before the next started.
  const timings = history.vmTimings(rep.run);
  const by = Object.fromEntries(timings.map((x) => [x.vm, x]));
  t.ok(by.dns!.startedMs < by.db!.startedMs && by.db!.startedMs < by.web!.startedMs, 'dns, then db, then web');
  const html = readFileSync(rep.report, 'utf8');
  t.match(html, /data:image\/png;base64,/);
  t.same(await leftovers(stateDir, netns), [], 'no VM, namespace, mount or publication left');
  t.equal(readLabState(stateDir, labName), undefined, 'lab down');
});

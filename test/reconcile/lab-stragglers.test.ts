/**
 * A lab whose owner was killed (-9) still holds the owner's short-lived
 * probes for a few seconds (a `ping -W`, a probe script). Reconcile waits a
 * bounded time for them to end and then removes the lab, instead of keeping
 * it, and with it a host route that blocks the next lab on its subnet. A
 * process that outlives the wait still keeps the lab. Real quarantine labs
 * (a namespace and a bridge, no uplink, so no route: their subnet is only
 * registered), real processes in them.
 */
import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { listNetns } from '../../src/host/netns.js';
import { labDown, labUp, parseLab } from '../../src/lab/lab.js';
import { reconcile } from '../../src/reconcile/reconcile.js';
import { subnet } from '../helpers/subnets.js';

const dir = mkdtempSync(join(tmpdir(), 'rl-strag-'));
const stateDir = join(dir, 'state');
const children: ChildProcess[] = [];
t.teardown(async () => {
  for (const c of children) c.kill('SIGKILL');
  for (const name of ['strag-short', 'strag-long']) await labDown(name, { stateDir, quietIfMissing: true }).catch(() => undefined);
  rmSync(dir, { recursive: true, force: true });
});

/** A quarantine lab owned by a process that is gone, with `sleep seconds` running inside it. */
async function orphanedLab(name: string, seconds: number): Promise<string> {
  const def = parseLab(
    {
      name,
      networks: [{ name: 'prod', subnet: '192.168.77.0/24', gateway: '192.168.77.1', masquerade: subnet('reconcile/lab-stragglers') }],
    },
    `lab ${name}`,
  );
  // pid 2^22 + 1 is above Linux's pid_max: never alive.
  const lab = await labUp(def, { stateDir, owner: { pid: 2 ** 22 + 1, what: 'a killed test worker' }, uplink: false });
  const sleeper = spawn('ip', ['netns', 'exec', lab.netns, 'sleep', String(seconds)], { stdio: 'ignore' });
  children.push(sleeper);
  await new Promise((r) => sleeper.once('spawn', r));
  return lab.netns;
}

t.test('a process that ends within the wait: the lab is removed once it has', async (t) => {
  const netns = await orphanedLab('strag-short', 3);
  const dry = await reconcile({ stateDir, dryRun: true });
  t.match(
    dry.stale.find((s) => s.id === 'lab:strag-short'),
    { safe: false, reason: /still run in/ },
    'a dry run does not wait: busy now',
  );
  const started = Date.now();
  const report = await reconcile({ stateDir });
  t.match(
    report.stale.find((s) => s.id === 'lab:strag-short'),
    { safe: true, outcome: { action: 'removed' } },
  );
  t.ok(Date.now() - started >= 1000, 'it waited for the sleep to end');
  t.notOk((await listNetns()).includes(netns), 'the namespace is gone');
});

t.test('a process that outlives the wait keeps the lab, and says which', async (t) => {
  const netns = await orphanedLab('strag-long', 120);
  const started = Date.now();
  const report = await reconcile({ stateDir });
  const waited = Date.now() - started;
  t.match(
    report.stale.find((s) => s.id === 'lab:strag-long'),
    { safe: false, reason: /processes \d+.* still run in/ },
  );
  t.ok(waited >= 14_000 && waited < 40_000, `it waited its bounded time (${waited} ms)`);
  t.ok((await listNetns()).includes(netns), 'the namespace is kept');
});

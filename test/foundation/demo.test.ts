/**
 * `restorelab demo --json` runs the whole main job on the embedded defaults
 * (a fresh home: local repository, SQLite catalog, QEMU driver) and every
 * step passes: build, probe, backup, verify, publish, recover, verify in a lab.
 */
import t from 'tap';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exec } from '../../src/host/exec.js';
import { projectPath } from '../../src/paths.js';
import { guestImage } from '../helpers/guests.js';

interface DemoOutput {
  ok: boolean;
  steps: { step: string; status: string; detail: string }[];
  notYetAvailable: string[];
}

t.test('demo --json: every step of the main job passes', async (t) => {
  const image = await guestImage('web');
  const home = mkdtempSync(join(tmpdir(), 'rl-demo-'));
  t.teardown(() => rmSync(home, { recursive: true, force: true }));
  const env = { ...process.env, RESTORELAB_HOME: home, RESTORELAB_GUESTS_DIR: join(image, '..'), RESTORELAB_ACCEL: 'tcg' };
  const r = await exec(process.execPath, [projectPath('bin', 'restorelab.js'), '--json', 'demo'], { env, timeoutMs: 600_000 });
  t.equal(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout) as DemoOutput;
  t.same(
    out.steps.map((s) => s.step),
    ['build-guest', 'doctor', 'backup', 'verify', 'publish', 'recover', 'surebackup'],
  );
  for (const s of out.steps) t.equal(s.status, 'done', `${s.step}: ${s.detail}`);
  t.same(out.notYetAvailable, []);
  t.ok(existsSync(join(home, 'var', 'repo', 'config.json')), 'the repository is in the default place under the home');
  t.ok(existsSync(join(home, 'var', 'state', 'catalog.sqlite')), 'the SQLite catalog is in the state directory');
  const report = out.steps.find((s) => s.step === 'surebackup')?.detail.match(/report (\S+\.html)/)?.[1];
  t.ok(report && existsSync(report), 'the SureBackup report exists');
  const [ns, sessions] = await Promise.all([
    exec('ip', ['netns', 'list']),
    exec(process.execPath, [projectPath('bin', 'restorelab.js'), '--json', 'sessions'], { env }),
  ]);
  t.notMatch(ns.stdout, /prod-lab/, 'no lab namespace is left behind');
  t.match(JSON.parse(sessions.stdout), { sessions: [{ state: 'stopped' }] }, 'the recovery session was stopped');
});

// recover and surebackup run on an encrypted repository, for real (boots the
// `web` guest, TCG, in a lab), with the key file from RESTORELAB_KEY_FILE
// only: the session supervisor and the lab backend open the repository with
// the key file recover and surebackup resolved, and the supervisor's command
// line and environment carry neither the key nor its path.
import t from 'tap';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { exec, type ExecResult } from '../../src/host/exec.js';
import { projectPath } from '../../src/paths.js';
import { initRepository } from '../../src/repo/repository.js';
import { backupVm } from '../../src/backup/engine.js';
import { loadVmDefinition } from '../../src/vm/definition.js';
import { SessionStore } from '../../src/session/store.js';
import { stopSession } from '../../src/session/recover.js';
import { labDown, listLabs } from '../../src/lab/lab.js';
import { guestImage } from '../helpers/guests.js';
import { labFile, leftovers, shortDir } from '../surebackup/fixtures/guest-lab.js';
import { subnet } from '../helpers/subnets.js';

const dir = shortDir(t);
const stateDir = join(dir, 'state');
const keyFile = join(dir, 'repo.key');
const repoDir = join(dir, 'repo');
const repository = await initRepository(repoDir, { keyFile });
const image = await guestImage('web');
const vm = loadVmDefinition(projectPath('lab-templates', 'vms', 'web.json'));
await backupVm({ repo: repository, vm, disks: { root: image }, source: image });
const keyHex = readFileSync(keyFile, 'utf8').trim();
const tag = process.pid % 10000;

t.teardown(async () => {
  for (const s of new SessionStore(stateDir).list()) await stopSession(stateDir, s.id).catch(() => undefined);
  for (const l of listLabs(stateDir)) await labDown(l.name, { stateDir }).catch(() => undefined);
});

function cli(args: string[], timeoutMs = 600_000): Promise<ExecResult> {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k, v]) => !k.startsWith('RESTORELAB_') && v !== undefined)) as Record<
    string,
    string
  >;
  return exec(process.execPath, [projectPath('bin', 'restorelab.js'), ...args], {
    timeoutMs,
    env: { ...env, RESTORELAB_STATE_DIR: stateDir, RESTORELAB_ACCEL: 'tcg', RESTORELAB_DRIVER: 'qemu', RESTORELAB_KEY_FILE: keyFile },
  });
}

function lastJson<T>(r: ExecResult): T {
  return JSON.parse(r.stdout.trim().split('\n').at(-1) ?? '{}') as T;
}

t.test('recover with the key from RESTORELAB_KEY_FILE: running, supervisor holds only the record, stop', async (t) => {
  const lab = labFile(dir, `re${tag}`, subnet('session/recover-encrypted:recover'));
  const r = await cli(['recover', '--repo', repoDir, 'web', '--lab', lab, '--json']);
  t.equal(r.code, 0, `recover exits 0: ${r.stdout.slice(-400)} ${r.stderr.slice(-800)}`);
  const out = lastJson<{ session: string; state: string; vm: string }>(r);
  t.match(out, { state: 'running', vm: 'web' });
  const s = new SessionStore(stateDir).get(out.session);
  t.equal(s.keyFile, keyFile, 'the session record keeps the key file path for its supervisor');
  const pid = s.supervisorPid ?? 0;
  const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
  const environ = readFileSync(`/proc/${pid}/environ`, 'utf8');
  t.match(cmdline, /session-supervise/, 'the supervisor process');
  t.notOk(cmdline.includes(keyHex) || environ.includes(keyHex), 'no key on its argv or in its environment');
  t.notOk(cmdline.includes(keyFile), 'not even the key file path on its argv');
  const stop = await cli(['stop', out.session, '--json'], 180_000);
  t.equal(stop.code, 0, stop.stderr);
  t.equal(lastJson<{ state: string }>(stop).state, 'stopped');
});

t.test('surebackup run with the key from RESTORELAB_KEY_FILE passes, and fails clearly without it', async (t) => {
  const lab = labFile(dir, `sbe${tag}`, subnet('session/recover-encrypted:surebackup'));
  const job = join(dir, 'job.json');
  writeFileSync(job, JSON.stringify({ name: `enc${tag}`, lab, verify: { vms: ['web'], role: 'web', maxBootSeconds: 150 } }));
  const r = await cli(['surebackup', 'run', job, '--repo', repoDir, '--json']);
  t.equal(r.code, 0, `exit 0: ${r.stdout.slice(-800)} ${r.stderr.slice(-800)}`);
  t.match(lastJson(r), { result: 'success', vms: [{ name: 'web', result: 'success' }] });
  t.same(await leftovers(stateDir, undefined, `sbe${tag}`), [], 'nothing left behind');

  const env = Object.fromEntries(Object.entries(process.env).filter(([k, v]) => !k.startsWith('RESTORELAB_') && v !== undefined)) as Record<
    string,
    string
  >;
  const none = await exec(process.execPath, [projectPath('bin', 'restorelab.js'), 'surebackup', 'run', job, '--repo', repoDir, '--json'], {
    timeoutMs: 120_000,
    env: { ...env, RESTORELAB_STATE_DIR: stateDir },
  });
  t.not(none.code, 0, 'without a key file the run does not pass');
  t.match(none.stdout + none.stderr, /KEY_REQUIRED|is encrypted/);
});

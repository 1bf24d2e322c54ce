// A recovery from a repository on object storage, for real: the `web` guest
// backed up to an s3:// prefix of the RADOS Gateway (scripts/services), then
// `recover --repo s3://…` boots it (TCG) in a lab from the published point,
// reading chunks through the on-disk cache under the state directory.
// Needs the gateway, so it runs in the services pool (one file at a time).
import t from 'tap';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { exec, type ExecResult } from '../../src/host/exec.js';
import { projectPath } from '../../src/paths.js';
import { openRepository } from '../../src/repo/repository.js';
import { SessionStore } from '../../src/session/store.js';
import { stopSession } from '../../src/session/recover.js';
import { labDown, listLabs } from '../../src/lab/lab.js';
import { guestImage } from '../helpers/guests.js';
import { s3Env, s3Scratch } from '../helpers/s3.js';
import { labFile, leftovers, shortDir } from '../surebackup/fixtures/guest-lab.js';
import { subnet } from '../helpers/subnets.js';

const dir = shortDir(t);
const stateDir = join(dir, 'state');
const tag = process.pid % 10000;

t.teardown(async () => {
  for (const s of new SessionStore(stateDir).list()) await stopSession(stateDir, s.id).catch(() => undefined);
  for (const l of listLabs(stateDir)) await labDown(l.name, { stateDir }).catch(() => undefined);
});

function lastJson<T>(r: ExecResult): T {
  return JSON.parse(r.stdout.trim().split('\n').at(-1) ?? '{}') as T;
}

t.test('recover --repo s3://…: the VM runs from the bucket, its chunks cached under <stateDir>/chunk-cache', async (t) => {
  const s = await s3Scratch(t);
  const env = Object.fromEntries(Object.entries(process.env).filter(([k, v]) => !k.startsWith('RESTORELAB_') && v !== undefined)) as Record<
    string,
    string
  >;
  const run = (args: string[], timeoutMs = 600_000): Promise<ExecResult> =>
    exec(process.execPath, [projectPath('bin', 'restorelab.js'), ...args], {
      timeoutMs,
      env: { ...env, ...s3Env(s.service), RESTORELAB_STATE_DIR: stateDir, RESTORELAB_ACCEL: 'tcg', RESTORELAB_DRIVER: 'qemu' },
    });
  const url = `s3://${s.bucket}/${s.prefix}repo`;
  const init = await run(['repo', 'init', url, '--json']);
  t.equal(init.code, 0, init.stderr);
  const image = await guestImage('web');
  const backup = await run([
    'backup',
    '--repo',
    url,
    '--vm',
    projectPath('lab-templates', 'vms', 'web.json'),
    '--disk',
    `root=${image}`,
    '--json',
  ]);
  t.equal(backup.code, 0, backup.stderr);

  const lab = labFile(dir, `s3r${tag}`, subnet('session/recover-s3'));
  const r = await run(['recover', '--repo', url, 'web', '--lab', lab, '--json']);
  t.equal(r.code, 0, `recover exits 0: ${r.stdout.slice(-400)} ${r.stderr.slice(-800)}`);
  const out = lastJson<{ session: string; state: string; vm: string }>(r);
  t.match(out, { state: 'running', vm: 'web' }, 'the VM booted from the s3:// point');

  const saved = { ...process.env };
  Object.assign(process.env, s3Env(s.service));
  const repoId = (await openRepository(url)).config.id;
  process.env = saved;
  const cacheDir = join(stateDir, 'chunk-cache', repoId);
  const cached = readdirSync(cacheDir).reduce((n, shard) => n + readdirSync(join(cacheDir, shard)).length, 0);
  t.ok(cached > 0, `the boot read ${cached} chunks through the on-disk cache`);

  const stop = await run(['stop', out.session, '--json'], 180_000);
  t.equal(stop.code, 0, stop.stderr);
  t.equal(lastJson<{ state: string }>(stop).state, 'stopped');
  t.same(await leftovers(stateDir, undefined, `s3r${tag}`), [], 'nothing left behind');
});

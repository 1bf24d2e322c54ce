// Every command on a real encrypted repository, as real CLI processes, with
// the key from each of the three places resolveKeyFile looks (--key-file,
// RESTORELAB_KEY_FILE, repositoryKeyFile of the config file): backup,
// points, restore (the image's bytes back), verify, files get (a temporary
// read-only mount through the holder process: loop devices, real), mount +
// umount, and publish over FUSE (the disk read back). A wrong key fails each
// with KEY_WRONG, no key with KEY_REQUIRED. Afterwards no file of the
// repository holds the VM's name, its IP address or the image path, while an
// unencrypted control repository of the same backup does.
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { exec, type ExecResult } from '../../src/host/exec.js';
import { projectPath } from '../../src/paths.js';
import { detachMount } from '../../src/fuse/mounts.js';
import { mountEntry } from '../../src/host/mounts.js';
import { listPublications, removePublication } from '../../src/publish/publish.js';
import { listSessions } from '../../src/flr/session.js';
import { releaseJournal } from '../../src/flr/mount.js';
import { guestImage } from '../helpers/guests.js';

const work = mkdtempSync('/tmp/rl-enc-keys-');
const state = join(work, 'state');
const VM = 'h9secretvm';
const IP = '10.99.88.77';
const IMG_DIR = 'h9-secret-images';
const web = await guestImage('web');
mkdirSync(join(work, IMG_DIR));
const image = join(work, IMG_DIR, 'root.raw');
symlinkSync(web, image);
const vmFile = join(work, 'vm.json');
writeFileSync(
  vmFile,
  JSON.stringify({
    name: VM,
    memoryMiB: 256,
    vcpus: 1,
    disks: [{ name: 'root', format: 'raw' }],
    nics: [{ mac: '52:54:00:99:88:77', network: 'prod', ip: IP }],
  }),
);
const repo = join(work, 'repo');
const keyFile = join(work, 'repo.key');
const wrongKey = join(work, 'wrong.key');
writeFileSync(wrongKey, randomBytes(32).toString('hex') + '\n', { mode: 0o600 });
const configFile = join(work, 'config.json');
writeFileSync(configFile, JSON.stringify({ repositoryKeyFile: keyFile }));
const wrongConfig = join(work, 'wrong-config.json');
writeFileSync(wrongConfig, JSON.stringify({ repositoryKeyFile: wrongKey }));

/** The environment without any RESTORELAB_ setting of the engineer's shell. */
const baseEnv: Record<string, string> = {
  ...(Object.fromEntries(Object.entries(process.env).filter(([k, v]) => !k.startsWith('RESTORELAB_') && v !== undefined)) as Record<
    string,
    string
  >),
  RESTORELAB_HOME: work,
  RESTORELAB_STATE_DIR: state,
  RESTORELAB_ACCEL: 'tcg',
};

type Source = 'flag' | 'env' | 'config';
/** How a run gets the key (or a wrong one) from `source`: extra arguments and environment. */
function keyFrom(source: Source, key = keyFile): { args: string[]; env: Record<string, string> } {
  if (source === 'flag') return { args: ['--key-file', key], env: {} };
  if (source === 'env') return { args: [], env: { RESTORELAB_KEY_FILE: key } };
  return { args: [], env: { RESTORELAB_CONFIG: key === keyFile ? configFile : wrongConfig } };
}

function cli(args: string[], source?: Source, key?: string): Promise<ExecResult> {
  const k = source ? keyFrom(source, key) : { args: [], env: {} };
  return exec(process.execPath, [projectPath('bin', 'restorelab.js'), ...args, ...k.args], {
    timeoutMs: 300_000,
    env: { ...baseEnv, ...k.env },
  });
}

function json<T>(r: ExecResult): T {
  if (r.code !== 0) throw new Error(`restorelab exited ${String(r.code)}: ${r.stdout} ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').at(-1) ?? '') as T;
}

function mountsUnder(dir: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => l.split(' ')[4] ?? '')
    .filter((p) => p.startsWith(dir));
}

function filesUnder(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? filesUnder(join(dir, e.name)) : [join(dir, e.name)]));
}

/** Repository files holding any of the secrets, as "file: secret". */
function leaks(dir: string): string[] {
  return filesUnder(dir).flatMap((f) => {
    const b = readFileSync(f);
    return [VM, IP, IMG_DIR].filter((s) => b.includes(s)).map((s) => `${f}: ${s}`);
  });
}

t.teardown(async () => {
  for (const s of listSessions(state)) await releaseJournal(s).catch(() => undefined);
  for (const p of listPublications(state)) await removePublication(state, p.id, { discard: true, as: p.owner }).catch(() => undefined);
  for (const m of mountsUnder(work).reverse()) {
    if (mountEntry(m)) await detachMount(m).catch(() => undefined);
    await exec('umount', ['-l', m]);
  }
  rmSync(work, { recursive: true, force: true });
});

t.test('repo init --encrypt makes a format v2 repository', async (t) => {
  const init = json<{ encryption: string; version: number }>(
    await cli(['repo', 'init', repo, '--encrypt', '--key-file', keyFile, '--chunk-size', '1M', '--json']),
  );
  t.match(init, { encryption: 'aes-256-gcm', version: 2 });
});

const points: string[] = [];
for (const source of ['flag', 'env', 'config'] as const) {
  t.test(`key from ${source}: backup, points, restore, verify, files get, mount, publish`, async (t) => {
    const b = json<{ restorePoint: string }>(
      await cli(['backup', '--repo', repo, '--vm', vmFile, '--disk', `root=${image}`, '--json'], source),
    );
    points.push(b.restorePoint);
    const list = json<{ points: { id: string; vm: string }[] }>(await cli(['points', '--repo', repo, '--json'], source));
    t.same(list.points.map((p) => p.id).sort(), [...points].sort(), 'points lists every point so far');

    const to = join(work, `restored-${source}.raw`);
    json(await cli(['restore', b.restorePoint, '--repo', repo, '--disk', 'root', '--to', to, '--json'], source));
    t.equal((await exec('cmp', [to, web])).code, 0, 'restore gives the bytes of the image');
    rmSync(to);

    const v = await cli(['verify', '--repo', repo, '--json'], source);
    t.equal(v.code, 0, `verify passes: ${v.stdout} ${v.stderr}`);

    const hostname = join(work, `hostname-${source}`);
    json(await cli(['files', 'get', b.restorePoint, '/etc/hostname', '--repo', repo, '--to', hostname, '--json'], source));
    t.equal(readFileSync(hostname, 'utf8').trim(), 'web', 'files get extracts the guest file through a temporary mount');

    const mnt = join(work, `mnt-${source}`);
    const m = json<{ id: string; mounts: { path: string; fstype: string }[] }>(
      await cli(['mount', b.restorePoint, mnt, '--repo', repo, '--json'], source),
    );
    const ext4 = m.mounts.find((x) => x.fstype === 'ext4');
    t.ok(ext4, 'an ext4 partition is mounted');
    t.equal(
      readFileSync(join(ext4?.path ?? '/nonexistent', 'etc', 'hostname'), 'utf8').trim(),
      'web',
      'the guest file reads through the mount',
    );
    json(await cli(['umount', m.id, '--json']));
    t.same(mountsUnder(mnt), [], 'umount leaves nothing mounted');

    const fuse = join(work, `fuse-${source}`);
    const pub = json<{ publication: string; disks: Record<string, string> }>(
      await cli(['publish', b.restorePoint, '--repo', repo, '--fuse', fuse, '--background', '--read-only', '--json'], source),
    );
    t.equal((await exec('cmp', [pub.disks.root ?? '/nonexistent', web])).code, 0, 'the published disk reads back as the image');
    json(await cli(['unpublish', pub.publication, '--discard', '--json']));
    t.equal(mountEntry(fuse), undefined, 'unpublish leaves no FUSE mount');
  });
}

t.test('a wrong key fails with KEY_WRONG from every source, no key with KEY_REQUIRED', async (t) => {
  const point = points[0] ?? '';
  for (const source of ['flag', 'env', 'config'] as const) {
    for (const args of [
      ['points', '--repo', repo],
      ['restore', point, '--repo', repo, '--disk', 'root', '--to', join(work, 'never.raw')],
      ['files', 'get', point, '/etc/hostname', '--repo', repo, '--to', join(work, 'never')],
      ['publish', point, '--repo', repo, '--fuse', join(work, 'never-fuse'), '--read-only'],
    ]) {
      const r = await cli([...args, '--json'], source, wrongKey);
      t.not(r.code, 0, `${args[0]} with a wrong key from ${source} fails`);
      t.match(r.stdout + r.stderr, /KEY_WRONG/, `${args[0]} (${source}): KEY_WRONG`);
      t.match(r.stdout + r.stderr, /does not match repository/);
    }
  }
  const none = await cli(['points', '--repo', repo, '--json']);
  t.not(none.code, 0);
  t.match(none.stdout + none.stderr, /KEY_REQUIRED/);
  t.match(none.stdout + none.stderr, /RESTORELAB_KEY_FILE/, 'the hint names every place a key file can come from');
  t.same(listSessions(state), [], 'nothing stayed mounted');
  t.same(listPublications(state), [], 'nothing stayed published');
});

t.test('no repository file holds the VM name, its IP or the image path; an unencrypted control does', async (t) => {
  t.ok(statSync(join(repo, 'points')).isDirectory());
  t.equal(readdirSync(join(repo, 'points')).length, 3);
  t.same(leaks(repo), [], 'nothing in clear in the encrypted repository');
  const control = join(work, 'control');
  json(await cli(['repo', 'init', control, '--chunk-size', '1M', '--json']));
  json(await cli(['backup', '--repo', control, '--vm', vmFile, '--disk', `root=${image}`, '--json']));
  const found = leaks(join(control, 'points'));
  for (const s of [VM, IP, IMG_DIR])
    t.ok(
      found.some((l) => l.endsWith(`: ${s}`)),
      `the check finds ${s} in a plaintext manifest`,
    );
});

/**
 * Script tests of server-run jobs, for real in a network namespace: a script
 * inside the scripts directory runs as the configured unprivileged user
 * (its own `id -u` says so), without the server's environment, in the lab's
 * namespace; one outside the directory, or reached through a symlink that
 * leads out, is refused without running; the time limit caps a longer
 * timeout. The same script without a policy (the CLI) runs as root.
 * Creates a network namespace: run under /tmp/rl-heavy.lock.
 */
import t from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { scriptTest, type ScriptPolicy } from '../../src/verify/script.js';
import { lookupUser } from '../../src/host/users.js';
import { address } from '../helpers/subnets.js';

for (const tool of ['ip', 'setpriv', 'getent']) {
  if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0)
    throw new Error(`missing ${tool}: install iproute2 / util-linux / libc-bin`);
}

const ns = `rl-sp-${randomBytes(3).toString('hex')}`;
execFileSync('ip', ['netns', 'add', ns]);
t.teardown(() => {
  try {
    execFileSync('ip', ['netns', 'del', ns]);
  } catch {
    /* gone */
  }
});

// mkdtemp makes 0700 directories; the script user must be able to reach the scripts.
const dir = mkdtempSync(join(tmpdir(), 'rl-scripts-'));
chmodSync(dir, 0o755);
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const marker = join(dir, 'ran');
const script = (name: string, body: string): string => {
  const p = join(dir, name);
  writeFileSync(p, `#!/bin/sh\n${body}\n`, { mode: 0o755 });
  return p;
};
const whoami = script(
  'whoami.sh',
  'id -u; id -g; id -G; echo "vm=$VM_NAME secret=${RL_TEST_SECRET:-none}"; readlink /proc/self/ns/net; pwd',
);
const slow = script('slow.sh', 'sleep 30');
symlinkSync('/usr/bin/touch', join(dir, 'touch'));

const nobody = lookupUser('nobody', 'test');
const policy: ScriptPolicy = { dir, user: 'nobody', maxSeconds: 2 };
const vm = { netns: ns, name: 'web', ip: '192.168.77.10', masqIp: address('prod-lab') };
process.env.RL_TEST_SECRET = 'from-the-server-environment';
t.teardown(() => {
  delete process.env.RL_TEST_SECRET;
});
const nsId = execFileSync('ip', ['netns', 'exec', ns, 'readlink', '/proc/self/ns/net'], { encoding: 'utf8' }).trim();

t.test("a script inside the directory runs as the script user, in the lab namespace, without the server's environment", async (t) => {
  const r = (await scriptTest({ path: whoami }, vm, undefined, policy)) as unknown as { result: string; stdout: string; detail: string };
  t.equal(r.result, 'passed', r.detail);
  const [uid, gid, groups, env, netns, cwd] = r.stdout.trim().split('\n');
  t.equal(uid, String(nobody.uid), `id -u is ${nobody.name}'s uid`);
  t.not(uid, '0');
  t.equal(gid, String(nobody.gid));
  t.equal(groups, String(nobody.gid), "no supplementary groups (not root's)");
  t.equal(env, 'vm=web secret=none', "VM_* given, the server's environment not");
  t.equal(netns, nsId, 'inside the lab namespace');
  t.equal(cwd, dir);
});

t.test('without a policy (the CLI, root running its own job file) the same script runs as the caller', async (t) => {
  const r = (await scriptTest({ path: whoami }, vm)) as unknown as { result: string; stdout: string; detail: string };
  t.equal(r.result, 'passed', r.detail);
  t.equal(r.stdout.split('\n')[0], String(process.getuid?.()));
});

t.test('outside the directory, or through a symlink leading out: refused, nothing runs', async (t) => {
  for (const [path, args] of [
    ['/bin/sh', ['-c', `touch ${marker}`]],
    [join(dir, 'touch'), [marker]],
    [`${dir}/../${dir.split('/').at(-1)}/../../usr/bin/touch`, [marker]],
  ] as const) {
    const r = await scriptTest({ path, args: [...args] }, vm, undefined, policy);
    t.equal(r.result, 'failed', path);
    t.match(r.detail, `refused: script test: script ${path} is outside the scripts directory ${dir}`);
    t.equal(r.seconds, 0);
  }
  t.notOk(existsSync(marker), 'no script ran');
});

t.test('api.scriptMaxSeconds caps a longer timeout', async (t) => {
  const t0 = Date.now();
  const r = await scriptTest({ path: slow, timeoutSeconds: 60 }, vm, undefined, policy);
  t.equal(r.result, 'failed');
  t.match(r.detail, /timed out after 2 s/);
  t.ok(Date.now() - t0 < 10_000, 'stopped at the cap, not after 60 s');
});

t.test('an unknown script user fails the test with the config key', async (t) => {
  const r = await scriptTest({ path: whoami }, vm, undefined, { ...policy, user: 'no-such-user-h5' });
  t.equal(r.result, 'failed');
  t.match(r.detail, /api\.scriptUser names user "no-such-user-h5", which this host does not have/);
});

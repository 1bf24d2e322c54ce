// The script test's verdict and its refusals, without a namespace: how a run
// that ended is judged (exit 0 only; a timeout, a signal or another code
// fails, with what it printed), which paths are accepted before anything
// boots, and what a server-run job may start. One of the tests the mutation
// run uses (docs/testing.md); scripts really run in lab-tests.test.ts and
// script-policy.test.ts.
import t from 'tap';
import { chmodSync, mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  allowedScript,
  judgeScript,
  resolveScript,
  scriptTest,
  serverScriptPolicy,
  SCRIPT_DEFAULT_TIMEOUT_SECONDS,
} from '../../src/verify/script.js';
import { address } from '../helpers/subnets.js';

const end = (o: Partial<Parameters<typeof judgeScript>[0]> = {}) => ({
  code: 0,
  signal: null,
  timedOut: false,
  timeoutSeconds: 60,
  stdout: '',
  stderr: '',
  ...o,
});

t.test('exit 0 passes with its stdout; anything else fails and says how it ended', async (t) => {
  t.same(judgeScript(end({ stdout: '  all 3 checks ok\n' })), { ok: true, detail: 'all 3 checks ok' });
  t.same(
    judgeScript(end({ stdout: 'ok\n', stderr: 'a warning\n' })),
    { ok: true, detail: 'ok' },
    'stderr of a passing script is not the detail',
  );
  t.same(judgeScript(end({ code: 3, stdout: 'half-way\n', stderr: 'oops\n' })), {
    ok: false,
    detail: 'exit 3; stdout: half-way; stderr: oops',
  });
  t.same(judgeScript(end({ code: 1, stdout: 'x' })), { ok: false, detail: 'exit 1; stdout: x' }, 'no stderr, no stderr part');
  t.same(
    judgeScript(end({ code: 1, stdout: 'x', stderr: ' \n' })),
    { ok: false, detail: 'exit 1; stdout: x' },
    'blank stderr counts as none',
  );
  t.same(judgeScript(end({ code: null, signal: 'SIGKILL' })), { ok: false, detail: 'exit SIGKILL; stdout: ' }, 'killed by a signal');
  t.same(
    judgeScript(end({ code: 0, timedOut: true, timeoutSeconds: 5, stdout: 'started\n' })),
    { ok: false, detail: 'timed out after 5 s; stdout: started' },
    'a timeout fails even if the kill left exit 0',
  );
  const long = 'e'.repeat(600) + 'END';
  t.equal(
    judgeScript(end({ code: 2, stderr: long })).detail,
    `exit 2; stdout: ; stderr: ${long.slice(-500)}`,
    'the last 500 characters of stderr',
  );
  t.equal(SCRIPT_DEFAULT_TIMEOUT_SECONDS, 60);
});

t.test('a script path is resolved against the job file and must be an executable file', async (t) => {
  const dir = t.testdir({ checks: {} });
  const exe = join(dir, 'checks', 'db.sh');
  writeFileSync(exe, '#!/bin/sh\n');
  chmodSync(exe, 0o755);
  writeFileSync(join(dir, 'plain.sh'), 'echo');
  chmodSync(join(dir, 'plain.sh'), 0o644);
  t.equal(resolveScript('checks/db.sh', dir, 'job j'), exe, 'relative to the base directory');
  t.equal(resolveScript(exe, '/nonexistent', 'job j'), exe, 'absolute as given');
  t.throws(() => resolveScript('plain.sh', dir, 'job j'), {
    code: 'SCRIPT_NOT_FOUND',
    exitCode: 2,
    message: `job j: script ${join(dir, 'plain.sh')} does not exist or is not executable`,
  });
  t.throws(() => resolveScript('checks', dir, 'job j'), { code: 'SCRIPT_NOT_FOUND' }, 'a directory is no script');
  t.throws(() => resolveScript('nope.sh', dir, 'VM web'), {
    code: 'SCRIPT_NOT_FOUND',
    hint: /relative paths are resolved against the job file's directory/,
  });
});

t.test('server-run jobs: only scripts inside the scripts directory, by their real path', async (t) => {
  const dir = t.testdir({ scripts: {}, elsewhere: {} });
  const scripts = join(dir, 'scripts');
  const inside = join(scripts, 'ok.sh');
  writeFileSync(inside, '#!/bin/sh\n');
  chmodSync(inside, 0o755);
  const outside = join(dir, 'elsewhere', 'x.sh');
  writeFileSync(outside, '#!/bin/sh\n');
  chmodSync(outside, 0o755);
  symlinkSync(outside, join(scripts, 'link.sh'));
  mkdirSync(join(scripts, 'sub'));
  t.equal(allowedScript(inside, scripts, 'script test'), inside);
  t.throws(() => allowedScript(outside, scripts, 'script test'), {
    code: 'SCRIPT_NOT_ALLOWED',
    exitCode: 2,
    message: `script test: script ${outside} is outside the scripts directory ${scripts}`,
    hint: /api\.scriptsDir/,
  });
  t.throws(() => allowedScript(join(scripts, 'link.sh'), scripts, 'x'), { code: 'SCRIPT_NOT_ALLOWED' }, 'a symlink leading out');
  t.throws(
    () => allowedScript(join(scripts, 'sub', '..', '..', 'elsewhere', 'x.sh'), scripts, 'x'),
    { code: 'SCRIPT_NOT_ALLOWED' },
    'dot-dot out',
  );
  t.same(
    serverScriptPolicy({ scriptsDir: '/srv/checks', scriptUser: 'nobody', scriptMaxSeconds: 30 } as Parameters<
      typeof serverScriptPolicy
    >[0]),
    { dir: '/srv/checks', user: 'nobody', maxSeconds: 30 },
  );
  const vm = { netns: 'rl-mut-none', name: 'web', ip: '10.0.0.2', masqIp: address('mutation:fake-vm', 2) };
  const refused = await scriptTest({ path: outside }, vm, undefined, { dir: scripts, user: 'nobody', maxSeconds: 5 });
  t.same(refused, {
    name: 'script',
    kind: 'script',
    result: 'failed',
    seconds: 0,
    detail: `refused: script test: script ${outside} is outside the scripts directory ${scripts}`,
  });
  const noUser = await scriptTest({ path: inside }, vm, undefined, { dir: scripts, user: 'no-such-user-mut', maxSeconds: 5 });
  t.equal(noUser.result, 'failed');
  t.match(noUser.detail, /^refused: .*api\.scriptUser/);
});

t.test("a script in a namespace that does not exist fails, and the run's cancel rejects", async (t) => {
  const vm = { netns: 'rl-mut-none', name: 'web', ip: '10.0.0.2', masqIp: address('mutation:fake-vm', 2) };
  const r = await scriptTest({ path: '/bin/true' }, vm);
  t.same([r.name, r.kind, r.result], ['script', 'script', 'failed']);
  t.match(r.detail, /^exit \d+; stdout: ; stderr: .*rl-mut-none/);
  const ac = new AbortController();
  const p = scriptTest({ path: '/bin/sleep', args: ['30'] }, { ...vm, netns: 'rl-mut-none' }, ac.signal);
  ac.abort(new Error('cancelled'));
  await t.rejects(p, /cancelled/);
});

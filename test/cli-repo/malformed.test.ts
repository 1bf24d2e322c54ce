/**
 * Malformed input to the repository and session commands (issue 21, item 7):
 * each case asserts the exit code, the error code and message (in the
 * `--json` document and on stderr with its `fix:` line), and that the
 * repository, the state directory and any path the command was pointed at
 * are exactly as before. One small real repository with one restore point;
 * no VM, so the file runs in seconds.
 */
import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { projectPath } from '../../src/paths.js';
import { treeFingerprint } from '../helpers/repository.js';

const work = mkdtempSync(join(tmpdir(), 'rl-cli-malformed-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));
const stateDir = join(work, 'state');
const repo = join(work, 'repo');
const env = { ...process.env, RESTORELAB_HOME: work, RESTORELAB_STATE_DIR: stateDir, RESTORELAB_REPOSITORY: repo };

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function cli(args: string[]): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [projectPath('bin', 'restorelab.js'), ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

// One restore point of a 1 MiB disk in 256 KiB chunks, and a catalog that knows it.
const image = join(work, 'disk.raw');
writeFileSync(image, randomBytes(1024 * 1024));
const vmFile = join(work, 'vm.json');
writeFileSync(vmFile, JSON.stringify({ name: 'small', memoryMiB: 64, vcpus: 1, disks: [{ name: 'root', format: 'raw' }], nics: [] }));
const init = await cli(['repo', 'init', repo, '--chunk-size', '256K', '--json']);
if (init.code !== 0) throw new Error(`repo init failed: ${init.stderr}`);
const backup = await cli(['backup', '--repo', repo, '--vm', vmFile, '--disk', `root=${image}`, '--no-after-backup', '--json']);
if (backup.code !== 0) throw new Error(`backup failed: ${backup.stderr}`);
const point = (JSON.parse(backup.stdout) as { restorePoint: string }).restorePoint;

interface Case {
  args: string[];
  exit: number;
  /** The error code of the `--json` document; USAGE for what commander refuses. */
  code: string;
  message: RegExp;
  /** Paths the command was pointed at that must not appear. */
  absent?: string[];
}

/** Runs `c` with --json and checks the refusal, and that nothing on disk changed. */
async function refused(t: Test, what: string, c: Case): Promise<void> {
  const watched = [repo, stateDir];
  const before = watched.map(treeFingerprint);
  const r = await cli([...c.args, '--json']);
  t.equal(r.code, c.exit, `${what}: exit ${c.exit} (stderr: ${r.stderr.trim()})`);
  let doc: { ok?: boolean; error?: { code?: string; message?: string; hint?: string } } = {};
  try {
    doc = JSON.parse(r.stdout) as typeof doc;
  } catch {
    t.fail(`${what}: stdout is one JSON document: ${r.stdout}`);
  }
  t.equal(doc.ok, false, `${what}: ok false`);
  t.equal(doc.error?.code, c.code, `${what}: error code ${c.code}`);
  t.match(doc.error?.message ?? '', c.message, `${what}: the message says what is wrong`);
  if (c.code !== 'USAGE') {
    t.ok(doc.error?.hint, `${what}: a hint says what to do`);
    t.match(r.stderr, `error: ${doc.error?.message ?? ''}`, `${what}: the message on stderr too`);
    t.match(r.stderr, /\n {2}fix: \S/, `${what}: followed by a fix: line`);
  }
  t.notMatch(r.stderr, /internal error|at .*\.js:\d+/, `${what}: no stack trace`);
  t.same(watched.map(treeFingerprint), before, `${what}: the repository and the state directory are unchanged`);
  for (const p of c.absent ?? []) t.notOk(existsSync(p), `${what}: ${p} was not created`);
}

t.test('prune', async (t) => {
  await refused(t, 'no keep rule', {
    args: ['prune', '--repo', repo],
    exit: 2,
    code: 'PRUNE_POLICY',
    message: /no keep rule given: prune would remove every restore point/,
  });
  await refused(t, 'a count that is not a number', {
    args: ['prune', '--repo', repo, '--keep-last', 'seven'],
    exit: 2,
    code: 'PRUNE_POLICY',
    message: /--keep-last needs a whole number, got "seven"/,
  });
  await refused(t, 'a negative count', {
    args: ['prune', '--repo', repo, '--keep-daily=-1'],
    exit: 2,
    code: 'PRUNE_POLICY',
    message: /--keep-daily needs a whole number, got "-1"/,
  });
  await refused(t, 'a fractional count', {
    args: ['prune', '--repo', repo, '--keep-last', '1.5'],
    exit: 2,
    code: 'PRUNE_POLICY',
    message: /got "1\.5"/,
  });
  await refused(t, 'all rules zero', {
    args: ['prune', '--repo', repo, '--keep-last', '0'],
    exit: 2,
    code: 'PRUNE_POLICY',
    message: /no keep rule given/,
  });
  const nowhere = join(work, 'no-repo-here');
  await refused(t, 'a repository that does not exist', {
    args: ['prune', '--repo', nowhere, '--keep-last', '1'],
    exit: 5,
    code: 'REPO_NOT_FOUND',
    message: /no-repo-here/,
    absent: [nowhere],
  });
  await refused(t, 'an unknown option', {
    args: ['prune', '--repo', repo, '--keep-forever'],
    exit: 2,
    code: 'USAGE',
    message: /unknown option '--keep-forever'/,
  });
});

t.test('gc', async (t) => {
  const nowhere = join(work, 'gc-nowhere');
  await refused(t, 'a repository that does not exist', {
    args: ['gc', '--repo', nowhere],
    exit: 5,
    code: 'REPO_NOT_FOUND',
    message: /gc-nowhere/,
    absent: [nowhere],
  });
  await refused(t, 'a directory that is not a repository', {
    args: ['gc', '--repo', stateDir],
    exit: 5,
    code: 'REPO_NOT_FOUND',
    message: /state/,
  });
  await refused(t, 'an argument gc does not take', {
    args: ['gc', '--repo', repo, point],
    exit: 2,
    code: 'USAGE',
    message: /too many arguments/,
  });
});

t.test('restore', async (t) => {
  const to = join(work, 'restored.raw');
  await refused(t, 'an unknown restore point', {
    args: ['restore', 'nosuchpoint', '--repo', repo, '--disk', 'root', '--to', to],
    exit: 5,
    code: 'POINT_NOT_FOUND',
    message: /nosuchpoint/,
    absent: [to],
  });
  await refused(t, 'an unknown disk', {
    args: ['restore', point, '--repo', repo, '--disk', 'sdb', '--to', to],
    exit: 5,
    code: 'DISK_NOT_FOUND',
    message: /has no disk "sdb" \(it has: root\)/,
    absent: [to],
  });
  await refused(t, 'an unknown format', {
    args: ['restore', point, '--repo', repo, '--disk', 'root', '--to', to, '--format', 'vmdk'],
    exit: 2,
    code: 'BAD_FORMAT',
    message: /cannot restore to format "vmdk"/,
    absent: [to],
  });
  await refused(t, 'no --disk', {
    args: ['restore', point, '--repo', repo, '--to', to],
    exit: 2,
    code: 'USAGE',
    message: /required option '--disk <name>' not specified/,
    absent: [to],
  });
  await refused(t, 'a point id with a path in it', {
    args: ['restore', '../../etc/passwd', '--repo', repo, '--disk', 'root', '--to', to],
    exit: 5,
    code: 'POINT_NOT_FOUND',
    message: /no restore point \.\.\/\.\.\/etc\/passwd .*not a restore point id/,
    absent: [to],
  });
});

t.test('verify', async (t) => {
  await refused(t, 'an unknown restore point', {
    args: ['verify', 'nosuchpoint', '--repo', repo],
    exit: 5,
    code: 'POINT_NOT_FOUND',
    message: /nosuchpoint/,
  });
  await refused(t, 'a point id with a path in it', {
    args: ['verify', '../points/x', '--repo', repo],
    exit: 5,
    code: 'POINT_NOT_FOUND',
    message: /not a restore point id/,
  });
});

t.test('stop', async (t) => {
  await refused(t, 'an unknown session', {
    args: ['stop', 'deadbeef'],
    exit: 5,
    code: 'SESSION_NOT_FOUND',
    message: /no recovery session deadbeef/,
  });
  // A record outside the sessions directory must never be read as a session: stop would signal its
  // supervisor (here a process of this test's) and remove its resources.
  const bystander = spawn('sleep', ['300'], { stdio: 'ignore' });
  t.teardown(() => {
    bystander.kill('SIGKILL');
  });
  const decoy = join(work, 'decoy.json');
  const decoyText = JSON.stringify({ id: 'decoy', vm: 'x', state: 'starting', supervisorPid: bystander.pid, resources: { taps: [] } });
  writeFileSync(decoy, decoyText);
  await refused(t, 'a session id with a path in it', {
    args: ['stop', '../../decoy'],
    exit: 2,
    code: 'BAD_SESSION_ID',
    message: /"\.\.\/\.\.\/decoy" is not a session id/,
  });
  t.equal(bystander.exitCode ?? bystander.signalCode, null, 'the process the decoy names was not signalled');
  t.equal(readFileSync(decoy, 'utf8'), decoyText, 'and the decoy is untouched');
});

t.test('repo init', async (t) => {
  const fresh = join(work, 'fresh');
  const cases: [string, string, string, RegExp][] = [
    [
      'not a power of two',
      '3M',
      'BAD_CHUNK_SIZE',
      /chunk size 3145728 is not a power of two between 262144 \(256 KiB\) and 8388608 \(8 MiB\)/,
    ],
    ['below 256K', '128K', 'BAD_CHUNK_SIZE', /chunk size 131072 is not a power of two between/],
    ['above 8M', '16M', 'BAD_CHUNK_SIZE', /chunk size 16777216 is not/],
    ['zero', '0', 'BAD_CHUNK_SIZE', /chunk size 0 is not/],
    ['not a size', 'big', 'BAD_SIZE', /"big" is not a size/],
    ['a negative size', '-1M', 'BAD_SIZE', /"-1M" is not a size/],
  ];
  for (const [what, size, code, message] of cases) {
    await refused(t, `--chunk-size ${size} (${what})`, {
      args: ['repo', 'init', fresh, '--chunk-size', size],
      exit: 2,
      code,
      message,
      absent: [fresh],
    });
  }
  const r = await cli(['repo', 'init', fresh, '--chunk-size', '3M', '--json']);
  t.match((JSON.parse(r.stdout) as { error: { hint: string } }).error.hint, /1M \(the default\)/, 'the hint names the real default');
  await refused(t, 'an existing repository', {
    args: ['repo', 'init', repo],
    exit: 2,
    code: 'REPO_NOT_EMPTY',
    message: /the directory is not empty/,
  });
});

t.test('migrate', async (t) => {
  const to = join(work, 'migrated');
  await refused(t, 'an unknown session', {
    args: ['migrate', 'deadbeef', '--to', to],
    exit: 5,
    code: 'SESSION_NOT_FOUND',
    message: /no recovery session deadbeef/,
    absent: [to],
  });
  await refused(t, 'an unknown format', {
    args: ['migrate', 'deadbeef', '--to', to, '--format', 'vmdk'],
    exit: 2,
    code: 'BAD_FORMAT',
    message: /unknown disk format vmdk/,
    absent: [to],
  });
  await refused(t, 'no --to', {
    args: ['migrate', 'deadbeef'],
    exit: 2,
    code: 'USAGE',
    message: /required option '--to <dir>' not specified/,
  });
  await refused(t, 'a session id with a path in it', {
    args: ['migrate', '../x', '--to', to],
    exit: 2,
    code: 'BAD_SESSION_ID',
    message: /is not a session id/,
    absent: [to],
  });
});

t.test('the point is still whole after all of it', async (t) => {
  const v = await cli(['verify', point, '--repo', repo, '--json']);
  t.equal(v.code, 0, v.stderr);
  t.match(JSON.parse(v.stdout), { ok: true, pointsChecked: 1 });
});

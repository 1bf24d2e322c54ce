/**
 * kill -9 of a live backup in the middle: QEMU is left with our fleecing
 * node, job, export and bitmaps, and the repository with no new point. The
 * next backup removes the leftovers, says so, still uses changed block
 * tracking (the interrupted point's bitmap is folded into the previous
 * one), and succeeds. Also: a running qcow2 disk named raw is refused.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openRepository } from '../../src/repo/index.js';
import { QmpClient } from '../../src/hypervisor/qmp.js';
import { startLiveVm, restoredRoot, type LiveVm } from '../helpers/live-vm.js';
import { cliCommand, cliIn } from '../helpers/cli.js';

const work = await mkdtemp(join(tmpdir(), 'rl-live-kill-'));
const liveDir = join(work, 'live');
await mkdir(liveDir);
const extraEnv = { RESTORELAB_LIVE_DIR: liveDir };
const cli = cliIn(work, extraEnv);
let vm: LiveVm | undefined;
t.teardown(async () => {
  await vm?.stop();
  await rm(work, { recursive: true, force: true });
});

async function ours(socket: string): Promise<{ nodes: string[]; bitmaps: string[]; exports: string[]; jobs: string[] }> {
  const q = await QmpClient.connect(socket);
  try {
    const nodes = await q.execute<{ 'node-name': string; 'dirty-bitmaps'?: { name?: string }[] }[]>('query-named-block-nodes', {
      flat: true,
    });
    return {
      nodes: nodes.map((n) => n['node-name']).filter((n) => n.startsWith('restorelab-')),
      // The killed job's copy-before-write filter also holds an anonymous bitmap (no name).
      bitmaps: nodes
        .flatMap((n) => n['dirty-bitmaps'] ?? [])
        .map((b) => b.name ?? '')
        .filter((n) => n.startsWith('restorelab-')),
      exports: (await q.execute<{ id: string }[]>('query-block-exports')).map((e) => e.id),
      jobs: (await q.execute<{ id: string }[]>('query-jobs')).map((j) => j.id),
    };
  } finally {
    await q.close();
  }
}

t.test('kill -9 mid-backup, then the next backup succeeds', async (t) => {
  vm = await startLiveVm(work, { format: 'qcow2', sizeBytes: 512 * 1024 * 1024 });
  const repo = join(work, 'repo');
  t.equal((await cli(['repo', 'init', repo, '--chunk-size', '256K', '--json'])).code, 0);
  const vmFile = join(work, 'vm.json');
  await writeFile(vmFile, JSON.stringify({ name: 'kill', memoryMiB: 256, vcpus: 1, disks: [{ name: 'root', format: 'qcow2' }], nics: [] }));
  const args = [
    'backup',
    '--repo',
    repo,
    '--vm',
    vmFile,
    '--qmp',
    vm.qmp,
    '--qga',
    vm.qga,
    '--consistency',
    'filesystem',
    '--no-after-backup',
    '--json',
  ];

  const rawFile = join(work, 'raw.json');
  await writeFile(rawFile, JSON.stringify({ name: 'kill', memoryMiB: 256, vcpus: 1, disks: [{ name: 'root', format: 'raw' }], nics: [] }));
  const wrong = await cli(['backup', '--repo', repo, '--vm', rawFile, '--qmp', vm.qmp, '--json']);
  t.equal(wrong.code, 2, 'a running qcow2 disk named raw is refused');
  t.match(wrong.json, { error: { code: 'IMAGE_FORMAT_MISMATCH', message: /qcow2 image in QEMU.*says raw/ } });

  const first = await cli(args);
  t.equal(first.code, 0, first.stderr);
  await vm.sh('dd if=/dev/urandom of=/data bs=64k count=64 2>/dev/null; echo before-kill > /m; sync');

  // Start the second backup and kill it as soon as its NBD export is up (the socket appears in its work dir).
  const { bin, env } = cliCommand(work, extraEnv);
  const child = spawn(process.execPath, [bin, ...args], { env, stdio: 'ignore' });
  const deadline = Date.now() + 120_000;
  let sock: string | undefined;
  while (!sock && Date.now() < deadline && child.exitCode === null) {
    for (const d of await readdir(liveDir)) if (existsSync(join(liveDir, d, 'nbd.sock'))) sock = join(liveDir, d, 'nbd.sock');
    if (!sock) await new Promise((r) => setTimeout(r, 5));
  }
  t.ok(sock, 'the backup got as far as exporting');
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGKILL');
  await exited;

  const left = await ours(vm.qmp);
  t.ok(left.nodes.length + left.exports.length + left.jobs.length > 0, `the killed backup left QEMU state: ${JSON.stringify(left)}`);
  t.equal(left.bitmaps.length, 2, "the previous point's bitmap and the interrupted one's");
  const r = await openRepository(repo);
  t.equal((await r.listPoints({ vm: 'kill' })).length, 1, 'no partial point in the repository');

  const next = await cli(args);
  t.equal(next.code, 0, next.stderr);
  t.match(next.stderr, /removed what an interrupted backup left/, 'the cleanup is reported');
  t.match(next.json, { consistency: 'filesystem', changedBlockTracking: { used: true } });
  const after = await ours(vm.qmp);
  t.same(
    { ...after, bitmaps: after.bitmaps.length },
    { nodes: [], exports: [], jobs: [], bitmaps: 1 },
    'nothing of ours left but the latest bitmap',
  );
  const root = await restoredRoot(r, next.json.restorePoint as string, work);
  t.equal(root.fsck.code, 0, root.fsck.out);
  t.equal(await root.read('/m'), 'before-kill\n', 'the writes before the kill are in the next point (the bitmaps were merged)');
  t.equal((await r.listPoints({ vm: 'kill' })).length, 2);
  t.equal(await vm.status(), 'running');
});

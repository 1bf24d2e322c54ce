/**
 * Live storage migration of a recovered `web` guest (qemu driver, one boot)
 * while a guest process appends numbered lines and syncs after each. After
 * the pivot the repository is moved away (the VM must no longer need it),
 * the writer goes on, then stops; the guest's own record of what it wrote
 * is compared with the file read from the migrated disk, loop-mounted
 * read-only on the host. A target without space is refused first.
 */
import t from 'tap';
import { mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { exec } from '../../src/host/exec.js';
import { labDown, listLabs } from '../../src/lab/lab.js';
import { QemuDriver } from '../../src/hypervisor/qemu.js';
import { QgaClient } from '../../src/hypervisor/qga.js';
import { recover, stopSession } from '../../src/session/recover.js';
import { SessionStore } from '../../src/session/store.js';
import { isMounted } from '../../src/session/runner.js';
import { chunkFingerprint, cli, lastJsonLine, running, waitFor, webRepository } from './fixtures/recovery.js';
import { subnet } from '../helpers/subnets.js';

const dir = mkdtempSync(join(tmpdir(), 'rl-migrate-'));
const stateDir = join(dir, 'state');
const store = new SessionStore(stateDir);
const tag = randomBytes(2).toString('hex');
const small = join(dir, 'small');
const look = join(dir, 'look');
const LOG = '/root/writes.log';

t.teardown(async () => {
  await exec('umount', ['-l', look]);
  await exec('umount', ['-l', small]);
  for (const s of store.list()) await stopSession(stateDir, s.id).catch(() => undefined);
  for (const l of listLabs(stateDir)) await labDown(l.name, { stateDir });
  rmSync(dir, { recursive: true, force: true });
});

async function guestLines(agent: QgaClient): Promise<number[]> {
  const r = await agent.exec('/bin/cat', [LOG], { timeoutMs: 30_000 });
  return r.stdout.split('\n').filter(Boolean).map(Number);
}

t.test('migrate while the guest writes: every write is on the target, the repository is no longer used', async (t) => {
  let { repo } = await webRepository(dir);
  const before = chunkFingerprint(repo);
  const labPath = join(dir, 'lab.json');
  writeFileSync(
    labPath,
    JSON.stringify({
      name: `mg${tag}`,
      networks: [{ name: 'prod', subnet: '192.168.77.0/24', gateway: '192.168.77.1', masquerade: subnet('session/migrate') }],
    }),
  );
  const s = await recover({ repo, vm: 'web', lab: labPath, driver: 'qemu', accel: 'tcg', stateDir });
  const dom = await new QemuDriver({ stateDir }).attach(s.domain);
  const agent = await QgaClient.connect(dom?.agentSocket as string);
  t.teardown(() => agent.close());
  const writer = await agent.execute<{ pid: number }>('guest-exec', {
    path: '/bin/sh',
    arg: ['-c', `i=0; while true; do i=$((i+1)); echo $i >> ${LOG}; sync; sleep 0.05; done`],
  });
  await waitFor('the guest writer to write its first lines', async () => (await guestLines(agent)).length > 0, 60_000);
  t.ok((await guestLines(agent)).length > 0, 'the guest writer is running');

  mkdirSync(small);
  t.equal((await exec('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', small])).code, 0, 'a 1 MiB target');
  const full = await cli(['migrate', s.id, '--to', small, '--json'], stateDir, 60_000);
  t.equal(full.code, 2, 'a target without space is refused');
  t.match(lastJsonLine<{ error: { code: string; message: string } }>(full.stdout).error, {
    code: 'MIGRATE_NO_SPACE',
    message: /bytes free/,
  });
  t.equal(store.get(s.id).state, 'running', 'and the session goes on');

  const target = join(dir, 'prod-storage');
  const m = await cli(['migrate', s.id, '--to', target, '--format', 'raw', '--json'], stateDir, 600_000);
  t.equal(m.code, 0, `migrate exits 0 ${m.stderr}`);
  const migrated = lastJsonLine<{ state: string; disks: Record<string, string> }>(m.stdout);
  t.equal(migrated.state, 'migrated');
  const disk = join(target, 'web-root.raw');
  t.same(migrated.disks, { root: disk });
  const rec = store.get(s.id);
  t.equal(rec.resources.publication, undefined, 'unpublished');
  t.notOk(isMounted(store.workDir(s.id)), 'no publication mount remains');

  // Independence: with the repository gone, the guest keeps running and writing.
  const moved = `${repo}.moved`;
  renameSync(repo, moved);
  const atPivot = (await guestLines(agent)).length;
  // Several more synced writes, however long the loaded host takes for them.
  await waitFor('the guest to write on after the pivot', async () => (await guestLines(agent)).length >= atPivot + 10, 60_000);
  const lines = await guestLines(agent);
  t.ok(lines.length > atPivot, `writes go on after the pivot without the repository (${atPivot} -> ${lines.length} lines)`);
  renameSync(moved, repo);
  repo = join(dir, 'repo');

  // A migrated session survives its supervisor: a new one re-attaches.
  const oldSupervisor = rec.supervisorPid as number;
  process.kill(oldSupervisor, 'SIGKILL');
  await waitFor('the old supervisor to die', () => !running(oldSupervisor), 10_000);
  const listed = await cli(['sessions', '--json'], stateDir, 60_000);
  const again = lastJsonLine<{ sessions: { session: string; state: string }[] }>(listed.stdout).sessions.find((x) => x.session === s.id);
  t.equal(again?.state, 'migrated', 'still migrated after its supervisor was killed');
  const reattached = store.get(s.id).supervisorPid;
  t.ok(reattached && reattached !== oldSupervisor && running(reattached), 'a new supervisor re-attached to the VM');
  await agent.ping();

  await agent.exec('/bin/kill', [String(writer.pid)]);
  await agent.exec('/bin/sync');
  const record = await guestLines(agent);
  t.same(
    record,
    record.map((_, i) => i + 1),
    `the guest's record is 1..${record.length} with no gap`,
  );

  const stop = await cli(['stop', s.id, '--json'], stateDir, 120_000);
  t.equal(stop.code, 0, stop.stderr);
  t.ok(existsSync(disk), 'the migrated disk stays (production storage)');

  mkdirSync(look);
  const parts = JSON.parse((await exec('sfdisk', ['-J', disk])).stdout) as { partitiontable: { partitions: { start: number }[] } };
  const offset = (parts.partitiontable.partitions[0]?.start ?? 2048) * 512;
  const mnt = await exec('mount', ['-o', `ro,loop,noload,offset=${offset}`, '-t', 'ext4', disk, look]);
  t.equal(mnt.code, 0, `loop-mount the target read-only ${mnt.stderr}`);
  const onDisk = readFileSync(join(look, LOG.slice(1)), 'utf8')
    .split('\n')
    .filter(Boolean)
    .map(Number);
  t.same(onDisk, record, `the target disk holds exactly the ${record.length} lines the guest wrote`);
  await exec('umount', [look]);
  t.equal(chunkFingerprint(repo), before, 'the repository chunks are unchanged');
});

/**
 * The live backup's decisions without a VM (the real thing is in
 * live-qmp, live-libvirt, live-freeze and live-kill): when a bitmap is
 * trusted, the chunk mask from dirty extents, quiescing's thaw-on-every-path
 * and refusal rules with a small fake agent, host scripts run without a
 * shell, the CLI's source flags, and the format check of image files.
 */
import t from 'tap';
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bitmapName, bitmapPrefix, changedChunks, judgeBitmap, type JudgeInput } from '../../src/backup/live/cbt.js';
import { quiesced, type GuestFreezer } from '../../src/backup/live/quiesce.js';
import { liveSource } from '../../src/cli/commands/backup.js';
import type { RestorePoint } from '../../src/repo/contract.js';
import type { LiveDisk } from '../../src/backup/live/blockdev.js';
import { exec } from '../../src/host/exec.js';
import { initRepository } from '../../src/repo/repository.js';
import { backupVm } from '../../src/backup/engine.js';

const dir = await mkdtemp(join(tmpdir(), 'rl-live-unit-'));
t.teardown(() => rm(dir, { recursive: true, force: true }));

const disk: LiveDisk = { name: 'root', slot: 0, node: '#block1', format: 'raw', size: 1 << 20, file: '/x.raw' };
const latest: RestorePoint = {
  id: 'P1',
  vm: { name: 'v', memoryMiB: 1, vcpus: 1, disks: [], nics: [] },
  consistency: 'crash',
  time: '2026-01-02T03:04:05.678Z',
  source: 'live',
  disks: [{ name: 'root', size: 1 << 20, indexDigest: 'abc' }],
  stats: { bytesRead: 0, bytesNew: 0, bytesReused: 0, bytesZero: 0, seconds: 0 },
  capture: { kind: 'qmp', consistencyWanted: 'crash', changedBlockTracking: { used: false, reason: '' }, bitmaps: {} },
};
const index = { size: 1 << 20, chunkSize: 1 << 18, digests: [null, null, null, null] };
const name = bitmapName('repo-id-1234', latest.time);
const good = { name, recording: true, busy: false, persistent: false, count: 0, granularity: 65536 };
const input = (over: Partial<JudgeInput>): JudgeInput => ({
  vmName: 'v',
  disk,
  latest,
  bitmaps: [good],
  repoId: 'repo-id-1234',
  readIndex: () => Promise.resolve(index),
  ...over,
});

t.test('bitmap names: ours, per repository, per point', async (t) => {
  t.equal(name, 'restorelab-repoid1234-20260102T030405678Z');
  t.ok(name.startsWith(bitmapPrefix('repo-id-1234')));
  t.not(bitmapName('other', latest.time), name);
});

t.test('a bitmap is used only when every rule holds; otherwise the reason says why', async (t) => {
  t.match(await judgeBitmap(input({})), { use: true, bitmap: name, index });
  t.match(await judgeBitmap(input({ latest: undefined })), { use: false, reason: /no earlier restore point/ });
  t.match(await judgeBitmap(input({ latest: { ...latest, damaged: true } })), { use: false, reason: /P1 is damaged/ });
  const { capture: _c, ...imageBackup } = latest;
  t.match(await judgeBitmap(input({ latest: imageBackup })), { use: false, reason: /was not a live backup/ });
  t.match(await judgeBitmap(input({ bitmaps: [] })), { use: false, reason: /missing on disk root: VM restarted\? \(raw disks/ });
  t.match(
    await judgeBitmap(input({ bitmaps: [{ ...good, name: bitmapName('someone-else', latest.time) }] })),
    { use: false, reason: /missing/ },
    'a bitmap we did not create is never used',
  );
  t.match(await judgeBitmap(input({ bitmaps: [{ ...good, inconsistent: true }] })), { use: false, reason: /inconsistent/ });
  t.match(await judgeBitmap(input({ bitmaps: [{ ...good, busy: true }] })), { use: false, reason: /in use/ });
  t.match(await judgeBitmap(input({ bitmaps: [{ ...good, recording: false }] })), { use: false, reason: /not recording/ });
  t.match(await judgeBitmap(input({ disk: { ...disk, size: 2 << 20 } })), { use: false, reason: /2097152 bytes now, 1048576 in point P1/ });
  t.match(await judgeBitmap(input({ disk: { ...disk, name: 'data' } })), { use: false, reason: /not in the latest point/ });
  t.match(await judgeBitmap(input({ readIndex: () => Promise.reject(new Error('checksum mismatch')) })), {
    use: false,
    reason: /unreadable \(checksum mismatch\)/,
  });
});

t.test('dirty extents mark every chunk they touch', async (t) => {
  const m = changedChunks(
    [
      { offset: 0, length: 1 },
      { offset: 3 * 256 - 1, length: 2 },
      { offset: 9 * 256, length: 0 },
    ],
    256,
    10 * 256 - 5,
  );
  t.same([...m], [1, 0, 1, 1, 0, 0, 0, 0, 0, 0]);
  t.same([...changedChunks([{ offset: 9 * 256, length: 1000 }], 256, 10 * 256)].slice(-1), [1], 'clamped to the last chunk');
});

function fakeAgent(behaviour: { freeze?: 'ok' | 'fail' | 'hang' }): { agent: GuestFreezer; calls: string[] } {
  const calls: string[] = [];
  return {
    calls,
    agent: {
      where: 'fake agent',
      freeze: (ms) => {
        calls.push('freeze');
        if (behaviour.freeze === 'fail') return Promise.reject(new Error('fs busy'));
        if (behaviour.freeze === 'hang')
          return new Promise((_, reject) => setTimeout(() => reject(new Error(`no reply within ${ms} ms`)), 10));
        return Promise.resolve(1);
      },
      thaw: () => {
        calls.push('thaw');
        return Promise.resolve(1);
      },
      close: () => {
        calls.push('close');
      },
    },
  };
}

t.test('quiescing: freeze, snapshot, thaw; thaw on every path', async (t) => {
  const ok = fakeAgent({ freeze: 'ok' });
  const q = await quiesced({ wanted: 'filesystem', freezer: () => Promise.resolve(ok.agent), scriptEnv: {} }, () => {
    ok.calls.push('snapshot');
    return Promise.resolve(7);
  });
  t.match(q, { value: 7, achieved: 'filesystem' });
  t.ok(typeof q.freezeMs === 'number');
  t.same(ok.calls, ['freeze', 'snapshot', 'thaw', 'close']);

  const boom = fakeAgent({ freeze: 'ok' });
  await t.rejects(
    quiesced({ wanted: 'filesystem', freezer: () => Promise.resolve(boom.agent), scriptEnv: {} }, () =>
      Promise.reject(new Error('transaction failed')),
    ),
    /transaction failed/,
  );
  t.same(boom.calls, ['freeze', 'thaw', 'close'], 'a failed snapshot still thaws');

  for (const how of ['fail', 'hang'] as const) {
    const bad = fakeAgent({ freeze: how });
    const c = await quiesced({ wanted: 'filesystem', freezer: () => Promise.resolve(bad.agent), scriptEnv: {} }, () =>
      Promise.resolve('snap'),
    );
    t.match(
      c,
      { value: 'snap', achieved: 'crash', reason: /guest-fsfreeze-freeze failed/ },
      `freeze ${how}: crash-consistent with the reason`,
    );
    t.same(bad.calls, ['freeze', 'thaw', 'close'], `freeze ${how}: thawed anyway`);
    const strict = fakeAgent({ freeze: how });
    let snapped = false;
    await t.rejects(
      quiesced({ wanted: 'filesystem', requireConsistency: true, freezer: () => Promise.resolve(strict.agent), scriptEnv: {} }, () => {
        snapped = true;
        return Promise.resolve(0);
      }),
      { code: 'LIVE_CONSISTENCY_NOT_REACHED' },
    );
    t.notOk(snapped, 'required consistency: no snapshot taken');
  }
  const none = await quiesced({ wanted: 'filesystem', noAgentReason: 'no guest agent socket given (--qga)', scriptEnv: {} }, () =>
    Promise.resolve(1),
  );
  t.match(none, { achieved: 'crash', reason: /no guest agent socket given/ });
  t.match(await quiesced({ wanted: 'crash', scriptEnv: {} }, () => Promise.resolve(2)), { value: 2, achieved: 'crash' });
});

t.test('application: host scripts around the freeze, no shell, failures lower the consistency', async (t) => {
  const log = join(dir, 'log');
  const script = join(dir, 'hook; touch pwned');
  await writeFile(script, `#!/bin/sh\necho "$RESTORELAB_PHASE $RESTORELAB_VM" >> ${log}\n`);
  await chmod(script, 0o755);
  const a = fakeAgent({ freeze: 'ok' });
  const q = await quiesced(
    {
      wanted: 'application',
      hostScripts: { preFreeze: script, postThaw: script },
      freezer: () => Promise.resolve(a.agent),
      scriptEnv: { RESTORELAB_VM: 'v1' },
    },
    () => Promise.resolve(0),
  );
  t.equal(q.achieved, 'application');
  t.equal(await readFile(log, 'utf8'), 'pre-freeze v1\npost-thaw v1\n', 'both scripts ran, with the documented environment');
  await t.rejects(readFile(join(dir, 'pwned')), 'the name was never given to a shell');

  const failing = join(dir, 'fail.sh');
  await writeFile(failing, '#!/bin/sh\necho cannot flush >&2\nexit 3\n');
  await chmod(failing, 0o755);
  const b = fakeAgent({ freeze: 'ok' });
  const warnings: string[] = [];
  const q2 = await quiesced(
    {
      wanted: 'application',
      hostScripts: { preFreeze: failing, postThaw: failing },
      freezer: () => Promise.resolve(b.agent),
      scriptEnv: {},
      onWarning: (m) => warnings.push(m),
    },
    () => Promise.resolve(0),
  );
  t.match(q2, { achieved: 'filesystem', reason: /pre-freeze script .* failed \(exit 3\): cannot flush/ });
  t.match(warnings, [/post-thaw script .* failed/]);
});

t.test('CLI source flags', async (t) => {
  const base = { disk: [] as string[], libvirtUri: 'qemu:///system' };
  t.equal(liveSource(base), undefined, 'no live flag: an image backup');
  t.match(liveSource({ ...base, qmp: 'q.sock', qga: 'g.sock' }), { kind: 'qmp', qmp: /\/q\.sock$/, qga: /\/g\.sock$/ });
  t.same(liveSource({ ...base, domain: 'web' }), { kind: 'libvirt', domain: 'web', uri: 'qemu:///system' });
  t.throws(() => liveSource({ ...base, qmp: 'q', domain: 'd' }), { code: 'BACKUP_SOURCE_CONFLICT' });
  t.throws(() => liveSource({ ...base, qmp: 'q', disk: ['x.raw'] }), { code: 'BACKUP_SOURCE_CONFLICT', message: /--disk cannot/ });
  t.throws(() => liveSource({ ...base, qga: 'g' }), { code: 'BACKUP_SOURCE_CONFLICT', message: /--qga only apply/ });
  t.throws(() => liveSource({ ...base, domain: 'd', qga: 'g' }), { code: 'BACKUP_SOURCE_CONFLICT' });
});

t.test('an image file: a qcow2 named raw in the definition is refused, nothing is stored', async (t) => {
  const img = join(dir, 'disk.img');
  const r = await exec('qemu-img', ['create', '-q', '-f', 'qcow2', img, '8M']);
  t.equal(r.code, 0, r.stderr);
  const repo = await initRepository(join(dir, 'repo'));
  const vm = { name: 'fmt', memoryMiB: 64, vcpus: 1, disks: [{ name: 'root', format: 'raw' as const }], nics: [] };
  await t.rejects(backupVm({ repo, vm, disks: { root: img } }), {
    code: 'IMAGE_FORMAT_MISMATCH',
    message: /is a qcow2 image, but the VM definition says raw/,
    hint: /"format": "qcow2"/,
  });
  t.same(await repo.listPoints(), [], "no point became the VM's latest");
  const ok = await backupVm({ repo, vm: { ...vm, disks: [{ name: 'root', format: 'qcow2' as const }] }, disks: { root: img } });
  t.equal(ok.disks[0]?.size, 8 * 1024 * 1024, 'named right, it backs up');
});

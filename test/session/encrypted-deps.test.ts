// The layers a recovery session and a SureBackup run stand on, over an
// encrypted repository, without booting anything: planRecovery, the lab
// backend's repository reader and a real FUSE publication made through
// depsWithKey (what the supervisor uses, with the key file recorded by
// recover) open it, and so does the shared publisher serving an NBD
// publication; the same without a key file fail with KEY_REQUIRED.
// The booted path is test/session/recover-encrypted.test.ts.
import t from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exec } from '../../src/host/exec.js';
import { projectPath } from '../../src/paths.js';
import { initRepository } from '../../src/repo/repository.js';
import { backupVm } from '../../src/backup/engine.js';
import { loadVmDefinition } from '../../src/vm/definition.js';
import { depsWithKey, realDeps } from '../../src/session/deps.js';
import { planRecovery } from '../../src/session/plan.js';
import { createLabBackend } from '../../src/surebackup/backend.js';
import { RestorelabError } from '../../src/errors.js';
import { guestImage } from '../helpers/guests.js';

const dir = mkdtempSync(join(tmpdir(), 'rl-enc-deps-'));
const stateDir = join(dir, 'state');
const keyFile = join(dir, 'repo.key');
const repo = join(dir, 'repo');
const repository = await initRepository(repo, { keyFile });
const image = await guestImage('web');
const vm = loadVmDefinition(projectPath('lab-templates', 'vms', 'web.json'));
const point = await backupVm({ repo: repository, vm, disks: { root: image }, source: image });
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

async function code(p: Promise<unknown>): Promise<string | undefined> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  return e instanceof RestorelabError ? e.code : String(e);
}

t.test('planRecovery opens the encrypted repository with the key file, and not without', async (t) => {
  const req = { repo, vm: 'web', driver: 'qemu' as const, stateDir, keyFile };
  const plan = await planRecovery(req, depsWithKey(keyFile));
  t.equal(plan.point.id, point.id);
  t.equal(plan.vm.name, 'web');
  t.equal(await code(planRecovery(req, realDeps)), 'KEY_REQUIRED');
});

t.test('the lab backend reads points with its keyFile option, and not without', async (t) => {
  const backend = createLabBackend({ repo, stateDir, driver: 'qemu', keyFile });
  try {
    t.same(
      (await (await backend.reader()).listPoints()).map((p) => p.id),
      [point.id],
    );
  } finally {
    await backend.close();
  }
  const bare = createLabBackend({ repo, stateDir, driver: 'qemu' });
  try {
    t.equal(await code(bare.reader()), 'KEY_REQUIRED');
  } finally {
    await bare.close();
  }
});

t.test('a publication through depsWithKey serves the image bytes over FUSE', async (t) => {
  const deps = depsWithKey(keyFile);
  const pub = await deps.startPublication({
    repo,
    point: point.id,
    stateDir,
    fuseDir: join(dir, 'fuse'),
    readOnly: true,
    owner: { kind: 'session', id: 'enc-deps' },
  });
  try {
    const raw = Object.values(pub.disks)[0] ?? '/nonexistent';
    t.equal((await exec('cmp', [raw, image])).code, 0, 'the published disk is the image');
  } finally {
    await pub.close();
  }
  t.equal(
    await code(realDeps.startPublication({ repo, point: point.id, stateDir, fuseDir: join(dir, 'fuse2'), readOnly: true })),
    'KEY_REQUIRED',
  );
});

t.test("an NBD publication through depsWithKey: the shared publisher opens the repository with the session's key file", async (t) => {
  const deps = depsWithKey(keyFile);
  const pub = await deps.startPublication({ repo, point: point.id, stateDir, nbd: {}, owner: { kind: 'session', id: 'enc-nbd' } });
  try {
    t.ok(pub.lost, 'served by the shared publisher (its lease can be lost)');
    const cmp = await exec('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', pub.nbd?.root ?? '', image], { timeoutMs: 120_000 });
    t.equal(cmp.code, 0, `the export is the image: ${cmp.stdout.trim()} ${cmp.stderr}`);
  } finally {
    await pub.close({ discard: true });
  }
  t.equal(
    await code(realDeps.startPublication({ repo, point: point.id, stateDir, nbd: {}, owner: { kind: 'session', id: 'enc-bare' } })),
    'KEY_REQUIRED',
    'without the key file the publisher refuses it',
  );
});

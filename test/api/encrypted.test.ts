// An encrypted configured repository over the API, for real: the server
// opens it with `repositoryKeyFile` (here RESTORELAB_KEY_FILE), so its points
// are listed, a point restores to the bytes of the `web` guest image, an API
// backup lands in it, and file-level restore mounts the point (the holder
// process opens the repository with the same key file) and lists /etc.
// Without the key file every route answers 400 KEY_REQUIRED, with another
// key 400 KEY_WRONG, as the CLI does without or with a wrong --key-file.
// The CLI resolves the key file the same way (src/config/key-file.ts).
import t from 'tap';
import request from 'supertest';
import { createHash, randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { createReadStream, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { guestImage } from '../helpers/guests.js';
import { testApi, type TestApi } from '../helpers/api.js';
import { projectPath } from '../../src/paths.js';
import { initRepository } from '../../src/repo/repository.js';
import { backupVm } from '../../src/backup/engine.js';
import { loadVmDefinition } from '../../src/vm/definition.js';
import { loadConfig } from '../../src/config/config.js';
import { listSessions } from '../../src/flr/session.js';
import { releaseJournal } from '../../src/flr/mount.js';

const work = mkdtempSync(join(tmpdir(), 'rl-api-enc-'));
const image = await guestImage('web');
const keyFile = join(work, 'repo.key');
const repoDir = join(work, 'repo');
const repository = await initRepository(repoDir, { keyFile });
const vm = loadVmDefinition(projectPath('lab-templates', 'vms', 'web.json'));
const point = await backupVm({ repo: repository, vm, disks: { [vm.disks[0]?.name ?? 'root']: image }, source: image });
const wrongKey = join(work, 'other.key');
writeFileSync(wrongKey, randomBytes(32).toString('hex') + '\n', { mode: 0o600 });

const apis: TestApi[] = [];
async function api(env: Record<string, string>): Promise<TestApi> {
  const a = await testApi({
    env: { RESTORELAB_REPO: repoDir, ...env },
    limits: { sourceRoots: [dirname(image), work], restoreRoots: [work] },
  });
  apis.push(a);
  return a;
}

function mountPoints(under: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => l.split(' ')[4] ?? '')
    .filter((p) => p.startsWith(under));
}

t.teardown(async () => {
  for (const a of apis) {
    for (const s of listSessions(a.config.stateDir)) await releaseJournal(s).catch(() => undefined);
    for (const m of mountPoints(a.home).reverse()) spawnSync('umount', ['-l', m]);
    await a.close();
  }
  rmSync(work, { recursive: true, force: true });
});

async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const c of createReadStream(path)) h.update(c as Buffer);
  return h.digest('hex');
}

t.test('the fixture repository is encrypted', async (t) => {
  t.equal(repository.config.encryption, 'aes-256-gcm');
});

t.test('repositoryKeyFile: RESTORELAB_KEY_FILE overrides it, a relative path is resolved against RESTORELAB_HOME', async (t) => {
  t.equal(loadConfig({ env: { RESTORELAB_HOME: work } }).repositoryKeyFile, undefined, 'no key file by default');
  t.equal(loadConfig({ env: { RESTORELAB_HOME: work, RESTORELAB_KEY_FILE: 'repo.key' } }).repositoryKeyFile, keyFile);
  t.equal(loadConfig({ env: { RESTORELAB_HOME: work, RESTORELAB_KEY_FILE: keyFile } }).repositoryKeyFile, keyFile);
});

t.test('with the key file: points listed, restore gives the image bytes, an API backup lands in it', async (t) => {
  const a = await api({ RESTORELAB_KEY_FILE: keyFile });
  const list = await request(a.app).get('/api/v1/points').set('authorization', a.auth.viewer).expect(200);
  t.same(
    list.body.points.map((p: { id: string }) => p.id),
    [point.id],
  );
  const repos = await request(a.app).get('/api/v1/repositories').set('authorization', a.auth.viewer).expect(200);
  t.match(repos.body.repositories[0], { name: 'default', format: { encryption: 'aes-256-gcm' }, counts: { points: 1 } });

  const to = join(work, 'restored.raw');
  const res = await request(a.app)
    .post(`/api/v1/points/${point.id}/restore`)
    .set('authorization', a.auth.operator)
    .send({ to })
    .expect(202);
  const op = await a.ctx.operations.wait(res.body.id as string);
  t.equal(op?.state, 'succeeded', JSON.stringify(op?.error));
  t.equal(await sha256File(to), await sha256File(image), 'the bytes of the image that was backed up');
  rmSync(to);

  const bk = await request(a.app)
    .post('/api/v1/backups')
    .set('authorization', a.auth.operator)
    .send({ vm: 'web', disks: { root: image } })
    .expect(202);
  const bop = await a.ctx.operations.wait(bk.body.id as string);
  t.equal(bop?.state, 'succeeded', JSON.stringify(bop?.error));
  const after = await request(a.app).get('/api/v1/points').set('authorization', a.auth.viewer).expect(200);
  t.equal(after.body.points.length, 2, 'the new point is in the encrypted repository');
  // The new point is only readable with the key: it was written encrypted.
  const second = after.body.points[1].id as string;
  const again = await request(a.app)
    .post(`/api/v1/points/${second}/restore`)
    .set('authorization', a.auth.operator)
    .send({ to })
    .expect(202);
  const aop = await a.ctx.operations.wait(again.body.id as string);
  t.equal(aop?.state, 'succeeded', JSON.stringify(aop?.error));
  t.equal(await sha256File(to), await sha256File(image), 'the API backup restores to the same bytes');
});

t.test('with the key file: file-level restore mounts the point and lists /etc', async (t) => {
  const a = await api({ RESTORELAB_KEY_FILE: keyFile });
  const made = await request(a.app).post('/api/v1/file-restore').set('authorization', a.auth.operator).send({ point: point.id });
  t.equal(made.status, 201, JSON.stringify(made.body));
  const id = made.body.id as string;
  t.match(made.body, { point: point.id, repository: repoDir, complete: true, mounts: [{ disk: 'root', fstype: 'ext4' }] });
  const etc = await request(a.app).get(`/api/v1/file-restore/${id}/entries?path=/etc`).set('authorization', a.auth.operator).expect(200);
  t.match(
    etc.body.entries.find((e: { name: string }) => e.name === 'hostname'),
    { path: '/etc/hostname', type: 'file', size: 4 },
  );
  await request(a.app).delete(`/api/v1/file-restore/${id}`).set('authorization', a.auth.operator).expect(200);
  t.same(mountPoints(a.home), [], 'nothing left mounted');
});

t.test('without the key file: 400 KEY_REQUIRED; with another key: 400 KEY_WRONG', async (t) => {
  const none = await api({});
  const r = await request(none.app).get('/api/v1/points').set('authorization', none.auth.viewer).expect(400);
  t.equal(r.body.error.code, 'KEY_REQUIRED');
  t.match(r.body.error.message, /is encrypted: its key is needed/);
  const fr = await request(none.app)
    .post('/api/v1/file-restore')
    .set('authorization', none.auth.operator)
    .send({ point: point.id })
    .expect(400);
  t.equal(fr.body.error.code, 'KEY_REQUIRED', 'nothing is mounted without the key');
  t.same(listSessions(none.config.stateDir), []);
  const repos = await request(none.app).get('/api/v1/repositories').set('authorization', none.auth.viewer).expect(200);
  t.match(repos.body.repositories[0], { name: 'default', error: { code: 'KEY_REQUIRED' } });

  const wrong = await api({ RESTORELAB_KEY_FILE: wrongKey });
  const w = await request(wrong.app).get('/api/v1/points').set('authorization', wrong.auth.viewer).expect(400);
  t.equal(w.body.error.code, 'KEY_WRONG');
  const wr = await request(wrong.app)
    .post(`/api/v1/points/${point.id}/restore`)
    .set('authorization', wrong.auth.operator)
    .send({ to: join(work, 'never.raw') })
    .expect(400);
  t.equal(wr.body.error.code, 'KEY_WRONG', 'refused before any operation starts');
});

t.test(
  'the CLI: with --key-file absent, RESTORELAB_KEY_FILE opens the configured repository and a --repo one; another repository is refused with KEY_WRONG',
  async (t) => {
    const env = {
      ...(Object.fromEntries(Object.entries(process.env).filter(([k, v]) => !k.startsWith('RESTORELAB_') && v !== undefined)) as Record<
        string,
        string
      >),
      RESTORELAB_HOME: work,
      RESTORELAB_STATE_DIR: join(work, 'cli-state'),
      RESTORELAB_REPO: repoDir,
      RESTORELAB_KEY_FILE: keyFile,
    };
    const cli = (args: string[], e: Record<string, string>): { status: number | null; out: string } => {
      const r = spawnSync(process.execPath, [projectPath('bin', 'restorelab.js'), ...args], { env: e, encoding: 'utf8' });
      return { status: r.status, out: r.stdout + r.stderr };
    };
    const ok = cli(['points'], env);
    t.equal(ok.status, 0, ok.out);
    t.match(ok.out, point.id);
    const explicit = cli(['points', '--repo', repoDir], env);
    t.equal(explicit.status, 0, `the key file is resolved the same way for a repository named with --repo: ${explicit.out}`);
    t.match(explicit.out, point.id);
    const otherDir = join(work, 'other-repo');
    await initRepository(otherDir, { keyFile: join(work, 'other-repo.key') });
    const other = cli(['points', '--repo', otherDir], env);
    t.not(other.status, 0, 'a key file that does not fit is refused by the key check');
    t.match(other.out, /KEY_WRONG|does not match repository/);
    t.equal(cli(['points', '--repo', repoDir, '--key-file', keyFile], env).status, 0, '--key-file still works');
    const { RESTORELAB_KEY_FILE: _unused, ...noKey } = env;
    const missing = cli(['points'], noKey);
    t.not(missing.status, 0);
    t.match(missing.out, /is encrypted: its key is needed/);
  },
);

// The scan over the API, in process: POST /points/:id/scan (operator) with
// the rule source in the body, a 202 operation whose result is `scan --json`'s
// document, and GET /points carrying each point's scan status. A rule set
// that does not compile is a 400 before anything is mounted; a viewer may
// not scan; an unknown body field is refused by the schema. Real YARA over
// real read-only mounts of a backed-up MBR/ext4 disk.
import t from 'tap';
import request from 'supertest';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initRepository } from '../../src/repo/repository.js';
import { backupVm } from '../../src/backup/engine.js';
import { listSessions } from '../../src/flr/session.js';
import { releaseJournal } from '../../src/flr/mount.js';
import { buildMbrDisk } from '../flr/fixtures/disks.js';
import { testApi } from '../helpers/api.js';

const work = mkdtempSync(join(tmpdir(), 'rl-api-scan-'));
const repoDir = join(work, 'repo');
const repo = await initRepository(repoDir);
const disk = buildMbrDisk(work);
const vm = { name: 'fileserver', memoryMiB: 256, vcpus: 1, disks: [{ name: 'sda', format: 'raw' as const }], nics: [] };
const first = await backupVm({ repo, vm, disks: { sda: disk.path } });
const second = await backupVm({ repo, vm, disks: { sda: disk.path } });
const api = await testApi({ env: { RESTORELAB_REPO: repoDir } });
const RULES = 'rule Readme { strings: $a = "inside the backup only" condition: $a }\n';

function leftovers(): { mounts: string[]; loops: string[]; sessions: number } {
  const mounts = readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => l.split(' ')[4] ?? '')
    .filter((p) => p.startsWith(api.home));
  const loops = spawnSync('losetup', ['-a'], { encoding: 'utf8' })
    .stdout.split('\n')
    .filter((l) => l.includes(api.home));
  return { mounts, loops, sessions: listSessions(api.config.stateDir).length };
}

t.teardown(async () => {
  for (const s of listSessions(api.config.stateDir)) await releaseJournal(s).catch(() => undefined);
  await api.close();
  rmSync(api.home, { recursive: true, force: true });
  rmSync(work, { recursive: true, force: true });
});

async function finished(id: string): Promise<{ state: string; result?: Record<string, unknown>; error?: { code: string } }> {
  const deadline = Date.now() + 300_000;
  for (;;) {
    const r = await request(api.app).get(`/api/v1/operations/${id}`).set('authorization', api.auth.viewer).expect(200);
    if (r.body.state !== 'running' && r.body.state !== 'queued') return r.body as { state: string };
    if (Date.now() > deadline) throw new Error(`operation ${id} still ${r.body.state}`);
    await new Promise((res) => setTimeout(res, 200));
  }
}

t.test('POST /points/:id/scan scans the point and GET /points shows the status', async (t) => {
  const before = await request(api.app).get('/api/v1/points').set('authorization', api.auth.viewer).expect(200);
  t.same(
    before.body.points.map((p: { scan: string }) => p.scan),
    ['unscanned', 'unscanned'],
  );

  await request(api.app).post(`/api/v1/points/${first.id}/scan`).set('authorization', api.auth.viewer).send({ rules: RULES }).expect(403);
  const extra = await request(api.app)
    .post(`/api/v1/points/${first.id}/scan`)
    .set('authorization', api.auth.operator)
    .send({ rules: RULES, path: '/etc/x.yar' })
    .expect(400);
  t.equal(extra.body.error.code, 'VALIDATION_FAILED', 'a rule file path is not accepted: only rule source');

  const op = await request(api.app)
    .post(`/api/v1/points/${first.id}/scan`)
    .set('authorization', api.auth.operator)
    .send({ rules: RULES })
    .expect(202);
  const done = await finished(op.body.id as string);
  t.equal(done.state, 'succeeded', JSON.stringify(done.error));
  t.match(done.result, {
    point: first.id,
    verdict: 'infected',
    files: { scanned: 4, cached: 0 },
    matches: [
      { rule: 'Readme', disk: 'sda', partition: 1, path: '/data/docs/readme.txt', sha256: disk.files.sha256['/data/docs/readme.txt'] },
    ],
  });
  t.same(leftovers(), { mounts: [], loops: [], sessions: 0 });

  const after = await request(api.app).get('/api/v1/points').set('authorization', api.auth.viewer).expect(200);
  t.same(
    after.body.points.map((p: { id: string; scan: string }) => [p.id, p.scan]),
    [
      [first.id, 'infected'],
      [second.id, 'suspect'],
    ],
  );
});

t.test("a rule set that does not compile is a 400 with yarac's reason; nothing is mounted", async (t) => {
  const r = await request(api.app)
    .post(`/api/v1/points/${second.id}/scan`)
    .set('authorization', api.auth.operator)
    .send({ rules: 'rule X { condition: $nope }' })
    .expect(400);
  t.equal(r.body.error.code, 'YARA_RULES_INVALID');
  t.match(r.body.error.message, /\$nope/);
  t.match(r.body.error.message, /^the YARA rules sent do not compile: error: rule "X" in <rules>\(1\)/);
  t.notOk(r.body.error.message.includes(api.config.stateDir), "the server's scratch path is not named");
  t.same(leftovers(), { mounts: [], loops: [], sessions: 0 });
});

t.test('API rules may not include host files or import unsafe modules: a 400 before anything is compiled or mounted', async (t) => {
  const inc = await request(api.app)
    .post(`/api/v1/points/${second.id}/scan`)
    .set('authorization', api.auth.operator)
    .send({ rules: `include "/etc/passwd"\n${RULES}` })
    .expect(400);
  t.equal(inc.body.error.code, 'YARA_RULES_INVALID');
  t.match(inc.body.error.message, /include is not allowed/);
  t.notMatch(JSON.stringify(inc.body), /root:/, 'nothing of the host file comes back');
  const imp = await request(api.app)
    .post(`/api/v1/points/${second.id}/scan`)
    .set('authorization', api.auth.operator)
    .send({ rules: `import "console"\n${RULES}` })
    .expect(400);
  t.equal(imp.body.error.code, 'YARA_RULES_INVALID');
  t.match(imp.body.error.message, /import "console" is not allowed/);
  const ok = await request(api.app)
    .post(`/api/v1/points/${second.id}/scan`)
    .set('authorization', api.auth.operator)
    .send({ rules: `import "pe"\nimport "math"\n${RULES}` })
    .expect(202);
  t.equal((await finished(ok.body.id as string)).state, 'succeeded', 'an allowed import compiles and scans');
  t.same(leftovers(), { mounts: [], loops: [], sessions: 0 });
});

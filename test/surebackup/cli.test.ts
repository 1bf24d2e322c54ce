// `surebackup run` as scripts call it: every bad input is a clear error before anything boots.
import t from 'tap';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { exec } from '../../src/host/exec.js';
import { projectPath } from '../../src/paths.js';
import { shortDir, guestRepository, labFile, leftovers } from './fixtures/guest-lab.js';
import { subnet } from '../helpers/subnets.js';

t.test('bad input to surebackup run: schema, cron, script, point, role', async (t) => {
  const dir = shortDir(t);
  const stateDir = join(dir, 'state');
  const { repo } = await guestRepository(dir, ['web']);
  const lab = labFile(dir, `sbx${process.pid % 10000}`, subnet('surebackup/cli'));
  const cases: [string, Record<string, unknown>, string, number][] = [
    ['schema', { name: 'x', lab, verify: { vms: [] } }, 'SCHEMA_INVALID', 2],
    ['cron', { name: 'x', lab, verify: { vms: ['web'] }, schedule: '0 25 * * *' }, 'BAD_SCHEDULE', 2],
    ['script', { name: 'x', lab, verify: { vms: ['web'], tests: [{ kind: 'script', path: 'missing.sh' }] } }, 'SCRIPT_NOT_FOUND', 2],
    ['point', { name: 'x', lab, verify: { vms: ['web', 'mailserver'], role: 'web' } }, 'NO_RESTORE_POINT', 5],
    ['old point', { name: 'x', lab, verify: { vms: ['web'], role: 'web' }, point: '2001-01-01T00:00:00Z' }, 'NO_RESTORE_POINT', 5],
    ['role', { name: 'x', lab, verify: { vms: ['web'], role: 'fileserver' } }, 'ROLE_WITHOUT_TESTS', 2],
  ];
  for (const [what, job, code, exit] of cases) {
    const file = join(dir, `${what.replace(' ', '-')}.json`);
    writeFileSync(file, JSON.stringify(job));
    const r = await exec(process.execPath, [projectPath('bin', 'restorelab.js'), 'surebackup', 'run', file, '--repo', repo, '--json'], {
      timeoutMs: 60_000,
      env: { ...process.env, RESTORELAB_STATE_DIR: stateDir },
    });
    t.equal(r.code, exit, `${what}: exit ${exit}`);
    const out = JSON.parse(r.stdout) as { ok: boolean; error: { code: string; message: string; hint?: string } };
    t.equal(out.error.code, code, `${what}: ${out.error.message}`);
    t.ok(out.error.hint, `${what}: a hint says what to do`);
  }
  t.same(await leftovers(stateDir), [], 'nothing booted');
  t.notOk(existsSync(join(stateDir, 'labs', `sbx${process.pid % 10000}.json`)), 'no lab made');
});

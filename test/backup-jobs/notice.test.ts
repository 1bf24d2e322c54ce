// A backup job run by the CLI hands its linked SureBackup jobs to the server over the notice socket:
// the server's scheduler runs the ones it knows (trigger after-backup), reports the others, refuses bad requests.
import t from 'tap';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { History } from '../../src/surebackup/history.js';
import { JobGate } from '../../src/surebackup/gate.js';
import { Scheduler } from '../../src/scheduler/scheduler.js';
import type { RunJobFn } from '../../src/scheduler/run.js';
import { sendRunNotice, serveBackupNotices } from '../../src/scheduler/notice.js';
import { rawRequest } from '../helpers/unix-socket.js';

const quiet = { info: (): void => undefined, warn: (): void => undefined };

t.test('run request: known jobs start, unknown ones are named, bad requests refused', async (t) => {
  // A short home: the socket path must stay under 108 bytes.
  const dir = mkdtempSync('/tmp/rljobs-');
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const state = join(dir, 'state');
  mkdirSync(state, { mode: 0o700 });
  const jobs = join(dir, 'jobs');
  mkdirSync(jobs);
  writeFileSync(join(jobs, 'verify.json'), JSON.stringify({ name: 'verify', lab: 'l.json', verify: { vms: 'all' } }));
  const history = await History.open(join(dir, 'c.db'));
  const ran: string[] = [];
  const run: RunJobFn = async (s, ctx) => {
    ran.push(`${s.name}:${ctx.trigger}`);
    return { result: 'success', vms: [], labKept: false };
  };
  const sch = await new Scheduler({ jobsDir: jobs, history, run, gate: new JobGate(2, 4096) }).start();
  t.teardown(async () => {
    await sch.stop();
    history.close();
  });

  t.equal(await sendRunNotice(state, { jobs: ['verify'], by: 'test' }), undefined, 'no server: undefined, the CLI runs them itself');
  const srv = await serveBackupNotices({
    stateDir: state,
    jobsDir: jobs,
    notify: async () => [],
    log: quiet,
    run: (job) => (sch.jobs.some((j) => j.name === job) ? sch.trigger(job, 'after-backup') : undefined),
  });
  t.teardown(() => srv?.close());
  const r = await sendRunNotice(state, { jobs: ['verify', 'gone'], by: 'backup job daily run 1' });
  t.equal(r?.pid, process.pid);
  t.same(
    r?.triggered.map((x) => [x.job, x.status]),
    [
      ['verify', 'running'],
      ['gone', 'not-found'],
    ],
  );
  t.equal((await history.run(r!.triggered[0]!.run!))!.trigger, 'after-backup');
  t.same(ran, ['verify:after-backup']);

  for (const [what, line, msg] of [
    ['no jobs', '{"run":{"jobs":[],"by":"x"}}\n', /run.jobs must be a list of job names/],
    ['a path as job', '{"run":{"jobs":["../x"],"by":"x"}}\n', /run.jobs/],
    ['no by', '{"run":{"jobs":["verify"]}}\n', /run.by/],
  ] as const) {
    const ans = JSON.parse(await rawRequest(srv!.path, line)) as { ok: boolean; error: string };
    t.equal(ans.ok, false, what);
    t.match(ans.error, msg, what);
  }
  t.same(ran, ['verify:after-backup'], 'refused requests ran nothing');

  const noRun = await serveBackupNotices({ stateDir: join(dir, 'other'), jobsDir: jobs, notify: async () => [], log: quiet }).catch(
    () => undefined,
  );
  t.equal(noRun, undefined, 'a state directory that does not exist serves nothing');
});

// Unit test of the SureBackup runner's scan gate with a small fake backend
// (the real one, with YARA, a lab and a boot, is test/scan/gate.test.ts):
// an infected group VM is not booted and fails the VMs after it; with
// allowInfected the run's lab is asked for with no uplink and the VM's scan
// test is a warning; a clean point passes; a backend that cannot scan is
// refused before anything boots.
import t from 'tap';
import { runJob, type Job, type LabBackend, type PointScanVerdict } from '../../src/surebackup/runner.js';
import type { RecoveredVm, TestRunner } from '../../src/verify/contract.js';

function fake(infected: string[]) {
  const log: string[] = [];
  const backend: LabBackend = {
    labUp: async (_lab, _signal, opts = {}) => {
      log.push(`lab-up uplink=${opts.uplink !== false}`);
      return { netns: 'fake' };
    },
    labDown: async () => {
      log.push('lab-down');
    },
    listPoints: async (vm) => [{ id: `${vm}-p1`, time: '2026-01-01T00:00:00Z' }],
    listVms: async () => ['web'],
    recover: async (vm) => {
      log.push(`recover ${vm}`);
      const h: RecoveredVm = {
        ip: '192.168.77.10',
        masqIp: '10.0.0.10',
        netns: 'fake',
        screendump: async () => '/dev/null',
        stop: async () => undefined,
      };
      return h;
    },
    scan: async (vm, point, rules): Promise<PointScanVerdict> => {
      log.push(`scan ${vm} ${point} ${rules}`);
      return infected.includes(vm)
        ? {
            verdict: 'infected',
            matches: [{ rule: 'Dropper', disk: 'root', partition: 1, path: '/tmp/x' }],
            files: { scanned: 10, cached: 0 },
          }
        : { verdict: 'clean', matches: [], files: { scanned: 3, cached: 7 } };
    },
  };
  const runTest: TestRunner = async (spec) => ({ name: spec.kind, kind: spec.kind, result: 'passed', seconds: 0, detail: '' });
  return { backend, runTest, log };
}

const job = (scan: Job['scan']): Job => ({
  name: 'j',
  lab: {},
  point: 'latest',
  concurrency: 1,
  applicationGroup: [{ name: 'db', tests: [{ kind: 'heartbeat' }] }],
  verify: { vms: ['web'], tests: [{ kind: 'heartbeat' }] },
  ...(scan ? { scan } : {}),
});

t.test('an infected group VM is refused and fails the VMs that depend on it', async (t) => {
  const f = fake(['db']);
  const r = await runJob(job({ rules: '/r.yar' }), f.backend, f.runTest);
  t.equal(r.result, 'failed');
  t.match(r.vms, [
    {
      name: 'db',
      result: 'failed',
      tests: [{ name: 'scan', result: 'failed', detail: /INFECTED \(Dropper in root p1 \/tmp\/x\); not booted/ }],
    },
    { name: 'web', result: 'dependency-failed' },
  ]);
  t.notOk(
    f.log.some((l) => l.startsWith('recover')),
    'nothing was booted',
  );
  t.same(
    f.log.filter((l) => l.startsWith('scan')),
    ['scan db db-p1 /r.yar', 'scan web web-p1 /r.yar'],
    'every point scanned before the lab comes up',
  );
});

t.test('allowInfected: the lab has no uplink, the scan test is a warning, the tests run', async (t) => {
  const f = fake(['web']);
  const r = await runJob(job({ rules: '/r.yar', allowInfected: true }), f.backend, f.runTest);
  t.equal(r.result, 'warning');
  t.ok(f.log.includes('lab-up uplink=false'), "the run's lab comes up without an uplink");
  t.match(r.vms, [
    {
      name: 'db',
      result: 'success',
      tests: [{ name: 'scan', result: 'passed', detail: 'clean: 3 file(s) scanned, 7 from the cache' }, { name: 'heartbeat' }],
    },
    {
      name: 'web',
      result: 'warning',
      tests: [
        { name: 'scan', result: 'warning', detail: /NO uplink/ },
        { name: 'heartbeat', result: 'passed' },
      ],
    },
  ]);
});

t.test('all clean: a normal lab; without scan: no scan at all', async (t) => {
  const f = fake([]);
  t.equal((await runJob(job({ rules: '/r.yar' }), f.backend, f.runTest)).result, 'success');
  t.ok(f.log.includes('lab-up uplink=true'));
  const g = fake(['web']);
  t.equal((await runJob(job(undefined), g.backend, g.runTest)).result, 'success');
  t.notOk(g.log.some((l) => l.startsWith('scan')));
});

t.test('a backend that cannot scan refuses a job with a scan gate before anything boots', async (t) => {
  const f = fake([]);
  delete f.backend.scan;
  await t.rejects(runJob(job({ rules: '/r.yar' }), f.backend, f.runTest), { code: 'SCAN_UNSUPPORTED' });
  t.same(f.log, []);
});

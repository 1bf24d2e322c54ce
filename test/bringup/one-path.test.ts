/**
 * The one bring-up path, as a unit (a fake hypervisor and publication; the
 * real thing is test/session/recover-*.test.ts, recover-evidence.test.ts and
 * test/surebackup/*.test.ts, which boot the test guests):
 * - `recover` and a SureBackup verification call the same bring-up function,
 *   and their requests differ only in BRINGUP_CALLER_PARAMS, `heartbeat`
 *   (recover waits for it) among them;
 * - the FUSE access group reaches the publication;
 * - a bring-up without a heartbeat keeps the console log and the last
 *   screen, names them in the error's hint, and removes the rest.
 */
import t from 'tap';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as realBringUp from '../../src/bringup/bringup.js';
import { BRINGUP_CALLER_PARAMS, type BringUpRequest, type LabVm } from '../../src/bringup/bringup.js';
import { RestorelabError } from '../../src/errors.js';
import type { Domain, DomainSpec, Hypervisor } from '../../src/hypervisor/types.js';
import type { LabState } from '../../src/lab/lab.js';
import type { PublishOptions, RunningPublication } from '../../src/publish/contract.js';
import type { RepositoryReader, RestorePoint } from '../../src/repo/contract.js';
import type { SessionDeps } from '../../src/session/seam.js';
import type { RecoverySession } from '../../src/session/session.js';
import { SessionStore } from '../../src/session/store.js';
import type * as RunnerModule from '../../src/session/runner.js';
import type * as BackendModule from '../../src/surebackup/backend.js';
import { address, subnet } from '../helpers/subnets.js';

const vm = {
  name: 'web',
  memoryMiB: 64,
  vcpus: 1,
  disks: [{ name: 'root' }],
  nics: [{ mac: '52:54:00:77:00:10', network: 'prod', ip: '192.168.77.10' }],
};
const point: RestorePoint = {
  id: 'p-1',
  consistency: 'crash',
  time: '2026-01-01T00:00:00Z',
  source: 'test',
  stats: { bytesRead: 0, bytesNew: 0, bytesReused: 0, bytesZero: 0, seconds: 0 },
  vm,
  disks: [{ name: 'root', size: 1 << 20, indexDigest: 'x' }],
};

interface Calls {
  published: PublishOptions[];
  started: DomainSpec[];
  destroyed: string[];
  closed: number;
}

/** A domain whose console has a known text and whose screen is a 2x1 PPM; its agent never answers. */
function fakeDomain(dir: string, name: string, calls: Calls): Domain {
  const consoleLog = join(dir, `${name}.console`);
  writeFileSync(consoleLog, 'Linux version 6.1\nKernel panic - not syncing: VFS: Unable to mount root fs\n');
  return {
    name,
    consoleLog,
    agentSocket: join(dir, `${name}.qga`),
    state: async () => 'running',
    stop: async () => undefined,
    destroy: async () => {
      calls.destroyed.push(name);
    },
    agent: async () => {
      throw new RestorelabError('NO_HEARTBEAT', 'no guest agent');
    },
    screendump: async (path: string) => {
      writeFileSync(path, Buffer.concat([Buffer.from('P6\n2 1\n255\n'), Buffer.from([255, 0, 0, 0, 0, 255])]));
      return 'ppm' as const;
    },
    readVgaText: async () => new Uint8Array(0),
    blockMirror: async () => undefined,
    pivot: async () => undefined,
    abortMirror: async () => undefined,
    pid: () => undefined,
    alive: async () => true,
    exitReason: async () => undefined,
  };
}

function fakeDeps(dir: string, calls: Calls): SessionDeps {
  const repo: RepositoryReader = {
    path: join(dir, 'repo'),
    listPoints: async () => [point],
    getPoint: async () => point,
    openDisk: async () => {
      throw new Error('not used');
    },
  };
  const hv: Hypervisor = {
    driver: 'qemu',
    start: async (spec) => {
      calls.started.push(spec);
      return fakeDomain(dir, spec.vm.name, calls);
    },
    attach: async () => undefined,
    list: async () => [],
    close: async () => undefined,
  };
  return {
    openRepository: async () => repo,
    startPublication: async (o): Promise<RunningPublication> => {
      calls.published.push(o);
      return {
        id: `pub-${calls.published.length}`,
        name: 'web-p-1',
        owner: o.owner ?? { kind: 'user', id: 'cli' },
        point: o.point,
        vm: 'web',
        disks: { root: join(dir, 'root.raw') },
        close: async () => {
          calls.closed++;
        },
      };
    },
    removePublication: async () => undefined,
    hypervisor: () => hv,
  };
}

/** A lab that is already up (its state file says so): neither caller brings one up, so no namespace is needed. */
function readyLab(stateDir: string): LabState {
  const lab: LabState = {
    name: 'unitlab',
    netns: 'rl-unitlab-x',
    hostVeth: 'rlh-x',
    hostAddress: '169.254.1.1',
    labAddress: '169.254.1.2',
    hostTable: 'rl_unitlab',
    routes: [],
    networks: [{ name: 'prod', subnet: '192.168.77.0/24', gateway: '192.168.77.1', masquerade: subnet('bringup/one-path'), bridge: 'br0' }],
    taps: [],
    createdAt: new Date().toISOString(),
    ready: true,
  };
  mkdirSync(join(stateDir, 'labs'), { recursive: true });
  writeFileSync(join(stateDir, 'labs', 'unitlab.json'), JSON.stringify(lab));
  return lab;
}

t.test('recover and SureBackup call the same bring-up, differing only in the documented parameters', async (t) => {
  const dir = t.testdir();
  const stateDir = join(dir, 'state');
  readyLab(stateDir);
  const calls: Calls = { published: [], started: [], destroyed: [], closed: 0 };
  const deps = fakeDeps(dir, calls);
  const seen: { req: BringUpRequest }[] = [];
  const spy = async function bringUpSpy(req: BringUpRequest): Promise<LabVm> {
    seen.push({ req });
    return {
      domain: fakeDomain(dir, req.domainName, calls),
      disks: { root: join(dir, 'root.raw') },
      addresses: { nic0: address('bringup/one-path') },
      publication: { id: 'pub', name: 'web-p-1', owner: req.owner, point: req.point, vm: 'web', disks: {}, close: async () => undefined },
      probes: { ipAnswer: async () => false },
    };
  };
  // Absolute URLs: tap resolves relative ones against the source-mapped .ts file, not the compiled test.
  const here = (p: string): string => new URL(p, import.meta.url).href;
  const mocks = { [here('../../src/bringup/bringup.js')]: { ...realBringUp, bringUp: spy } };
  const runner = await t.mockImport<typeof RunnerModule>(here('../../src/session/runner.js'), mocks);
  const backendMod = await t.mockImport<typeof BackendModule>(here('../../src/surebackup/backend.js'), mocks);

  // recover: the session path, as the supervisor runs it.
  const store = new SessionStore(stateDir);
  const s: RecoverySession = {
    id: 'abcd1234',
    vm: 'web',
    point: point.id,
    repo: join(dir, 'repo'),
    driver: 'qemu',
    accel: 'tcg',
    fuseGroup: 'kvm',
    labFile: join(dir, 'lab.json'),
    lab: 'unitlab',
    domain: 'web-abcd12',
    state: 'starting',
    createdAt: new Date().toISOString(),
    updatedAt: '',
    addresses: {},
    disks: {},
    diskBytes: { root: 1 << 20 },
    resources: { taps: [] },
  };
  store.save(s);
  const labDef = {
    name: 'unitlab',
    networks: [{ name: 'prod', subnet: '192.168.77.0/24', gateway: '192.168.77.1', masquerade: subnet('bringup/one-path') }],
  };
  const live = await runner.bringUp(s, { point, vm, lab: labDef, labIsUp: true }, deps, store, deps.hypervisor('qemu', { stateDir }), {
    heartbeatTimeoutMs: 90_000,
  });
  t.equal(live.session.state, 'running');

  // SureBackup: the backend a run uses, same repository, point and lab.
  const backend = backendMod.createLabBackend({ repo: join(dir, 'repo'), stateDir, driver: 'qemu', accel: 'tcg', fuseGroup: 'kvm', deps });
  await backend.labUp(labDef, new AbortController().signal);
  const h = await backend.recover('web', point.id, { signal: new AbortController().signal, evidenceDir: join(dir, 'run') });
  await h.stop();

  // Each module got only the mocked bringUp: a path of its own would not have reached the spy.
  t.equal(seen.length, 2, 'one call of the one bring-up function from each');
  const [rec, sb] = seen.map((x) => x.req) as [BringUpRequest, BringUpRequest];
  const keys = new Set([...Object.keys(rec), ...Object.keys(sb)]);
  const differing = [...keys].filter(
    (k) =>
      JSON.stringify(rec[k as keyof BringUpRequest]) !== JSON.stringify(sb[k as keyof BringUpRequest]) ||
      typeof rec[k as keyof BringUpRequest] !== typeof sb[k as keyof BringUpRequest],
  );
  const allowed = new Set<string>(BRINGUP_CALLER_PARAMS);
  t.same(
    differing.filter((k) => !allowed.has(k)),
    [],
    `only documented parameters differ (${differing.join(', ')})`,
  );
  for (const k of ['repo', 'stateDir', 'point', 'vm', 'network', 'accel', 'fuseGroup'] as const) {
    t.same(rec[k], sb[k], `${k} is the same`);
  }
  t.same(rec.heartbeat, { maxBootSeconds: 90 }, 'recover waits for the heartbeat');
  t.equal(sb.heartbeat, undefined, 'a verification does not: its heartbeat test decides');
  t.same([rec.owner.kind, sb.owner.kind], ['session', 'surebackup'], 'each publication owned by its caller');
  t.equal(rec.fuseGroup, 'kvm', 'the access group is carried');
  t.ok(rec.evidence.screenshot && sb.evidence.screenshot, "both keep a failed start's screen");
});

t.test('the FUSE access group reaches the publication; the VM definition and lab decide the rest', async (t) => {
  const dir = t.testdir();
  const stateDir = join(dir, 'state');
  const lab = readyLab(stateDir);
  const calls: Calls = { published: [], started: [], destroyed: [], closed: 0 };
  const deps = fakeDeps(dir, calls);
  const res = { taps: [] };
  const up = await realBringUp.bringUp(
    {
      repo: join(dir, 'repo'),
      stateDir,
      point: point.id,
      vm,
      owner: { kind: 'surebackup', id: 'web-1' },
      domainName: 'sb-web-1',
      workDir: join(dir, 'w'),
      fuseGroup: 'kvm',
      network: { kind: 'none' },
      evidence: { console: join(dir, 'ev', 'console.log') },
      resources: res,
      save: () => undefined,
    },
    deps.hypervisor('qemu', { stateDir }),
    deps,
  );
  t.same(
    calls.published.map((p) => [p.fuseDir, p.fuseGroup, p.owner]),
    [[join(dir, 'w', 'mnt'), 'kvm', { kind: 'surebackup', id: 'web-1' }]],
  );
  t.same(calls.started[0]?.disks, [{ name: 'root', path: join(dir, 'root.raw'), format: 'raw' }]);
  t.type(up.probes.agentPing, 'function', 'an agent is expected by default');
  const noAgent = realBringUp.heartbeatProbes(up.domain, { ...vm, agent: false }, { kind: 'lab', lab });
  t.equal(noAgent.agentPing, undefined, '"agent": false: no agent probe');
  const kept = await realBringUp.tearDown({
    hv: deps.hypervisor('qemu', { stateDir }),
    stateDir,
    owner: { kind: 'surebackup', id: 'web-1' },
    resources: res,
    save: () => undefined,
    publication: up.publication,
    domain: up.domain,
    evidence: { console: join(dir, 'ev', 'console.log') },
  });
  t.same(kept, { console: join(dir, 'ev', 'console.log') }, 'the console log is kept at every teardown');
  t.match(readFileSync(join(dir, 'ev', 'console.log'), 'utf8'), /Kernel panic/);
  t.same(res, { taps: [] }, 'nothing left in the record');
});

t.test('no heartbeat: NO_HEARTBEAT naming the kept console log and screen; everything else removed', async (t) => {
  const dir = t.testdir();
  const stateDir = join(dir, 'state');
  const calls: Calls = { published: [], started: [], destroyed: [], closed: 0 };
  const deps = fakeDeps(dir, calls);
  const res: realBringUp.BringUpResources = { taps: [] };
  const evidence = { console: join(dir, 'ev', 'console.log'), screenshot: join(dir, 'ev', 'screen.png') };
  const err = await realBringUp
    .bringUp(
      {
        repo: join(dir, 'repo'),
        stateDir,
        point: point.id,
        vm,
        owner: { kind: 'session', id: 's1' },
        domainName: 'web-s1',
        workDir: join(dir, 'w'),
        network: { kind: 'none' },
        heartbeat: { maxBootSeconds: 1 },
        evidence,
        resources: res,
        save: () => undefined,
      },
      deps.hypervisor('qemu', { stateDir }),
      deps,
    )
    .catch((e: unknown) => e);
  t.ok(err instanceof RestorelabError && err.code === 'NO_HEARTBEAT', `NO_HEARTBEAT: ${(err as Error).message}`);
  const hint = (err as RestorelabError).hint ?? '';
  t.match(hint, `serial console is kept in ${evidence.console}`);
  t.match(hint, `last screen in ${evidence.screenshot}`);
  t.match(readFileSync(evidence.console, 'utf8'), /Kernel panic/, 'the console log as the guest wrote it');
  t.same([...readFileSync(evidence.screenshot).subarray(1, 4)], [...Buffer.from('PNG')], 'the last screen, as PNG');
  t.same(calls.destroyed, ['web-s1'], 'domain destroyed');
  t.equal(calls.closed, 1, 'publication closed');
  t.same(res, { taps: [] }, 'nothing left in the record');
  t.notOk(existsSync(`${evidence.screenshot}.dump`), 'the raw screendump is not left behind');
});

/**
 * The session orchestration on its own, fast: a contract-shaped repository
 * and publication (a plain raw file), a small fake hypervisor whose "guest
 * agent" is a real qemu-ga listening on the host, and real virtual labs.
 * Covers bring-up into a lab, teardown of everything, teardown after a
 * failed start, reuse of a lab that is already up, and the bad inputs
 * recover rejects before it makes anything, and a supervisor whose shared
 * publisher goes failing its session. The real thing (real
 * repository, FUSE publication, booted web guest) is in recover-*.test.ts.
 */
import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { exec, which } from '../../src/host/exec.js';
import { notFound, RestorelabError } from '../../src/errors.js';
import { labDown, labUp, listLabs, parseLab, readLabState } from '../../src/lab/lab.js';
import { LibvirtDriver } from '../../src/hypervisor/libvirt.js';
import { QgaClient } from '../../src/hypervisor/qga.js';
import type { Domain, DomainInfo, DomainSpec, Hypervisor } from '../../src/hypervisor/types.js';
import type { RepositoryReader, RestorePoint } from '../../src/repo/contract.js';
import type { PublishOptions, RunningPublication } from '../../src/publish/contract.js';
import type { SessionDeps } from '../../src/session/seam.js';
import { planRecovery, type RecoverRequest } from '../../src/session/plan.js';
import { bringUp, teardown } from '../../src/session/runner.js';
import { SessionStore } from '../../src/session/store.js';
import { superviseSession } from '../../src/session/supervisor.js';
import type { RecoverySession } from '../../src/session/session.js';
import { address, subnet } from '../helpers/subnets.js';

const dir = mkdtempSync(join(tmpdir(), 'rl-sess-unit-'));
const stateDir = join(dir, 'state');
const repoDir = join(dir, 'repo');
const tag = randomBytes(2).toString('hex');
const agents: ChildProcess[] = [];

t.teardown(async () => {
  for (const a of agents) a.kill('SIGKILL');
  for (const l of listLabs(stateDir)) await labDown(l.name, { stateDir });
  rmSync(dir, { recursive: true, force: true });
});

const point: RestorePoint = {
  id: 'p-1',
  consistency: 'crash',
  time: '2026-01-01T00:00:00Z',
  source: 'test',
  stats: { bytesRead: 0, bytesNew: 0, bytesReused: 0, bytesZero: 0, seconds: 0 },
  vm: {
    name: 'web',
    memoryMiB: 64,
    vcpus: 1,
    disks: [{ name: 'root' }],
    nics: [{ mac: '52:54:00:77:00:10', network: 'prod', ip: '192.168.77.10' }],
  },
  disks: [{ name: 'root', size: 1 << 20, indexDigest: 'x' }],
};

const repo: RepositoryReader = {
  path: repoDir,
  listPoints: async (f) => (f?.vm && f.vm !== 'web' ? [] : [point]),
  getPoint: async (id) => {
    if (id !== point.id) throw notFound('POINT_NOT_FOUND', `no restore point ${id}`);
    return point;
  },
  openDisk: async () => {
    throw new Error('not used');
  },
};

interface Calls {
  closed: { discard?: boolean }[];
  started: DomainSpec[];
  destroyed: string[];
}

/** A fake hypervisor; with `agent`, the domain's agent socket is a real qemu-ga on the host. */
function fakeDeps(calls: Calls, opts: { agent: boolean; libvirtSocket?: string }): SessionDeps {
  const live = new Map<string, Domain>();
  const hv: Hypervisor = {
    driver: 'qemu',
    async start(spec) {
      calls.started.push(spec);
      const sock = join(dir, `${spec.vm.name}.qga`);
      if (opts.agent) {
        const qga = which('qemu-ga');
        if (!qga) throw new Error('qemu-ga is missing (apt-get install qemu-guest-agent)');
        agents.push(spawn(qga, ['-m', 'unix-listen', '-p', sock, '-t', dir, '-f', join(dir, `${spec.vm.name}.pid`)], { stdio: 'ignore' }));
      }
      const d = {
        name: spec.vm.name,
        agentSocket: sock,
        consoleLog: join(dir, 'console.log'),
        state: async () => 'running' as const,
        pid: () => undefined,
        // The heartbeat decision (src/verify/heartbeat.ts) pings the agent through the domain.
        agent: (timeoutMs?: number) => QgaClient.connect(sock, { timeoutMs: timeoutMs ?? 2000 }),
        destroy: async () => {
          calls.destroyed.push(spec.vm.name);
          live.delete(spec.vm.name);
        },
      } as unknown as Domain;
      live.set(spec.vm.name, d);
      return d;
    },
    attach: async (name) => live.get(name),
    list: async () => [...live.keys()].map((name): DomainInfo => ({ name, driver: 'qemu', state: 'running' })),
    close: async () => undefined,
  };
  return {
    openRepository: async (path) => {
      if (path !== repoDir) throw notFound('REPO_NOT_FOUND', `no repository at ${path}`);
      return repo;
    },
    startPublication: async (o: PublishOptions): Promise<RunningPublication> => {
      const disk = join(dir, `${o.point}-root.raw`);
      writeFileSync(disk, Buffer.alloc(1 << 20));
      return {
        id: `pub-${o.point}`,
        name: `web-${o.point}`,
        owner: o.owner ?? { kind: 'user', id: 'cli' },
        point: o.point,
        vm: 'web',
        disks: { root: disk },
        close: async (c) => {
          calls.closed.push(c ?? {});
          rmSync(disk, { force: true });
        },
      };
    },
    removePublication: async () => {
      throw new Error('not used: every publication here is live');
    },
    hypervisor: (driver, o) =>
      driver === 'libvirt' ? new LibvirtDriver({ ...o, socket: opts.libvirtSocket ?? '/nonexistent/libvirt-sock' }) : hv,
  };
}

function labFile(name: string, masquerade: string): string {
  const p = join(dir, `${name}.json`);
  writeFileSync(p, JSON.stringify({ name, networks: [{ name: 'prod', subnet: '192.168.77.0/24', gateway: '192.168.77.1', masquerade }] }));
  return p;
}

function newSession(store: SessionStore, req: RecoverRequest, labName?: string): RecoverySession {
  const id = randomBytes(4).toString('hex');
  const s: RecoverySession = {
    id,
    vm: 'web',
    point: point.id,
    repo: req.repo,
    driver: 'qemu',
    ...(req.lab ? { labFile: req.lab, lab: labName } : {}),
    domain: `web-${id}`,
    state: 'starting',
    createdAt: new Date().toISOString(),
    updatedAt: '',
    addresses: {},
    disks: {},
    diskBytes: { root: 1 << 20 },
    resources: { taps: [] },
  };
  store.save(s);
  return s;
}

async function netnsExists(ns: string): Promise<boolean> {
  return (await exec('ip', ['netns', 'list'])).stdout.includes(ns);
}

t.test('bring-up into a lab: heartbeat, masquerade address; teardown removes everything', async (t) => {
  const calls: Calls = { closed: [], started: [], destroyed: [] };
  const deps = fakeDeps(calls, { agent: true });
  const store = new SessionStore(stateDir);
  const req: RecoverRequest = {
    repo: repoDir,
    vm: 'web',
    driver: 'qemu',
    stateDir,
    lab: labFile(`u1${tag}`, subnet('session/orchestration:u1')),
  };
  const plan = await planRecovery(req, deps);
  t.equal(plan.point.id, 'p-1', 'the latest point of the VM');
  t.equal(plan.labIsUp, false);
  const s = newSession(store, req, `u1${tag}`);
  const hv = deps.hypervisor('qemu', { stateDir });
  const live = await bringUp(s, plan, deps, store, hv, { heartbeatTimeoutMs: 20_000 });
  t.equal(live.session.state, 'running');
  t.ok((live.session.heartbeatSeconds ?? -1) >= 0, `heartbeat after ${live.session.heartbeatSeconds} s`);
  t.same(live.session.addresses, { nic0: address('session/orchestration:u1') }, 'the masquerade address of the production IP');
  const spec = calls.started[0] as DomainSpec;
  t.same(spec.disks, [{ name: 'root', path: join(dir, 'p-1-root.raw'), format: 'raw' }], 'disk on the published raw file');
  const nic = spec.nics[0];
  t.equal(nic?.kind, 'tap');
  t.equal(nic?.mac, '52:54:00:77:00:10', "the VM's own MAC");
  const lab = readLabState(stateDir, `u1${tag}`);
  t.ok(lab?.ready, 'the lab is up');
  const saved = store.get(s.id);
  t.equal(saved.state, 'running', 'persisted');
  t.equal(saved.resources.labCreated, `u1${tag}`);
  t.equal(saved.resources.taps.length, 1);
  t.ok(
    (await store.catalogRows()).some((r) => r.id === s.id && r.state === 'running'),
    'mirrored into the catalog',
  );

  await teardown(s, store, hv, live.publication);
  t.same(calls.destroyed, [s.domain], 'domain destroyed');
  t.same(calls.closed, [{ discard: true }], 'publication closed, overlay discarded');
  t.equal(readLabState(stateDir, `u1${tag}`), undefined, 'lab it created is down');
  t.notOk(await netnsExists(lab?.netns as string), 'namespace gone');
  t.same(store.get(s.id).resources, { taps: [] }, 'nothing left in the record');
});

t.test('a start that never gets a heartbeat tears everything down', async (t) => {
  const calls: Calls = { closed: [], started: [], destroyed: [] };
  const deps = fakeDeps(calls, { agent: false });
  const store = new SessionStore(stateDir);
  const req: RecoverRequest = {
    repo: repoDir,
    vm: 'web',
    driver: 'qemu',
    stateDir,
    lab: labFile(`u2${tag}`, subnet('session/orchestration:u2')),
  };
  const plan = await planRecovery(req, deps);
  const s = newSession(store, req, `u2${tag}`);
  const hv = deps.hypervisor('qemu', { stateDir });
  await t.rejects(bringUp(s, plan, deps, store, hv, { heartbeatTimeoutMs: 1500 }), { code: 'NO_HEARTBEAT' });
  t.equal(calls.destroyed.length, 1, 'domain destroyed');
  t.same(calls.closed, [{ discard: true }], 'publication closed');
  t.equal(readLabState(stateDir, `u2${tag}`), undefined, 'lab down');
  t.same(store.get(s.id).resources, { taps: [] });
});

t.test('a lab that is already up is used and left up', async (t) => {
  const calls: Calls = { closed: [], started: [], destroyed: [] };
  const deps = fakeDeps(calls, { agent: true });
  const store = new SessionStore(stateDir);
  const file = labFile(`u3${tag}`, subnet('session/orchestration:u3'));
  const lab = await labUp(
    parseLab(
      {
        name: `u3${tag}`,
        networks: [{ name: 'prod', subnet: '192.168.77.0/24', gateway: '192.168.77.1', masquerade: subnet('session/orchestration:u3') }],
      },
      'lab',
    ),
    { stateDir },
  );
  const req: RecoverRequest = { repo: repoDir, vm: 'web', driver: 'qemu', stateDir, lab: file };
  const plan = await planRecovery(req, deps);
  t.equal(plan.labIsUp, true);
  const s = newSession(store, req, `u3${tag}`);
  const hv = deps.hypervisor('qemu', { stateDir });
  const live = await bringUp(s, plan, deps, store, hv, { heartbeatTimeoutMs: 20_000 });
  t.equal(live.session.resources.labCreated, undefined);
  await teardown(s, store, hv, live.publication);
  const after = readLabState(stateDir, `u3${tag}`);
  t.ok(after?.ready, 'lab still up');
  t.same(after?.taps, [], "the session's tap is gone");
  t.ok(await netnsExists(lab.netns));
  await labDown(lab.name, { stateDir });
});

t.test('a lab recovery brought up is taken down by the last session in it', async (t) => {
  const calls: Calls = { closed: [], started: [], destroyed: [] };
  const deps = fakeDeps(calls, { agent: true });
  const store = new SessionStore(stateDir);
  const name = `u6${tag}`;
  const req: RecoverRequest = {
    repo: repoDir,
    vm: 'web',
    driver: 'qemu',
    stateDir,
    lab: labFile(name, subnet('session/orchestration:u6')),
  };
  const hv = deps.hypervisor('qemu', { stateDir });
  const a = newSession(store, req, name);
  const liveA = await bringUp(a, await planRecovery(req, deps), deps, store, hv, { heartbeatTimeoutMs: 20_000 });
  const planB = await planRecovery(req, deps);
  t.equal(planB.labIsUp, true, 'the second session finds the lab up');
  const b = newSession(store, req, name);
  const liveB = await bringUp(b, planB, deps, store, hv, { heartbeatTimeoutMs: 20_000 });
  await teardown(a, store, hv, liveA.publication);
  a.state = 'stopped';
  store.save(a);
  t.ok(readLabState(stateDir, name)?.ready, 'still up while the other session runs in it');
  await teardown(b, store, hv, liveB.publication);
  t.equal(readLabState(stateDir, name), undefined, 'down after the last session');
});

t.test('a shared publisher that goes fails the session it served, visibly, and tears it down', async (t) => {
  const calls: Calls = { closed: [], started: [], destroyed: [] };
  const base = fakeDeps(calls, { agent: true });
  let lose!: (why: string) => void;
  const deps: SessionDeps = {
    ...base,
    startPublication: async (o) => ({ ...(await base.startPublication(o)), lost: new Promise<string>((r) => (lose = r)) }),
  };
  const store = new SessionStore(stateDir);
  const s = newSession(store, { repo: repoDir, vm: 'web', driver: 'qemu', stateDir });
  const done = superviseSession(stateDir, s.id, deps, { heartbeatTimeoutMs: 20_000 });
  const end = Date.now() + 30_000;
  while (store.get(s.id).state !== 'running' && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
  t.equal(store.get(s.id).state, 'running', 'the session runs');
  lose('publication pub-p-1: the shared publisher closed the connection (it stopped or crashed)');
  t.equal(await done, 1, 'the supervisor ends, failed');
  const after = store.get(s.id);
  t.equal(after.state, 'failed');
  t.match(
    after.error,
    { code: 'PUBLISHER_GONE', message: /shared publisher closed the connection.*the VM lost its disks/ },
    'and says why',
  );
  t.same(calls.destroyed, [s.domain], 'its VM is destroyed');
  t.same(calls.closed, [{ discard: true }], 'its publication closed, the overlay discarded');
  t.same(after.resources, { taps: [] }, 'nothing left in its record');
});

t.test('on a production bridge: the NIC joins the bridge and the address is the production IP', async (t) => {
  const bridge = `rlbr${tag}`;
  t.equal((await exec('ip', ['link', 'add', bridge, 'type', 'bridge'])).code, 0, 'test bridge created');
  t.teardown(() => exec('ip', ['link', 'del', bridge]).then(() => undefined));
  const calls: Calls = { closed: [], started: [], destroyed: [] };
  const deps = fakeDeps(calls, { agent: true });
  const store = new SessionStore(stateDir);
  const req: RecoverRequest = { repo: repoDir, vm: 'web', driver: 'qemu', stateDir, network: bridge };
  const plan = await planRecovery(req, deps);
  const s = { ...newSession(store, req), network: bridge };
  const hv = deps.hypervisor('qemu', { stateDir });
  const live = await bringUp(s, plan, deps, store, hv, { heartbeatTimeoutMs: 20_000 });
  t.same(calls.started[0]?.nics, [{ kind: 'bridge', bridge, mac: '52:54:00:77:00:10', model: 'virtio' }]);
  t.same(live.session.addresses, { nic0: '192.168.77.10' });
  t.same(listLabs(stateDir), [], 'no lab involved');
  await teardown(s, store, hv, live.publication);
  t.same(calls.closed, [{ discard: true }]);
});

t.test('bad inputs are rejected before anything is made', async (t) => {
  const calls: Calls = { closed: [], started: [], destroyed: [] };
  const deps = fakeDeps(calls, { agent: false });
  const base: RecoverRequest = { repo: repoDir, vm: 'web', driver: 'qemu', stateDir };
  await t.rejects(planRecovery({ ...base, vm: 'nosuch' }, deps), { code: 'VM_NOT_FOUND', exitCode: 5 }, 'unknown VM');
  await t.rejects(planRecovery({ ...base, point: 'p-404' }, deps), { code: 'POINT_NOT_FOUND', exitCode: 5 }, 'unknown point');
  await t.rejects(planRecovery({ ...base, repo: join(dir, 'norepo') }, deps), { code: 'REPO_NOT_FOUND' }, 'no repository');
  const bad = join(dir, 'bad-lab.json');
  writeFileSync(bad, JSON.stringify({ name: 'x', networks: [{ name: 'prod', subnet: 'nonsense' }] }));
  const schemaErr = await planRecovery({ ...base, lab: bad }, deps).catch((x: unknown) => x);
  t.ok(schemaErr instanceof RestorelabError && schemaErr.exitCode === 2, `lab file failing its schema: ${(schemaErr as Error).message}`);
  await t.rejects(
    planRecovery({ ...base, lab: labFile(`u4${tag}`, '127.0.0.0/24') }, deps),
    { code: 'LAB_MASQUERADE_OVERLAP', message: /overlaps the host route 127\.0\.0\.0\/8/ },
    'masquerade subnet overlapping a host route',
  );
  const other = join(dir, 'other-net.json');
  writeFileSync(
    other,
    JSON.stringify({
      name: `u5${tag}`,
      networks: [{ name: 'dmz', subnet: '10.9.0.0/24', gateway: '10.9.0.1', masquerade: subnet('session/orchestration:u5') }],
    }),
  );
  await t.rejects(planRecovery({ ...base, lab: other }, deps), { code: 'LAB_NO_SUCH_NETWORK' }, "a lab that lacks the VM's network");
  await t.rejects(
    planRecovery({ ...base, network: `nobr${tag}` }, deps),
    { code: 'BRIDGE_NOT_FOUND', message: new RegExp(`nobr${tag}`) },
    'a bridge that does not exist',
  );
  await t.rejects(planRecovery({ ...base, network: 'x', lab: other }, deps), { code: 'LAB_AND_NETWORK' });
  const e = await planRecovery({ ...base, driver: 'libvirt' }, deps).catch((x: unknown) => x);
  t.ok(e instanceof RestorelabError && e.code === 'LIBVIRTD_NOT_RUNNING', 'libvirtd not running');
  t.match((e as RestorelabError).hint, /scripts\/libvirtd/, 'the error names scripts/libvirtd');
  t.same(calls, { closed: [], started: [], destroyed: [] }, 'nothing was published or started');
  t.same(listLabs(stateDir), [], 'no lab was brought up');
});

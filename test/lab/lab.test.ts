/**
 * Labs on real network namespaces. A "guest" here is a namespace the test
 * creates and plugs into the lab bridge with a veth, running an HTTP server
 * on the production address: it exercises exactly the lab's bridging, NAT
 * and filtering without the cost of a VM boot (web-guest.test.ts does the
 * same with the real web guest on a tap). All traffic stays on loopback or
 * inside namespaces this test created.
 */
import t from 'tap';
import { mkdtempSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { spawn, type ChildProcess } from 'node:child_process';
import { exec } from '../../src/host/exec.js';
import { labUp, labDown, parseLab, listLabs, masqueradeAddress, readLabState, type LabState } from '../../src/lab/lab.js';
import { waitFor } from '../helpers/guests.js';
import { MASQUERADE_PREFIX, address, subnet } from '../helpers/subnets.js';

const dir = mkdtempSync(join(tmpdir(), 'rl-lab-'));
const stateDir = join(dir, 'state');
const tag = randomBytes(2).toString('hex');
const guests: { ns: string; httpd: ChildProcess }[] = [];

const labDef = (name: string, masq: string): unknown => ({
  name,
  networks: [{ name: 'prod', subnet: '192.168.77.0/24', gateway: '192.168.77.1', masquerade: masq }],
});

async function ok(cmd: string, args: string[]): Promise<string> {
  const r = await exec(cmd, args, { timeoutMs: 15_000 });
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

/** A namespace standing in for a VM: 192.168.77.10 behind the lab bridge, serving `body`. */
async function fakeGuest(lab: LabState, body: string): Promise<string> {
  const ns = `rl-tg-${tag}-${guests.length}`;
  await ok('ip', ['netns', 'add', ns]);
  // The document root first: busybox httpd changes into it at start and exits when it is not there yet.
  mkdirSync(join(dir, body), { recursive: true });
  writeFileSync(join(dir, body, 'index.html'), body);
  const httpd = spawn('ip', ['netns', 'exec', ns, 'busybox', 'httpd', '-f', '-p', '80', '-h', join(dir, body)], { stdio: 'ignore' });
  guests.push({ ns, httpd });
  await ok('ip', ['link', 'add', `tg${tag}${guests.length}`, 'netns', ns, 'type', 'veth', 'peer', 'name', 'vm0', 'netns', lab.netns]);
  await ok('ip', ['-n', lab.netns, 'link', 'set', 'vm0', 'master', 'br-prod', 'up']);
  await ok('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
  await ok('ip', ['-n', ns, 'link', 'set', `tg${tag}${guests.length}`, 'name', 'eth0']);
  await ok('ip', ['-n', ns, 'addr', 'add', '192.168.77.10/24', 'dev', 'eth0']);
  await ok('ip', ['-n', ns, 'link', 'set', 'eth0', 'up']);
  await ok('ip', ['-n', ns, 'route', 'add', 'default', 'via', '192.168.77.1']);
  return ns;
}

async function httpGet(url: string): Promise<string> {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), 5000);
  try {
    return await (await fetch(url, { signal: ctl.signal })).text();
  } finally {
    clearTimeout(timer);
  }
}

async function inNs(ns: string, cmd: string[]): Promise<number | null> {
  return (await exec('ip', ['netns', 'exec', ns, ...cmd], { timeoutMs: 10_000 })).code;
}

t.teardown(async () => {
  for (const g of guests) {
    g.httpd.kill('SIGKILL');
    await exec('ip', ['netns', 'del', g.ns]);
  }
  for (const l of listLabs(stateDir)) await labDown(l.name, { stateDir });
  rmSync(dir, { recursive: true, force: true });
});

t.test('two labs mirror the same subnet; each guest answers on its own masquerade address; isolation holds', async (t) => {
  const a = await labUp(parseLab(labDef(`la${tag}`, subnet('lab/lab:a')), 'lab A'), { stateDir });
  const b = await labUp(parseLab(labDef(`lb${tag}`, subnet('lab/lab:b')), 'lab B'), { stateDir });
  t.equal(masqueradeAddress(a, '192.168.77.10'), address('lab/lab:a'));
  t.equal(masqueradeAddress(b, '192.168.77.10'), address('lab/lab:b'));
  const ga = await fakeGuest(a, 'guest-A');
  await fakeGuest(b, 'guest-B');
  // httpd starts in the background and the veths just came up: poll until both answer through their labs.
  await waitFor(
    'both stand-in guests to answer on their masquerade addresses',
    15_000,
    async () => {
      const answers = await Promise.all(
        (['lab/lab:a', 'lab/lab:b'] as const).map((n) => httpGet(`http://${address(n)}/`).catch(() => undefined)),
      );
      return answers.every((x) => x !== undefined) ? true : undefined;
    },
    50,
  );
  t.equal(await httpGet(`http://${address('lab/lab:a')}/`), 'guest-A', 'lab A guest answers on its masquerade address from the host');
  t.equal(await httpGet(`http://${address('lab/lab:b')}/`), 'guest-B', 'lab B guest answers on its masquerade address from the host');

  // From inside lab A's guest.
  t.equal(await inNs(ga, ['ping', '-c1', '-W1', '192.168.77.1']), 0, 'the guest reaches its gateway');
  t.not(await inNs(ga, ['ping', '-c1', '-W1', a.hostAddress]), 0, 'host uplink address unreachable (ping)');
  t.not(await inNs(ga, ['ping', '-c1', '-W1', a.labAddress]), 0, 'lab uplink address unreachable (ping)');
  t.not(
    await inNs(ga, ['busybox', 'wget', '-q', '-T', '2', '-O', '-', `http://${address('lab/lab:b')}/`]),
    0,
    'the other lab is unreachable',
  );
  t.not(await inNs(ga, ['ping', '-c1', '-W1', address('lab/lab:b')]), 0, 'the other lab is unreachable (ping)');
  const labRoutes = await ok('ip', ['-n', a.netns, '-4', 'route', 'show']);
  t.notMatch(labRoutes, /default/, 'the lab namespace has no default route: nothing beyond it is routable');
});

t.test('lab up again cleans a leftover; down is idempotent and leaves nothing', async (t) => {
  const name = `la${tag}`;
  const old = readLabState(stateDir, name);
  t.ok(old);
  const fresh = await labUp(parseLab(labDef(name, subnet('lab/lab:a')), 'lab A'), { stateDir });
  t.not(fresh.netns, old?.netns);
  const netns = await ok('ip', ['netns', 'list']);
  t.notMatch(netns, old?.netns ?? 'x', 'the previous namespace is gone');
  const all = [fresh, readLabState(stateDir, `lb${tag}`) as LabState];
  // The routes the labs added, seen while they are up: what "removed" below must not find.
  const masqRoutes = all.flatMap((l) => l.routes);
  t.same([...masqRoutes].sort(), [subnet('lab/lab:a'), subnet('lab/lab:b')], 'each lab routes its masquerade subnet');
  const routesUp = await ok('ip', ['route', 'show', 'table', 'all']);
  for (const r of masqRoutes) t.match(routesUp, r, `route ${r} present while the lab is up`);
  for (const l of all) await labDown(l.name, { stateDir });
  await t.rejects(labDown(name, { stateDir }), { code: 'LAB_NOT_FOUND' });
  const [nsList, links, rules, routes] = await Promise.all([
    ok('ip', ['netns', 'list']),
    ok('ip', ['link']),
    ok('nft', ['list', 'ruleset']),
    ok('ip', ['route', 'show', 'table', 'all']),
  ]);
  for (const l of [...all, old as LabState]) {
    t.notMatch(nsList, l.netns, `netns ${l.netns} removed`);
    t.notMatch(links, l.hostVeth, `veth ${l.hostVeth} removed`);
    t.notMatch(rules, l.hostTable, `nft table ${l.hostTable} removed`);
  }
  for (const r of masqRoutes) t.notMatch(routes, r, `masquerade route ${r} removed`);
  t.same(listLabs(stateDir), []);
});

t.test('bad input: schema, masquerade overlapping a host route, bad arithmetic', async (t) => {
  t.throws(() => parseLab({ name: 'x', networks: [{ name: 'prod' }] }, 'bad.json'), { code: 'SCHEMA_INVALID' });
  t.throws(
    () =>
      parseLab(
        { name: 'x', networks: [{ name: 'prod', subnet: '192.168.77.0/24', gateway: '10.0.0.1', masquerade: subnet('lab/lab:a') }] },
        'bad.json',
      ),
    /not in 192.168.77.0\/24/,
  );
  t.throws(
    () =>
      parseLab(
        {
          name: 'x',
          networks: [{ name: 'prod', subnet: '192.168.77.0/24', gateway: '192.168.77.1', masquerade: `${MASQUERADE_PREFIX}.0.0/16` }],
        },
        'bad.json',
      ),
    /differ in size/,
  );
  await t.rejects(labUp(parseLab(labDef(`lc${tag}`, '127.0.0.0/24'), 'lab C'), { stateDir }), { code: 'LAB_MASQUERADE_OVERLAP' });
  // Only this lab's names: other test files make namespaces of their own at the same time.
  t.notMatch(await ok('ip', ['netns', 'list']), `lc${tag}`, 'nothing created');
  t.same(listLabs(stateDir), []);
});

t.test('CLI: lab up / list / down --json', async (t) => {
  const { fileURLToPath } = await import('node:url');
  const bin = fileURLToPath(new URL('../../../bin/restorelab.js', import.meta.url));
  const file = join(dir, 'cli-lab.json');
  writeFileSync(file, JSON.stringify(labDef(`ld${tag}`, subnet('lab/lab:cli'))));
  const env = { ...process.env, RESTORELAB_STATE_DIR: stateDir };
  const run = async (args: string[]): Promise<{ code: number | null; json: Record<string, unknown> }> => {
    const r = await exec(process.execPath, [bin, ...args, '--json'], { env, timeoutMs: 30_000 });
    return { code: r.code, json: JSON.parse(r.stdout) as Record<string, unknown> };
  };
  const up = await run(['lab', 'up', file]);
  t.equal(up.code, 0);
  t.match(up.json, { name: `ld${tag}`, ready: true, networks: [{ masquerade: subnet('lab/lab:cli') }] });
  t.match((await run(['lab', 'list'])).json, { labs: [{ name: `ld${tag}` }] });
  t.match((await run(['lab', 'down', file])).json, { removed: true });
  t.match((await run(['lab', 'down', file])).json, { removed: false }, 'down again is fine');
  const bad = await run(['lab', 'up', join(dir, 'missing.json')]);
  t.not(bad.code, 0);
  t.equal((bad.json as { ok: boolean }).ok, false);
});

/**
 * `publish --nbd` over a real repository (no guest boot), with real NBD
 * clients (qemu-img, qemu-io, nbdinfo): the --json line is exactly issue
 * 18's interface, the URL compares equal to the backed-up image, writes land
 * in the overlay and never in the repository, the socket is the publisher's
 * alone (or its access group's), --tcp serves nbd:// URLs, bad flags get
 * registered codes, and neither a clean stop nor a killed publisher leaves a
 * socket behind.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, mkdirSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exec, which } from '../../src/host/exec.js';
import { projectPath } from '../../src/paths.js';
import { processAlive } from '../../src/host/process.js';
import { parseNbdUrl } from '../../src/nbd/url.js';
import { listPublications, removePublication } from '../../src/publish/publish.js';
import { chunkFingerprint, cli, json, webRepository } from './fixtures/web.js';

interface NbdJson {
  publication: string;
  disks: Array<{ name: string; nbd: string }>;
  log?: string;
}

for (const tool of ['qemu-img', 'qemu-io', 'nbdinfo', 'setpriv']) {
  if (!which(tool)) throw new Error(`${tool} is missing (apt-get install qemu-utils libnbd-bin util-linux)`);
}

const dir = mkdtempSync('/tmp/rlpubnbd-');
chmodSync(dir, 0o755); // only the socket's own mode decides who connects
const state = join(dir, 'state');
const { repo, point, image } = await webRepository(dir);
const before = chunkFingerprint(repo);

t.teardown(async () => {
  for (const p of listPublications(state)) await removePublication(state, p.id, { discard: true, as: p.owner }).catch(() => undefined);
  rmSync(dir, { recursive: true, force: true });
});

const publish = (...extra: string[]): Promise<NbdJson> =>
  cli(['publish', '--repo', repo, point.id, '--nbd', '--background', '--json', ...extra], state).then((r) => json<NbdJson>(r));

/** nobody:nogroup (with nogroup as a supplementary group too) runs `argv`. */
const asNobody = (argv: string[]) => exec('setpriv', ['--reuid=65534', '--regid=65534', '--groups=65534', ...argv], { timeoutMs: 30_000 });

t.test('publish --nbd --json in the foreground: exactly the interface, qemu-img compare equal, SIGTERM removes the socket', async (t) => {
  const child = spawn(process.execPath, [projectPath('bin', 'restorelab.js'), 'publish', '--repo', repo, point.id, '--nbd', '--json'], {
    env: { ...process.env, RESTORELAB_STATE_DIR: state },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  const line = await new Promise<string>((resolve, reject) => {
    child.stdout.on('data', (b: Buffer) => {
      stdout += b.toString();
      const nl = stdout.indexOf('\n');
      if (nl >= 0) resolve(stdout.slice(0, nl));
    });
    child.once('exit', (code) => reject(new Error(`publish exited ${code}: ${stdout} ${stderr}`)));
  });
  const out = JSON.parse(line) as NbdJson;
  t.same(Object.keys(out), ['publication', 'disks'], 'the documented keys, nothing else');
  t.equal(out.publication, `web-${point.id}`);
  t.same(
    out.disks.map((d) => Object.keys(d)),
    [['name', 'nbd']],
  );
  const socket = join(state, 'publications', out.publication, 'nbd.sock');
  t.equal(out.disks[0]?.nbd, `nbd+unix:///root?socket=${socket}`, 'the unix form, on the socket in the publication directory');
  const st = statSync(socket);
  t.ok(st.isSocket());
  t.same([st.mode & 0o777, st.uid], [0o600, process.getuid?.()], "0600, the publisher's");

  const cmp = await exec('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', out.disks[0]!.nbd, image], { timeoutMs: 120_000 });
  t.equal(cmp.code, 0, `qemu-img compare: ${cmp.stdout.trim()} ${cmp.stderr}`);
  const listed = listPublications(state).find((p) => p.id === out.publication);
  t.same(listed?.nbd, { root: out.disks[0]?.nbd }, 'publications lists its URLs while it runs');

  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  child.kill('SIGTERM');
  t.equal(await exited, 0, 'SIGTERM stops it cleanly');
  t.notOk(existsSync(socket), 'no socket left behind');
  json(await cli(['unpublish', out.publication, '--discard', '--json'], state));
});

t.test('writes over NBD land in the overlay, never in the repository; --resume keeps them', async (t) => {
  let pub = await publish();
  const url = pub.disks[0]!.nbd;
  const w = await exec('qemu-io', ['-f', 'raw', '-c', 'write -P 0xa5 1M 64k', url], { timeoutMs: 60_000 });
  t.equal(w.code, 0, `qemu-io write: ${w.stdout} ${w.stderr}`);
  const r = await exec('qemu-io', ['-f', 'raw', '-r', '-c', 'read -P 0xa5 1M 64k', url], { timeoutMs: 60_000 });
  t.equal(r.code, 0, 'read back');
  t.notMatch(r.stdout, /Pattern verification failed/, 'the bytes written');
  const overlayDir = join(state, 'overlays', pub.publication);
  const data = readdirSync(overlayDir).filter((f) => f.endsWith('.data'));
  t.ok(
    data.some((f) => statSync(join(overlayDir, f)).blocks > 0),
    `the overlay holds the write (${data.join(', ')})`,
  );
  t.equal(chunkFingerprint(repo), before, 'the repository is unchanged');
  json(await cli(['unpublish', pub.publication, '--json'], state));
  t.notOk(
    existsSync(parseNbdUrl(url).server.type === 'unix' ? (parseNbdUrl(url).server as { path: string }).path : ''),
    'unpublish leaves no socket',
  );

  pub = await publish('--resume');
  const again = await exec('qemu-io', ['-f', 'raw', '-r', '-c', 'read -P 0xa5 1M 64k', pub.disks[0]!.nbd], { timeoutMs: 60_000 });
  t.notMatch(again.stdout, /Pattern verification failed/, '--resume serves the earlier write');
  json(await cli(['unpublish', pub.publication, '--json'], state));
  pub = await publish();
  const fresh = await exec('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', pub.disks[0]!.nbd, image], { timeoutMs: 120_000 });
  t.equal(fresh.code, 0, 'without --resume: the point as backed up');
  json(await cli(['unpublish', pub.publication, '--discard', '--json'], state));
  t.equal(chunkFingerprint(repo), before);
});

t.test('--read-only refuses writes over NBD', async (t) => {
  const pub = await publish('--read-only');
  const w = await exec('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 4k', pub.disks[0]!.nbd], { timeoutMs: 60_000 });
  t.not(
    w.code === 0 && !/error|denied|read-only/i.test(w.stdout + w.stderr),
    true,
    `the write is refused: ${w.stdout.trim()} ${w.stderr.trim()}`,
  );
  json(await cli(['unpublish', pub.publication, '--discard', '--json'], state));
});

t.test("the socket is the publisher's alone, or shared with the access group", async (t) => {
  const mine = await publish();
  const refused = await asNobody(['nbdinfo', '--size', mine.disks[0]!.nbd]);
  t.not(refused.code, 0, `nobody cannot connect: ${refused.stderr.trim()}`);
  json(await cli(['unpublish', mine.publication, '--json'], state));

  const shared = await publish('--fuse-group', 'nogroup');
  const socket = (parseNbdUrl(shared.disks[0]!.nbd).server as { path: string }).path;
  const st = statSync(socket);
  t.same([st.mode & 0o777, st.gid], [0o660, 65534], '--fuse-group: 0660 in that group');
  const home = statSync(join(socket, '..'));
  t.ok(socket.startsWith(join(tmpdir(), 'rl-nbd-')), `outside the owner-only state directory: ${socket}`);
  t.same([home.mode & 0o777, home.gid], [0o710, 65534], 'in a directory the group may only pass through');
  const size = await asNobody(['nbdinfo', '--size', shared.disks[0]!.nbd]);
  t.equal(size.code, 0, `a member connects: ${size.stderr}`);
  t.equal(Number(size.stdout.trim()), statSync(image).size, 'and sees the disk');
  json(await cli(['unpublish', shared.publication, '--discard', '--json'], state));
  t.notOk(existsSync(join(socket, '..')), 'the directory goes with the socket');
});

t.test('--tcp HOST:PORT serves nbd:// URLs on loopback', async (t) => {
  const pub = await publish('--tcp', '127.0.0.1:0');
  const url = pub.disks[0]!.nbd;
  t.match(url, /^nbd:\/\/127\.0\.0\.1:\d+\/root$/);
  const target = parseNbdUrl(url).server as { port: number };
  t.ok(target.port > 0, `the port chosen: ${target.port}`);
  const cmp = await exec('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', url, image], { timeoutMs: 120_000 });
  t.equal(cmp.code, 0, `qemu-img compare over TCP: ${cmp.stdout.trim()} ${cmp.stderr}`);
  const map = await exec('nbdinfo', ['--map', url], { timeoutMs: 60_000 });
  t.equal(map.code, 0, map.stderr);
  t.match(map.stdout, /hole|zero/, 'nbdinfo --map reports the holes of the point');
  json(await cli(['unpublish', pub.publication, '--discard', '--json'], state));
  const gone = await exec('nbdinfo', ['--size', url], { timeoutMs: 30_000 });
  t.not(gone.code, 0, 'nothing listens after unpublish');
});

t.test('a killed publisher leaves a stale socket that unpublish removes; a new publish serves again', async (t) => {
  const pub = await publish();
  const socket = (parseNbdUrl(pub.disks[0]!.nbd).server as { path: string }).path;
  const pid = listPublications(state).find((p) => p.id === pub.publication)?.pid;
  if (pid === undefined) throw new Error('the publisher records no pid');
  process.kill(pid, 'SIGKILL');
  const deadline = Date.now() + 30_000;
  while (processAlive(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  t.ok(existsSync(socket), 'SIGKILL leaves the socket file');
  json(await cli(['unpublish', pub.publication, '--json'], state));
  t.notOk(existsSync(socket), 'unpublish of the crashed publisher removes it');

  // Killed again, and published again without unpublish: the stale socket is replaced.
  const second = await publish('--resume');
  const pid2 = listPublications(state).find((p) => p.id === second.publication)?.pid;
  process.kill(pid2 as number, 'SIGKILL');
  while (processAlive(pid2 as number) && Date.now() < deadline + 30_000) await new Promise((r) => setTimeout(r, 100));
  const third = await publish('--resume');
  t.equal(third.disks[0]?.nbd, second.disks[0]?.nbd, 'the same socket path');
  t.equal((await exec('nbdinfo', ['--size', third.disks[0]!.nbd], { timeoutMs: 30_000 })).code, 0, 'served again');
  json(await cli(['unpublish', third.publication, '--discard', '--json'], state));
  t.notOk(existsSync(socket));
});

t.test('a state directory too deep for a socket address: the socket moves to a private directory', async (t) => {
  const deep = join(dir, 'd'.repeat(60), 'e'.repeat(40));
  mkdirSync(deep, { recursive: true });
  const r = await cli(['publish', '--repo', repo, point.id, '--nbd', '--background', '--json'], deep);
  const pub = json<NbdJson>(r);
  const socket = (parseNbdUrl(pub.disks[0]!.nbd).server as { path: string }).path;
  t.ok(socket.startsWith(join(tmpdir(), 'rl-nbd-')), `short path: ${socket}`);
  t.equal(statSync(join(socket, '..')).mode & 0o777, 0o700, 'in a directory of its own');
  const cmp = await exec('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', pub.disks[0]!.nbd, image], { timeoutMs: 120_000 });
  t.equal(cmp.code, 0, 'served');
  json(await cli(['unpublish', pub.publication, '--discard', '--json'], deep));
  t.notOk(existsSync(join(socket, '..')), 'its directory goes with it');
});

t.test('bad input: registered codes, nothing published', async (t) => {
  const cases: [string[], number, string][] = [
    [['--nbd', '--tcp', 'localhost'], 2, 'BAD_LISTEN_ADDRESS'],
    [['--nbd', '--tcp', '127.0.0.1:70000'], 2, 'BAD_LISTEN_ADDRESS'],
    [['--tcp', '127.0.0.1:10809'], 2, 'PUBLISH_NBD_ALONE'],
    [['--nbd', '--tcp', '127.0.0.1:0', '--allow', '10.0.0.0/99'], 2, 'BAD_ALLOW_ENTRY'],
    [['--nbd', '--fuse', join(dir, 'mnt')], 2, 'PUBLISH_NBD_ALONE'],
    [['--nbd', '--nfs'], 2, 'PUBLISH_NBD_ALONE'],
    [['--nbd', '--nbd-socket', join(dir, 'x'.repeat(120))], 2, 'NBD_SOCKET_PATH_TOO_LONG'],
  ];
  const file = join(dir, 'not-a-socket');
  writeFileSync(file, 'keep me');
  cases.push([['--nbd', '--nbd-socket', file], 2, 'NBD_SOCKET_PATH']);
  for (const [args, code, name] of cases) {
    const r = await cli(['publish', '--repo', repo, point.id, ...args, '--json'], state);
    t.equal(r.code, code, `${args.join(' ')}: exit ${code}`);
    t.match(r.stdout, name, name);
  }
  t.ok(existsSync(file), 'a file in the way is never removed');
  t.same(
    listPublications(state).filter((p) => p.running),
    [],
    'nothing running',
  );
});

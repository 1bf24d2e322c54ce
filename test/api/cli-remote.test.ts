/**
 * The CLI against a running server: the real `restorelab server` API
 * (startApiServer on 127.0.0.1, an ephemeral port) over a repository holding
 * the `web` guest, and bin/restorelab.js run as a child process with
 * --server/--token from an empty home, so nothing it prints can come from
 * local state. Its --json output must be what the embedded command prints
 * on the server host.
 */
import t from 'tap';
import { cli, type Cli } from './fixtures/cli.js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { loadConfig } from '../../src/config/config.js';
import { startApiServer } from '../../src/api/server.js';
import { SessionStore } from '../../src/session/store.js';
import { guestRepository } from '../helpers/repository.js';
import { ApiClient, type RemoteOperation } from '../../src/cli/remote.js';
import { RestorelabError } from '../../src/errors.js';
import { address } from '../helpers/subnets.js';

t.test('points, sessions, publications, history and stop through the server', async (t) => {
  const home = mkdtempSync(join(tmpdir(), 'rl-remote-'));
  const elsewhere = mkdtempSync(join(tmpdir(), 'rl-remote-client-'));
  t.teardown(() => {
    rmSync(home, { recursive: true, force: true });
    rmSync(elsewhere, { recursive: true, force: true });
  });
  const serverEnv = { RESTORELAB_HOME: home, RESTORELAB_REPO: join(home, 'repo') };
  const g = await guestRepository(home, 'web');
  const config = loadConfig({ env: serverEnv });
  // A finished session in the server's state: the listing has a row to compare.
  new SessionStore(config.stateDir).save({
    id: 'sess-remote-1',
    vm: 'web',
    point: g.point.id,
    repo: g.repo,
    driver: 'qemu',
    domain: 'rl-web-test',
    state: 'stopped',
    createdAt: new Date(Date.now() - 60_000).toISOString(),
    updatedAt: new Date().toISOString(),
    heartbeatSeconds: 12.5,
    addresses: { nic0: address('prod-lab') },
    disks: {},
    diskBytes: {},
    resources: { taps: [] },
  });
  const server = await startApiServer({
    config,
    jobsDir: join(home, 'jobs'),
    log: pino({ level: 'silent' }),
    listen: '127.0.0.1',
    port: 0,
  });
  t.teardown(() => server.close());
  const viewer = (await server.ctx.tokens.create('cli-viewer', 'viewer')).token;
  const remote = (args: string[], token = viewer): Promise<Cli> =>
    cli(['--server', server.url, '--token', token, ...args], { RESTORELAB_HOME: elsewhere });
  const embedded = (args: string[]): Promise<Cli> => cli(args, serverEnv);

  const rp = await remote(['points', '--json']);
  t.equal(rp.code, 0, rp.stderr);
  const ep = await embedded(['points', '--json']);
  t.equal(ep.code, 0, ep.stderr);
  t.equal(rp.json.repo, ep.json.repo, "the server's repository");
  const remotePoints = rp.json.points as Array<Record<string, unknown>>;
  t.equal(remotePoints.length, 1);
  t.equal(remotePoints[0]?.id, g.point.id);
  t.equal(remotePoints[0]?.verification, null, 'remote adds what only the server knows: the latest verification');
  t.same(
    remotePoints.map(({ verification: _v, ...p }) => p),
    ep.json.points,
    'otherwise the same points as embedded',
  );
  const human = await remote(['points', '--vm', 'web']);
  t.equal(human.code, 0, human.stderr);
  t.match(human.stdout, new RegExp(`${g.point.id}\\s+web`), 'the human listing');
  const none = await remote(['points', '--vm', 'nosuchvm', '--json']);
  t.same(none.json.points, [], '--vm filters on the server');

  const rs = await remote(['sessions', '--json']);
  t.equal(rs.code, 0, rs.stderr);
  const es = await embedded(['sessions', '--json']);
  const strip = (j: Record<string, unknown>): unknown =>
    (j.sessions as Array<Record<string, unknown>>).map(({ ageSeconds: _a, ...s }) => s);
  t.equal((rs.json.sessions as unknown[]).length, 1);
  t.same(strip(rs.json), strip(es.json), 'the same sessions as embedded (age aside, it ticks)');
  t.match(rs.json.sessions, [
    { session: 'sess-remote-1', state: 'stopped', heartbeatSeconds: 12.5, addresses: { nic0: address('prod-lab') } },
  ]);

  for (const args of [
    ['publications', '--json'],
    ['surebackup', 'history', '--json'],
  ]) {
    const r = await remote(args);
    const e = await embedded(args);
    t.equal(r.code, 0, r.stderr);
    t.same(r.json, e.json, `${args.join(' ')}: same document as embedded`);
  }

  // Errors come back with the server's code and message, and the CLI's exit codes.
  const operator = (await server.ctx.tokens.create('cli-operator', 'operator')).token;
  const gone = await remote(['stop', 'no-such-session', '--json'], operator);
  t.equal(gone.code, 5, 'not found exits 5');
  t.match(gone.json, { ok: false, error: { code: 'NOT_FOUND' } });
  t.match(gone.stderr, /server: .*no-such-session/);
  const low = await remote(['stop', 'sess-remote-1']);
  t.equal(low.code, 2, 'a role too low exits 2');
  t.match(low.stderr, /needs operator/);
  t.match(low.stderr, /higher role/);
  const stopped = await remote(['stop', 'sess-remote-1', '--json'], operator);
  t.equal(stopped.code, 0, stopped.stderr);
  t.same(stopped.json, { session: 'sess-remote-1', vm: 'web', state: 'stopped' }, 'stop is idempotent, as embedded');

  const viaEnv = await cli(['points', '--json'], { RESTORELAB_HOME: elsewhere, RESTORELAB_SERVER: server.url, RESTORELAB_TOKEN: viewer });
  t.equal(viaEnv.code, 0, viaEnv.stderr);
  t.same(viaEnv.json, rp.json, 'RESTORELAB_SERVER and RESTORELAB_TOKEN work like the flags');
});

t.test('a wrong token, no token, no server, an unsupported command', async (t) => {
  const home = mkdtempSync(join(tmpdir(), 'rl-remote-auth-'));
  t.teardown(() => rmSync(home, { recursive: true, force: true }));
  const config = loadConfig({ env: { RESTORELAB_HOME: home } });
  const server = await startApiServer({
    config,
    jobsDir: join(home, 'jobs'),
    log: pino({ level: 'silent' }),
    listen: '127.0.0.1',
    port: 0,
  });
  t.teardown(() => server.close());
  const env = { RESTORELAB_HOME: home };

  const wrong = await cli(['--server', server.url, '--token', 'rl_0123456789ab_' + 'A'.repeat(43), 'sessions'], env);
  t.equal(wrong.code, 2, 'a refused token exits 2 (bad input)');
  t.match(wrong.stderr, /error: server: the bearer token is not valid/);
  t.match(wrong.stderr, /fix: check --token/);
  t.notMatch(wrong.stderr, /AAAAAAAAAA/, 'the token is not echoed');
  const wrongJson = await cli(['--server', server.url, '--token', 'nonsense', 'sessions', '--json'], env);
  t.match(wrongJson.json, { ok: false, error: { code: 'UNAUTHENTICATED' } });

  const noToken = await cli(['--server', server.url, 'sessions'], env);
  t.equal(noToken.code, 2);
  t.match(noToken.stderr, /a token is needed/);

  const token = (await server.ctx.tokens.create('cli', 'admin')).token;
  const backup = await cli(['--server', server.url, '--token', token, 'backup', '--json'], env);
  t.equal(backup.code, 2, 'a command without remote support is refused');
  t.match(backup.json, { ok: false, error: { code: 'REMOTE_UNSUPPORTED' } });
  t.match(backup.stderr, /`restorelab backup` cannot run against a server/);
  t.match(backup.stderr, /commands that work remotely: points, publications, recover, sessions, stop, surebackup history, surebackup run/);
  const nested = await cli(['--server', server.url, '--token', token, 'repo', 'init', '/tmp/x'], env);
  t.match(nested.stderr, /`restorelab repo init` cannot run/, 'subcommands are named in full');
  const repoFlag = await cli(['--server', server.url, '--token', token, 'points', '--repo', '/elsewhere'], env);
  t.equal(repoFlag.code, 2);
  t.match(repoFlag.stderr, /--repo names something on this host/);
  const nfs = await cli(['--server', server.url, '--token', token, 'recover', 'web', '--publish', 'nfs'], env);
  t.equal(nfs.code, 2, 'recover --publish nfs is embedded only');
  t.match(nfs.stderr, /the server holds the host's NFS ports/);
  // Host commands keep working with the server only in the environment.
  const local = await cli(['token', 'list', '--json'], { ...env, RESTORELAB_SERVER: server.url });
  t.equal(local.code, 0, local.stderr);
  t.ok(Array.isArray(local.json.tokens), 'token list ran embedded, with no token needed');
  const explicit = await cli(['--server', server.url, '--token', token, 'token', 'list'], env);
  t.equal(explicit.code, 2, 'given --server explicitly, a host command is refused');
  t.match(explicit.stderr, /`restorelab token list` cannot run against a server/);

  const url = server.url;
  await server.close();
  const down = await cli(['--server', url, '--token', token, 'sessions'], env);
  t.equal(down.code, 1);
  t.match(down.stderr, /cannot reach the restorelab server at http:\/\/127\.0\.0\.1:\d+: ECONNREFUSED/);
});

t.test('the client follows a long operation over SSE to its result or its error', async (t) => {
  const home = mkdtempSync(join(tmpdir(), 'rl-remote-op-'));
  t.teardown(() => rmSync(home, { recursive: true, force: true }));
  const config = loadConfig({ env: { RESTORELAB_HOME: home } });
  const server = await startApiServer({
    config,
    jobsDir: join(home, 'jobs'),
    log: pino({ level: 'silent' }),
    listen: '127.0.0.1',
    port: 0,
  });
  t.teardown(() => server.close());
  const api = new ApiClient({ url: server.url, token: (await server.ctx.tokens.create('op', 'viewer')).token, explicit: true });
  const tick = (): Promise<void> => new Promise((r) => setTimeout(r, 30));

  const ok = server.ctx.operations.start('demo', 'test', async (o) => {
    o.progress(0.25, 'a quarter');
    await tick();
    o.log('halfway there');
    await tick();
    o.progress(0.75, 'three quarters');
    return { result: { answer: 42 } };
  });
  const seen: Array<{ fraction: number | null; message: string }> = [];
  t.same(await api.follow(ok as RemoteOperation, (e) => seen.push(e)), { answer: 42 }, 'the result');
  t.same(
    seen,
    [
      { fraction: 0.25, message: 'a quarter' },
      { fraction: null, message: 'halfway there' },
      { fraction: 0.75, message: 'three quarters' },
    ],
    'every event in order, once',
  );
  // An operation that already ended is replayed, not waited for.
  t.same(await api.follow(ok as RemoteOperation, () => undefined), { answer: 42 });

  const bad = server.ctx.operations.start('demo', 'test', async () => {
    await tick();
    throw new RestorelabError('NO_HEARTBEAT', 'no heartbeat from web', { hint: 'look at the console screenshot' });
  });
  await t.rejects(
    api.follow(bad as RemoteOperation, () => undefined),
    { name: 'RestorelabError', code: 'NO_HEARTBEAT', message: 'server: no heartbeat from web', hint: 'look at the console screenshot' },
  );
  // A failed operation exits as the command does embedded: an infected point 3 (its status 422 in the operation's error).
  const infected = server.ctx.operations.start('demo', 'test', async () => {
    await tick();
    throw new RestorelabError('POINT_INFECTED', 'restore point p of web is infected');
  });
  await t.rejects(
    api.follow(infected as RemoteOperation, () => undefined),
    { code: 'POINT_INFECTED', exitCode: 3 },
  );
  t.match(server.ctx.operations.get(infected.id)?.error, { code: 'POINT_INFECTED', status: 422 });
  const unknown = server.ctx.operations.start('demo', 'test', async () => {
    await tick();
    throw RestorelabError.revive({ code: 'NEWER_SERVER_CODE', message: 'a code of a newer build', exitCode: 5 });
  });
  await t.rejects(
    api.follow(unknown as RemoteOperation, () => undefined),
    { code: 'NEWER_SERVER_CODE', exitCode: 5 },
    'by its status',
  );
});

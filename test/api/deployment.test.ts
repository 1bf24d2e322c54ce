/**
 * What docs/operations.md "Running the server" ships: the systemd unit, the
 * example config, and the daemon started the way the unit starts it
 * (`restorelab.js server` with RESTORELAB_CONFIG), over TLS, driven by the
 * remote CLI and scraped for metrics with a bearer token.
 */
import t from 'tap';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig } from '../../src/config/config.js';
import { projectPath } from '../../src/paths.js';
import { which } from '../../src/host/exec.js';

const unitText = readFileSync(projectPath('config', 'restorelab.service'), 'utf8');
const unit = new Map<string, string[]>();
for (const line of unitText.split('\n')) {
  const m = /^([A-Za-z]+)=(.*)$/.exec(line.trim());
  if (m) unit.set(m[1] as string, [...(unit.get(m[1] as string) ?? []), m[2] as string]);
}

t.test('the systemd unit', async (t) => {
  t.match(unit.get('ExecStart'), [/^\/usr\/bin\/node \/opt\/restorelab\/bin\/restorelab\.js server$/]);
  t.same(unit.get('Restart'), ['on-failure']);
  t.same(unit.get('EnvironmentFile'), ['-/etc/restorelab/env'], 'the environment file, optional');
  t.ok(unit.get('Environment')?.includes('RESTORELAB_CONFIG=/etc/restorelab/server.json'));
  t.same(unit.get('KillMode'), ['process'], "a restart must not kill the recovery sessions' supervisors");
  // Each of these gives the service its own mount namespace (FUSE and loop
  // mounts invisible to the host) or blocks namespaces, devices or the JIT.
  for (const k of [
    'ProtectSystem',
    'ProtectHome',
    'PrivateTmp',
    'PrivateDevices',
    'ReadWritePaths',
    'ReadOnlyPaths',
    'ProtectKernelTunables',
    'ProtectKernelModules',
    'ProtectControlGroups',
    'ProtectClock',
    'PrivateNetwork',
    'RestrictNamespaces',
    'MemoryDenyWriteExecute',
    'DevicePolicy',
    'PrivateMounts',
  ]) {
    t.notOk(unit.has(k), `${k} is not set`);
  }
  const analyze = which('systemd-analyze');
  if (!analyze) throw new Error('missing systemd-analyze (apt-get install systemd)');
  const dir = mkdtempSync(join(tmpdir(), 'rl-unit-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'restorelab.service'), unitText);
  const v = spawnSync(analyze, ['verify', join(dir, 'restorelab.service')], { encoding: 'utf8' });
  t.equal(v.status, 0, v.stderr);
  t.equal(v.stderr.trim(), '', 'systemd-analyze verify has nothing to say');
});

t.test('the example config is valid and docs/operations.md documents every key', async (t) => {
  const cfg = loadConfig({ file: projectPath('config', 'server.example.json'), env: {} });
  t.equal(cfg.server.tlsCert, '/etc/restorelab/tls/server.crt');
  t.equal(cfg.stateDir, '/var/lib/restorelab/state');
  const docs = readFileSync(projectPath('docs', 'operations.md'), 'utf8');
  const schema = JSON.parse(readFileSync(projectPath('config', 'schemas', 'config.schema.json'), 'utf8')) as {
    properties: Record<string, { properties?: Record<string, unknown> }>;
  };
  for (const [k, v] of Object.entries(schema.properties)) {
    if (k === '$schema') continue;
    const keys = v.properties ? Object.keys(v.properties).map((c) => `${k}.${c}`) : [k];
    for (const key of keys)
      t.ok(docs.includes(`\`${key}\``) || (v.properties !== undefined && docs.includes(`\`${k}.*\``)), `${key} is documented`);
  }
});

interface Proc {
  code: number | null;
  stdout: string;
  stderr: string;
}
function run(args: string[], env: Record<string, string>): Promise<Proc> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [projectPath('bin', 'restorelab.js'), ...args], {
      env: { ...cleanEnv(), ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (c: Buffer) => {
      stdout += c.toString();
    });
    p.stderr.on('data', (c: Buffer) => {
      stderr += c.toString();
    });
    p.on('error', reject);
    p.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}
function cleanEnv(): Record<string, string> {
  return Object.fromEntries(
    Object.entries(process.env).filter(([k, v]) => !k.startsWith('RESTORELAB_') && k !== 'NODE_EXTRA_CA_CERTS' && v !== undefined),
  ) as Record<string, string>;
}

t.test('the daemon as the unit starts it: TLS, a token, the remote CLI, a metrics scrape, SIGTERM', async (t) => {
  const openssl = which('openssl');
  if (!openssl) throw new Error('missing openssl (apt-get install openssl)');
  const home = mkdtempSync(join(tmpdir(), 'rl-deploy-'));
  t.teardown(() => rmSync(home, { recursive: true, force: true }));
  const cert = join(home, 'server.crt');
  const key = join(home, 'server.key');
  const gen = spawnSync(
    openssl,
    [
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-days',
      '2',
      '-subj',
      '/CN=127.0.0.1',
      '-addext',
      'subjectAltName=IP:127.0.0.1',
      '-keyout',
      key,
      '-out',
      cert,
    ],
    { encoding: 'utf8' },
  );
  t.equal(gen.status, 0, gen.stderr);
  const example = JSON.parse(readFileSync(projectPath('config', 'server.example.json'), 'utf8')) as Record<string, unknown>;
  const configFile = join(home, 'server.json');
  writeFileSync(
    configFile,
    JSON.stringify({
      ...example,
      $schema: undefined,
      repository: join(home, 'repo'),
      stateDir: join(home, 'state'),
      guestsDir: join(home, 'guests'),
      server: { listen: '127.0.0.1', port: 0, tlsCert: cert, tlsKey: key },
    }),
  );
  const env = { RESTORELAB_HOME: home, RESTORELAB_CONFIG: configFile, RESTORELAB_JOBS_DIR: join(home, 'jobs') };

  const made = await run(['token', 'create', 'prometheus', '--role', 'viewer', '--json'], env);
  t.equal(made.code, 0, made.stderr);
  const token = (JSON.parse(made.stdout) as { token: string }).token;

  const daemon: ChildProcess = spawn(
    process.execPath,
    [projectPath('bin', 'restorelab.js'), 'server', '--no-nfs', '--no-schedule', '--json'],
    { env: { ...cleanEnv(), ...env }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let logs = '';
  daemon.stderr?.on('data', (c: Buffer) => {
    logs += c.toString();
  });
  const exited = new Promise<number | null>((resolve) => daemon.on('close', resolve));
  t.teardown(() => {
    if (daemon.exitCode === null) daemon.kill('SIGKILL');
  });
  const started = await new Promise<{ api: { url: string; tls: boolean } }>((resolve, reject) => {
    let out = '';
    daemon.stdout?.on('data', (c: Buffer) => {
      out += c.toString();
      if (out.includes('\n')) resolve(JSON.parse(out) as { api: { url: string; tls: boolean } });
    });
    void exited.then((code) => reject(new Error(`server exited ${code}: ${logs}`)));
  });
  t.equal(started.api.tls, true);
  t.match(started.api.url, /^https:\/\/127\.0\.0\.1:\d+$/);

  const remote = (extra: Record<string, string>): Promise<Proc> =>
    run(['--server', started.api.url, '--token', token, 'sessions', '--json'], { RESTORELAB_HOME: join(home, 'client'), ...extra });
  const untrusted = await remote({});
  t.equal(untrusted.code, 1, 'a self-signed certificate is not trusted by default');
  t.match(untrusted.stderr, /cannot reach the restorelab server .*(SELF_SIGNED|CERT)/);
  t.match(untrusted.stderr, /NODE_EXTRA_CA_CERTS/);
  const trusted = await remote({ NODE_EXTRA_CA_CERTS: cert });
  t.equal(trusted.code, 0, trusted.stderr);
  t.same(JSON.parse(trusted.stdout), { sessions: [] });

  const scrape = (auth?: string): Promise<{ status: number; body: string }> =>
    new Promise((resolve, reject) => {
      const req = request(`${started.api.url}/metrics`, { ca: readFileSync(cert), headers: auth ? { authorization: auth } : {} }, (res) => {
        let body = '';
        res.on('data', (c: Buffer) => {
          body += c.toString();
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      });
      req.on('error', reject);
      req.end();
    });
  t.equal((await scrape()).status, 401, 'no scrape without a token');
  const m = await scrape(`Bearer ${token}`);
  t.equal(m.status, 200);
  for (const name of [
    'restorelab_publications',
    'restorelab_nfs_bytes_total',
    'restorelab_fuse_ops_total',
    'restorelab_chunk_cache_hit_ratio',
    'restorelab_recovery_seconds_bucket',
  ]) {
    t.match(m.body, new RegExp(`^# TYPE ${name.replace(/_bucket$/, '')} `, 'm'), `${name} is exposed`);
  }

  daemon.kill('SIGTERM');
  t.equal(await exited, 0, 'SIGTERM stops the server cleanly (what systemctl stop sends)');
  const lines = logs
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
  t.ok(
    lines.some((l) => l.msg === 'API listening'),
    'pino JSON lines on stderr',
  );
  t.notMatch(logs, new RegExp(token.slice(-20)), 'the token is in no log line');
});

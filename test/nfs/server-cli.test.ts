/**
 * `restorelab server` serves the publications recorded in the state
 * directory over NFS, with the server id that file handles carry.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { startPublication } from '../../src/publish/publish.js';
import { projectPath } from '../../src/paths.js';
import { requireTool, run } from './fixtures/harness.js';
import { backedUpGuest, sha } from './fixtures/published-guest.js';
import fs from 'node:fs';

t.test('restorelab server exports a stopped publication and stops on SIGTERM', async (t) => {
  requireTool('nfs-ls');
  const g = await backedUpGuest('web');
  t.teardown(g.cleanup);
  const pub = await startPublication({ repo: g.repo.path, point: g.point, stateDir: g.stateDir }, { repository: g.repo });
  await pub.close();

  const env = { ...process.env, RESTORELAB_STATE_DIR: g.stateDir, RESTORELAB_REPO: g.repo.path };
  const child = spawn(
    process.execPath,
    [
      projectPath('bin', 'restorelab.js'),
      '--json',
      'server',
      '--nfs-port',
      '0',
      '--mount-port',
      '0',
      '--portmap-port',
      '0',
      '--no-schedule',
      '--port',
      '0',
    ],
    { env, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  let out = '';
  let err = '';
  child.stderr.on('data', (d: Buffer) => {
    err += d.toString();
  });
  const line = await new Promise<string>((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('\n')) resolve(out.split('\n')[0] ?? '');
    });
    child.on('exit', (code) => reject(new Error(`server exited ${code}: ${err}`)));
    setTimeout(() => reject(new Error(`server did not report within 60 s: ${err}`)), 60_000);
  });
  const started = JSON.parse(line) as { nfs: { port: number; mountPort: number; publications: string[] }; api: { url: string } };
  t.same(started.nfs.publications, [pub.id], 'the recorded publication is served');
  const health = await fetch(`${started.api.url}/healthz`);
  t.equal(health.status, 200, 'the API answers /healthz');
  t.equal((await fetch(`${started.api.url}/api/v1/publications`)).status, 401, 'and refuses the API without a token');
  const q = `?nfsport=${started.nfs.port}&mountport=${started.nfs.mountPort}`;
  const ls = await run('nfs-ls', [`nfs://127.0.0.1/restorelab/${pub.name}${q}`]);
  t.equal(ls.code, 0, ls.stderr);
  t.match(ls.stdout.toString(), /root\.raw/);
  const cat = await run('nfs-cat', [`nfs://127.0.0.1/restorelab/${pub.name}/root.raw${q}`], undefined, 120_000);
  t.equal(sha(cat.stdout), sha(fs.readFileSync(g.image)), 'the disk reads back through the server');

  child.kill('SIGTERM');
  const [code] = (await once(child, 'exit')) as [number | null];
  t.equal(code, 0, `server stops cleanly on SIGTERM: ${err}`);
});

t.test('restorelab server rejects a bad port with exit 2', async (t) => {
  const r = await run(process.execPath, [projectPath('bin', 'restorelab.js'), '--json', 'server', '--nfs-port', 'x'], undefined, 30_000);
  t.equal(r.code, 2);
  t.match(JSON.parse(r.stdout.toString()), { ok: false, error: { code: 'BAD_PORT' } });
});

t.test('restorelab publish --nfs --background prints a usable nfs:// URL; unpublish stops it', async (t) => {
  requireTool('nfs-cat');
  const g = await backedUpGuest('web');
  t.teardown(g.cleanup);
  const env = { ...process.env, RESTORELAB_STATE_DIR: g.stateDir, RESTORELAB_REPO: g.repo.path };
  const cli = (args: string[]) =>
    new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
      const c = spawn(process.execPath, [projectPath('bin', 'restorelab.js'), '--json', ...args], {
        env,
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let stdout = '';
      let stderr = '';
      c.stdout.on('data', (d: Buffer) => {
        stdout += d.toString();
      });
      c.stderr.on('data', (d: Buffer) => {
        stderr += d.toString();
      });
      c.on('exit', (code) => resolve({ code, stdout, stderr }));
    });
  const none = await cli(['publish', g.point]);
  t.equal(none.code, 2, 'publish without --fuse or --nfs is bad input');
  t.match(JSON.parse(none.stdout), { error: { code: 'PUBLISH_NO_FRONTEND' } });

  const r = await cli(['publish', g.point, '--nfs', '--nfs-port', '0', '--mount-port', '0', '--portmap-port', '0', '--background']);
  t.equal(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout) as { publication: string; nfs: { port: number; export: string; url: string } };
  t.teardown(() => cli(['unpublish', out.publication, '--discard']));
  t.match(out.nfs.url, new RegExp(`^nfs://127\\.0\\.0\\.1/restorelab/${out.publication}/root\\.raw\\?nfsport=\\d+&mountport=\\d+$`));
  const cat = await run('nfs-cat', [out.nfs.url], undefined, 120_000);
  t.equal(cat.code, 0, cat.stderr);
  t.equal(sha(cat.stdout), sha(fs.readFileSync(g.image)), 'the URL serves the backed-up disk');
  const un = await cli(['unpublish', out.publication, '--discard']);
  t.equal(un.code, 0, un.stderr);
  const again = await run('nfs-ls', [out.nfs.url.replace('/root.raw', '')]);
  t.not(again.code, 0, 'nothing serves the export after unpublish');
});

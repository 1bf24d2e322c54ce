/**
 * scripts/services against the real daemons: the Ceph RADOS Gateway answers
 * S3 with the credentials `up --json` printed (and refuses a wrong secret),
 * PostgreSQL 15 takes the restorelab role's login over TCP, `status` sees
 * every daemon, and `up` again is quick and prints the same credentials.
 *
 * The shared services are left running (the `services` pool's teardown stops
 * them). The stop/restart/purge cycle runs on a second, private state
 * directory with its own ports.
 */
import t from 'tap';
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { chmodSync, existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import {
  DeleteObjectCommand,
  GetObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  S3ServiceException,
} from '@aws-sdk/client-s3';
import { SERVICES_SCRIPT, services, type Services } from '../helpers/services.js';

const exec = promisify(execFile);

interface Status {
  state: string;
  daemons: Record<string, { up: boolean; pid: number | null; log: string }>;
}
const DAEMONS = ['postgres', 'ceph-mon', 'ceph-osd', 'radosgw'];

async function script(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ stdout: string; stderr: string; code: number }> {
  try {
    const r = await exec(SERVICES_SCRIPT, args, { encoding: 'utf8', timeout: 600_000, env: { ...process.env, ...env } });
    return { ...r, code: 0 };
  } catch (e) {
    const err = e as { stdout: string; stderr: string; code: number };
    return { stdout: err.stdout, stderr: err.stderr, code: err.code };
  }
}

/** A loopback TCP port nothing listens on right now (the kernel picks it). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

function s3Of(svc: Services, secret = svc.s3.secretAccessKey): S3Client {
  return new S3Client({
    endpoint: svc.s3.endpoint,
    region: 'us-east-1',
    forcePathStyle: true,
    credentials: { accessKeyId: svc.s3.accessKeyId, secretAccessKey: secret },
    maxAttempts: 1,
  });
}

t.test('up --json prints exactly the interface scripts depend on', async (t) => {
  const r = await script(['up', '--json']);
  t.equal(r.code, 0, `up --json succeeds: ${r.stderr}`);
  const out = JSON.parse(r.stdout) as { s3: Record<string, unknown>; postgres: Record<string, unknown> };
  t.same(Object.keys(out).sort(), ['postgres', 's3']);
  t.same(Object.keys(out.s3).sort(), ['accessKeyId', 'bucket', 'endpoint', 'secretAccessKey']);
  t.same(Object.keys(out.postgres), ['url']);
  t.match(out.s3.endpoint, /^http:\/\/127\.0\.0\.1:\d+$/, 'S3 on loopback');
  t.match(
    out.postgres.url,
    /^postgres:\/\/restorelab:[0-9a-f]{48}@127\.0\.0\.1:\d+\/restorelab$/,
    'PostgreSQL on loopback, role restorelab',
  );
  t.equal(out.s3.bucket, 'restorelab');
  // Under the services pool, its own ports (test/pools.json env), not the defaults.
  t.equal(new URL(String(out.s3.endpoint)).port, process.env.RESTORELAB_S3_PORT ?? '7480', 'the S3 port asked for');
  t.equal(new URL(String(out.postgres.url)).port, process.env.RESTORELAB_PG_PORT ?? '54329', 'the PostgreSQL port asked for');
});

t.test('S3 on the RADOS Gateway: put, list, get, delete round trip; a wrong secret gets 403', async (t) => {
  const svc = await services();
  const s3 = s3Of(svc);
  t.teardown(() => s3.destroy());
  const prefix = `test/services/${randomUUID()}/`;
  const body = Buffer.alloc(3 * 1024 * 1024 + 17);
  for (let i = 0; i < body.length; i++) body[i] = (i * 31 + 7) & 0xff;

  await s3.send(new PutObjectCommand({ Bucket: svc.s3.bucket, Key: `${prefix}a`, Body: body }));
  await s3.send(new PutObjectCommand({ Bucket: svc.s3.bucket, Key: `${prefix}b`, Body: 'small' }));
  const list = await s3.send(new ListObjectsV2Command({ Bucket: svc.s3.bucket, Prefix: prefix }));
  t.same(
    list.Contents?.map((o) => [o.Key, o.Size]),
    [
      [`${prefix}a`, body.length],
      [`${prefix}b`, 5],
    ],
    'ListObjectsV2 shows both objects with their sizes',
  );
  const got = await s3.send(new GetObjectCommand({ Bucket: svc.s3.bucket, Key: `${prefix}a` }));
  t.ok(Buffer.from(await got.Body!.transformToByteArray()).equals(body), 'GetObject returns the bytes put');
  const range = await s3.send(new GetObjectCommand({ Bucket: svc.s3.bucket, Key: `${prefix}a`, Range: 'bytes=1048576-1048583' }));
  t.ok(
    Buffer.from(await range.Body!.transformToByteArray()).equals(body.subarray(1048576, 1048584)),
    'a ranged GetObject returns that range',
  );

  for (const k of ['a', 'b']) await s3.send(new DeleteObjectCommand({ Bucket: svc.s3.bucket, Key: `${prefix}${k}` }));
  const after = await s3.send(new ListObjectsV2Command({ Bucket: svc.s3.bucket, Prefix: prefix }));
  t.equal(after.KeyCount, 0, 'nothing left under the prefix after DeleteObject');
  const missing = await s3.send(new GetObjectCommand({ Bucket: svc.s3.bucket, Key: `${prefix}a` })).catch((e: unknown) => e);
  t.ok(missing instanceof S3ServiceException && missing.$metadata.httpStatusCode === 404, 'a deleted object is 404');

  const wrong = s3Of(svc, `${svc.s3.secretAccessKey.slice(0, -4)}XXXX`);
  t.teardown(() => wrong.destroy());
  const refused = await wrong.send(new ListObjectsV2Command({ Bucket: svc.s3.bucket })).catch((e: unknown) => e);
  t.ok(refused instanceof S3ServiceException, 'a wrong secret is refused');
  t.equal((refused as S3ServiceException).$metadata.httpStatusCode, 403, 'with 403');
  const anonymous = await fetch(`${svc.s3.endpoint}/${svc.s3.bucket}?list-type=2`);
  t.equal(anonymous.status, 403, 'the bucket is not readable without credentials');
});

t.test('PostgreSQL 15: the restorelab role logs in over TCP; a wrong password does not', async (t) => {
  const svc = await services();
  const client = new pg.Client({ connectionString: svc.postgres.url });
  await client.connect();
  t.teardown(() => client.end());
  const r = await client.query<{ user: string; db: string; addr: string; version: string }>(
    'SELECT current_user AS user, current_database() AS db, host(inet_server_addr()) AS addr, current_setting($1) AS version',
    ['server_version_num'],
  );
  const row = r.rows[0]!;
  t.same(row.user, 'restorelab');
  t.same(row.db, 'restorelab');
  t.same(row.addr, '127.0.0.1', 'reached over TCP on loopback');
  t.equal(Math.floor(Number(row.version) / 10000), 15, 'PostgreSQL 15');
  const table = `t_${randomUUID().replace(/-/g, '')}`;
  await client.query(`CREATE TEMP TABLE ${table} (n int)`);
  await client.query(`INSERT INTO ${table} VALUES (41), (1)`);
  t.equal((await client.query<{ s: string }>(`SELECT sum(n) AS s FROM ${table}`)).rows[0]?.s, '42', 'the role can create and query');

  const url = new URL(svc.postgres.url);
  url.password = 'not-the-password';
  const bad = new pg.Client({ connectionString: url.toString() });
  const err = await bad.connect().catch((e: unknown) => e);
  await bad.end().catch(() => {});
  t.match(String(err), /password authentication failed/, 'a wrong password is refused');
});

t.test('status --json sees every daemon up; the state and credentials are owner-only', async (t) => {
  await services();
  const r = await script(['status', '--json']);
  t.equal(r.code, 0, 'status exits 0 when all are up');
  const st = JSON.parse(r.stdout) as Status;
  t.same(Object.keys(st.daemons), DAEMONS);
  for (const d of DAEMONS) {
    const one = st.daemons[d];
    t.equal(one?.up, true, `${d} up`);
    t.ok(one?.pid && existsSync(`/proc/${one.pid}`), `${d} pid is a live process`);
  }
  t.equal(statSync(st.state).mode & 0o777, 0o710, 'state directory: root rwx, only the postgres group may pass through');
  t.equal(statSync(join(st.state, 'credentials.json')).mode & 0o777, 0o600, 'credentials file 0600');
});

t.test('up when already up is quick and prints the same credentials', async (t) => {
  const first = await services();
  const t0 = Date.now();
  const again = await services();
  const ms = Date.now() - t0;
  t.same(again, first, 'same endpoint and credentials');
  t.ok(ms < 10_000, `second up took ${ms} ms (< 10 s)`);
});

// A private cluster: its own state directory and ports, so stopping it
// touches nothing the shared services or other files use.
t.test('down stops every daemon and keeps the data; up restarts with the same credentials; down --purge deletes the state', async (t) => {
  const parent = mkdtempSync(join(tmpdir(), 'rl-services-'));
  chmodSync(parent, 0o711); // the postgres user passes through to its data directory
  const dir = join(parent, 'state');
  const [s3Port, pgPort, monPort] = [await freePort(), await freePort(), await freePort()];
  const env = {
    RESTORELAB_SERVICES_DIR: dir,
    RESTORELAB_S3_PORT: String(s3Port),
    RESTORELAB_PG_PORT: String(pgPort),
    RESTORELAB_CEPH_MON_PORT: String(monPort),
    RESTORELAB_CEPH_OSD_GIB: '4',
  };
  t.teardown(async () => {
    await script(['down', '--purge'], env);
    rmSync(parent, { recursive: true, force: true });
  });
  const up1 = await script(['up', '--json'], env);
  t.equal(up1.code, 0, `up in a fresh directory: ${up1.stderr}`);
  const creds = JSON.parse(up1.stdout) as Services;
  t.equal(creds.s3.endpoint, `http://127.0.0.1:${s3Port}`, 'the port from the environment');

  const before = JSON.parse((await script(['status', '--json'], env)).stdout) as Status;
  const down = await script(['down'], env);
  t.equal(down.code, 0, `down succeeds: ${down.stderr}`);
  for (const d of DAEMONS) {
    const pid = before.daemons[d]?.pid;
    t.ok(pid && !existsSync(`/proc/${pid}`), `${d} (pid ${pid}) has exited`);
  }
  const st = await script(['status', '--json'], env);
  t.equal(st.code, 3, 'status exits 3 when a daemon is down');
  t.same(
    Object.values((JSON.parse(st.stdout) as Status).daemons).map((d) => d.up),
    [false, false, false, false],
    'all reported down',
  );
  const block = statSync(join(dir, 'ceph', 'osd', 'ceph-0', 'block'));
  t.equal(block.size, 4 * 1024 ** 3, 'the OSD file is kept, 4 GiB as asked');
  t.ok(block.blocks * 512 < 1024 ** 3, `and sparse (${Math.round((block.blocks * 512) / 1024 ** 2)} MiB allocated)`);

  const up2 = await script(['up', '--json'], env);
  t.equal(up2.code, 0, `up again from the kept data: ${up2.stderr}`);
  t.same(JSON.parse(up2.stdout), creds, 'same credentials after a restart');
  const otherPort = await script(['up'], { ...env, RESTORELAB_S3_PORT: String(s3Port + 1) });
  t.equal(otherPort.code, 1, 'a different port for existing state is refused');
  t.match(otherPort.stderr, new RegExp(`RESTORELAB_S3_PORT=${s3Port + 1}.*created with ${s3Port}.*down --purge`));

  const purge = await script(['down', '--purge'], env);
  t.equal(purge.code, 0);
  t.notOk(existsSync(dir), 'down --purge deletes the state directory');
});

t.test('a missing program names its Debian package and scripts/setup', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'rl-services-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const r = await script(['up'], { RESTORELAB_SERVICES_DIR: join(dir, 'state'), RESTORELAB_PG_BIN: join(dir, 'no-such-bin') });
  t.equal(r.code, 1);
  t.match(r.stderr, /missing Debian package postgresql-15 \(no initdb, pg_ctl\): run scripts\/setup/);
  t.notOk(existsSync(join(dir, 'state')), 'nothing created');
});

t.test('bad usage is refused with the usage line', async (t) => {
  const r = await script(['up', '--bogus']);
  t.equal(r.code, 2);
  t.match(r.stderr, /usage: scripts\/services up/);
});

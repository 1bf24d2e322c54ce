#!/usr/bin/env node
// scripts/services: the distributed engines restorelab scales out on, on this
// one host, for tests and for the demo of that mode (issue 19):
//
//   - a single-node Ceph cluster (one monitor, one bluestore OSD on a sparse
//     file) with its RADOS Gateway answering S3 on 127.0.0.1;
//   - a PostgreSQL 15 cluster on 127.0.0.1 with a `restorelab` role and
//     database, for the shared catalog.
//
//   scripts/services up [--json]       start (creating on first use); print endpoint and credentials
//   scripts/services down [--purge]    stop what up started (--purge: also delete the state)
//   scripts/services status [--json]   each daemon up or down
//
// State lives in var/services/ of the checkout (RESTORELAB_SERVICES_DIR
// overrides). Ports are chosen when the state is created and kept in
// settings.json: RESTORELAB_S3_PORT (7480), RESTORELAB_PG_PORT (54329),
// RESTORELAB_CEPH_MON_PORT (3300), and the OSD file's size, RESTORELAB_CEPH_OSD_GIB
// (8, sparse). RESTORELAB_SERVICES_TIMEOUT bounds each
// wait for a daemon, in seconds (180).
//
// Plain Node, no build step: tests and users call it before `npm run build`.
// Nothing here reads or writes /etc/ceph or the system PostgreSQL clusters:
// every Ceph command gets `-c <state>/ceph/ceph.conf`, and PostgreSQL runs
// from its own data directory.
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import {
  chmodSync,
  chownSync,
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

// The AWS SDK warns on stderr that its 2027 releases want Node 22; this
// script is pinned by package-lock.json, and the noise hides real errors.
process.removeAllListeners('warning');
process.on('warning', (w) => {
  if (!`${w.name} ${w.message}`.includes('NodeVersionSupportWarning')) process.stderr.write(`${w.name}: ${w.message}\n`);
});

const root = fileURLToPath(new URL('..', import.meta.url));
const STATE = process.env.RESTORELAB_SERVICES_DIR || join(root, 'var', 'services');
const TIMEOUT_MS = Number(process.env.RESTORELAB_SERVICES_TIMEOUT || 180) * 1000;
// Debian's place for PostgreSQL 15's server programs (RESTORELAB_PG_BIN for another layout).
const PG_BIN = process.env.RESTORELAB_PG_BIN || '/usr/lib/postgresql/15/bin';
const BUCKET = 'restorelab';

const CEPH = join(STATE, 'ceph');
const CONF = join(CEPH, 'ceph.conf');
const RUN = join(CEPH, 'run');
const LOGS = join(CEPH, 'log');
const PGDIR = join(STATE, 'postgres');
const PGDATA = join(PGDIR, 'data');
const PGLOG = join(PGDIR, 'postgres.log');

class ServicesError extends Error {}
/** A daemon known dead: waitFor stops polling at once. */
class DaemonDied extends ServicesError {}
const fail = (msg) => {
  throw new ServicesError(msg);
};

// ---------------------------------------------------------------- small chores

/** Which Debian package brings each program we run (scripts/setup installs them all). */
const PROGRAMS = {
  'ceph-mon': ['/usr/bin/ceph-mon', 'ceph-mon'],
  'ceph-osd': ['/usr/bin/ceph-osd', 'ceph-osd'],
  radosgw: ['/usr/bin/radosgw', 'radosgw'],
  'radosgw-admin': ['/usr/bin/radosgw-admin', 'ceph-common'],
  ceph: ['/usr/bin/ceph', 'ceph-common'],
  'ceph-authtool': ['/usr/bin/ceph-authtool', 'ceph-common'],
  monmaptool: ['/usr/bin/monmaptool', 'ceph-base'],
  initdb: [`${PG_BIN}/initdb`, 'postgresql-15'],
  pg_ctl: [`${PG_BIN}/pg_ctl`, 'postgresql-15'],
  psql: ['/usr/bin/psql', 'postgresql-client-15'],
  runuser: ['/usr/sbin/runuser', 'util-linux'],
};
function checkPrograms() {
  const missing = Object.entries(PROGRAMS).filter(([, [path]]) => !existsSync(path));
  if (missing.length) {
    const pkgs = [...new Set(missing.map(([, [, p]]) => p))];
    fail(
      `missing Debian package${pkgs.length > 1 ? 's' : ''} ${pkgs.join(', ')} (no ${missing.map(([n]) => n).join(', ')}): run scripts/setup, or apt-get install ${pkgs.join(' ')}`,
    );
  }
  if (process.getuid() !== 0) fail('scripts/services runs as root: it starts Ceph daemons and runs PostgreSQL as the postgres user');
}

/** Runs a program to completion; throws naming it and its stderr when it fails. */
function run(cmd, args, { input, what, timeout = TIMEOUT_MS, user } = {}) {
  const [file, argv] = user ? ['/usr/sbin/runuser', ['-u', user, '--', cmd, ...args]] : [cmd, args];
  const r = spawnSync(file, argv, { input, encoding: 'utf8', timeout, stdio: ['pipe', 'pipe', 'pipe'], cwd: STATE });
  if (r.error) fail(`${what ?? cmd}: ${r.error.message}`);
  if (r.status !== 0)
    fail(`${what ?? cmd} failed (exit ${r.status ?? r.signal}): ${(r.stderr || r.stdout).trim().split('\n').slice(-5).join('\n')}`);
  return r.stdout;
}
const ceph = (args, opts) => run('/usr/bin/ceph', ['-c', CONF, '--connect-timeout', '10', ...args], { what: `ceph ${args[0]}`, ...opts });

/** write-temp-then-rename, so a crash never leaves half a file (credentials above all). */
function writeAtomic(path, text, mode = 0o600) {
  const tmp = `${path}.tmp${process.pid}`;
  writeFileSync(tmp, text, { mode });
  chmodSync(tmp, mode);
  renameSync(tmp, path);
}
const readJson = (path) => (existsSync(path) ? JSON.parse(readFileSync(path, 'utf8')) : undefined);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
/** A marker per finished one-time step, so an `up` that died half-way resumes where it stopped. */
const done = (step) => existsSync(join(STATE, 'steps', step));
const markDone = (step) => writeAtomic(join(STATE, 'steps', step), `${new Date().toISOString()}\n`, 0o600);

async function waitFor(what, log, probe) {
  const deadline = Date.now() + TIMEOUT_MS;
  let last = '';
  for (;;) {
    try {
      if (await probe()) return;
    } catch (e) {
      if (e instanceof DaemonDied) throw e;
      last = e instanceof Error ? e.message.split('\n')[0] : String(e);
    }
    if (Date.now() > deadline)
      fail(`${what} did not come up within ${TIMEOUT_MS / 1000} s${last ? ` (last: ${last})` : ''}; see its log ${log}`);
    await sleep(300);
  }
}

// ---------------------------------------------------------------- daemons

/**
 * Every daemon `up` starts, in start order: its pid file, the name the kernel
 * shows for it (/proc/PID/comm, so a stale pid file naming a reused pid is
 * not taken for our daemon), its log, and the signal that stops it cleanly.
 */
const DAEMONS = [
  { name: 'postgres', comm: 'postgres', pidFile: join(PGDATA, 'postmaster.pid'), log: PGLOG, stop: 'SIGINT' /* fast shutdown */ },
  { name: 'ceph-mon', comm: 'ceph-mon', pidFile: join(RUN, 'mon.a.pid'), log: join(LOGS, 'mon.a.log'), stop: 'SIGTERM' },
  { name: 'ceph-osd', comm: 'ceph-osd', pidFile: join(RUN, 'osd.0.pid'), log: join(LOGS, 'osd.0.log'), stop: 'SIGTERM' },
  { name: 'radosgw', comm: 'radosgw', pidFile: join(RUN, 'client.rgw.a.pid'), log: join(LOGS, 'client.rgw.a.log'), stop: 'SIGTERM' },
];
const daemon = (name) => DAEMONS.find((d) => d.name === name);

function pidOf(d) {
  if (!existsSync(d.pidFile)) return undefined;
  const pid = Number(readFileSync(d.pidFile, 'utf8').split('\n')[0].trim());
  if (!Number.isInteger(pid) || pid <= 0) return undefined;
  try {
    const comm = readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
    // Ceph names its main thread after the daemon; postgres keeps "postgres".
    return comm.startsWith(d.comm.slice(0, 15)) ? pid : undefined;
  } catch {
    return undefined;
  }
}
const isUp = (d) => pidOf(d) !== undefined;

/**
 * Starts a daemon detached (its own session, stdio to its log) so it
 * outlives this script and the test that ran it, and never holds the
 * caller's pipes open.
 */
function launch(d, cmd, args, user) {
  const fd = openSync(d.log, 'a', 0o600);
  const [file, argv] = user ? ['/usr/sbin/runuser', ['-u', user, '--', cmd, ...args]] : [cmd, args];
  const child = spawn('/usr/bin/setsid', [file, ...argv], { detached: true, stdio: ['ignore', fd, fd], cwd: STATE });
  child.unref();
  closeSync(fd);
  // Ceph daemons fork and the launcher exits 0; a launcher exiting non-zero
  // means the daemon gave up before it forked (bad key, port taken, ...).
  d.launchExit = undefined;
  child.on('exit', (code, signal) => (d.launchExit = code ?? signal));
}

/** Throws at once when the daemon `launch` started is known to have died. */
function checkAlive(d) {
  if (d.launchExit !== undefined && d.launchExit !== 0)
    throw new DaemonDied(`${d.name} exited (${d.launchExit}) while starting; see its log ${d.log}: ${tailOf(d.log)}`);
  if (!isUp(d)) throw new Error(`${d.name} is not running`);
}
function tailOf(log) {
  try {
    const lines = readFileSync(log, 'utf8').trim().split('\n');
    return (
      lines
        .filter((l) => / -1 |error|fail/i.test(l))
        .slice(-2)
        .join(' | ') || lines.at(-1)
    );
  } catch {
    return '(no log)';
  }
}

async function stopDaemon(d) {
  const pid = pidOf(d);
  if (pid === undefined) return false;
  process.kill(pid, d.stop);
  const gone = async (ms) => {
    const deadline = Date.now() + ms;
    while (Date.now() < deadline) {
      if (!existsSync(`/proc/${pid}`)) return true;
      await sleep(100);
    }
    return false;
  };
  if (!(await gone(30_000))) {
    process.kill(pid, 'SIGKILL');
    if (!(await gone(10_000))) fail(`${d.name} (pid ${pid}) survived SIGKILL`);
  }
  return true;
}

// ---------------------------------------------------------------- settings and credentials

function settings() {
  const file = join(STATE, 'settings.json');
  const wanted = {
    s3Port: Number(process.env.RESTORELAB_S3_PORT || 7480),
    pgPort: Number(process.env.RESTORELAB_PG_PORT || 54329),
    monPort: Number(process.env.RESTORELAB_CEPH_MON_PORT || 3300),
  };
  for (const [k, v] of Object.entries(wanted)) if (!Number.isInteger(v) || v < 1 || v > 65535) fail(`${k} ${v} is not a TCP port`);
  wanted.osdGiB = Number(process.env.RESTORELAB_CEPH_OSD_GIB || 8);
  if (!Number.isInteger(wanted.osdGiB) || wanted.osdGiB < 2 || wanted.osdGiB > 4096)
    fail(`RESTORELAB_CEPH_OSD_GIB=${process.env.RESTORELAB_CEPH_OSD_GIB}: the OSD file's size in GiB, 2 to 4096`);
  const have = readJson(file);
  if (have && have.osdGiB === undefined) have.osdGiB = 8; // state made before the size was a setting
  if (!have) {
    writeAtomic(file, `${JSON.stringify(wanted, null, 2)}\n`);
    return wanted;
  }
  // The mon's port is written into the monmap at creation, and the endpoint
  // into what callers were told: a port is fixed for the life of the state.
  for (const [k, env] of [
    ['s3Port', 'RESTORELAB_S3_PORT'],
    ['pgPort', 'RESTORELAB_PG_PORT'],
    ['monPort', 'RESTORELAB_CEPH_MON_PORT'],
    ['osdGiB', 'RESTORELAB_CEPH_OSD_GIB'], // the OSD file is sized at mkfs
  ])
    if (process.env[env] && Number(process.env[env]) !== have[k])
      fail(
        `${env}=${process.env[env]}, but the services in ${STATE} were created with ${have[k]}: scripts/services down --purge to change it`,
      );
  return have;
}

/** Generated once, kept owner-only: the same credentials on every later `up`. */
function credentials(s) {
  const file = join(STATE, 'credentials.json');
  let c = readJson(file);
  if (!c) {
    const alnum = (n) => {
      const abc = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789';
      return [...randomBytes(n)].map((b) => abc[b % abc.length]).join('');
    };
    c = {
      s3: { accessKeyId: alnum(20), secretAccessKey: randomBytes(30).toString('base64').replace(/[+/]/g, 'x'), bucket: BUCKET },
      pgPassword: randomBytes(24).toString('hex'),
    };
    writeAtomic(file, `${JSON.stringify(c, null, 2)}\n`);
  }
  return {
    s3: {
      endpoint: `http://127.0.0.1:${s.s3Port}`,
      accessKeyId: c.s3.accessKeyId,
      secretAccessKey: c.s3.secretAccessKey,
      bucket: c.s3.bucket,
    },
    postgres: { url: `postgres://restorelab:${c.pgPassword}@127.0.0.1:${s.pgPort}/restorelab` },
    pgPassword: c.pgPassword,
  };
}

// ---------------------------------------------------------------- PostgreSQL

async function postgresUp(s, creds) {
  const d = daemon('postgres');
  if (!done('pg-initdb')) {
    rmSync(PGDIR, { recursive: true, force: true });
    mkdirSync(PGDIR, { mode: 0o700 });
    chownSync(PGDIR, pgUser().uid, pgUser().gid);
    // initdb refuses root: the cluster belongs to the postgres system user.
    // Local superuser access by peer (only the postgres user), every TCP
    // login by SCRAM password.
    run(
      `${PG_BIN}/initdb`,
      ['-D', PGDATA, '-U', 'postgres', '-A', 'peer', '--auth-host=scram-sha-256', '-E', 'UTF8', '--locale=C.UTF-8', '--no-instructions'],
      {
        what: 'initdb',
        user: 'postgres',
      },
    );
    markDone('pg-initdb');
  }
  // Rewritten on every up (the port comes from settings.json); included last
  // from postgresql.conf, so these win.
  writeFileSync(
    join(PGDATA, 'restorelab.conf'),
    [
      '# written by scripts/services on every up',
      "listen_addresses = '127.0.0.1'  # loopback only",
      `port = ${s.pgPort}`,
      `unix_socket_directories = '${PGDIR}'  # not /var/run/postgresql: ours alone`,
      'unix_socket_permissions = 0700',
      "password_encryption = 'scram-sha-256'",
      "shared_buffers = '32MB'  # a test catalog; keeps the resident size small",
      'max_connections = 100  # pg-boss workers and parallel tests each hold a few',
      '',
    ].join('\n'),
  );
  const main = join(PGDATA, 'postgresql.conf');
  if (!readFileSync(main, 'utf8').includes("include 'restorelab.conf'"))
    writeFileSync(main, `${readFileSync(main, 'utf8')}\ninclude 'restorelab.conf'\n`);
  writeFileSync(
    join(PGDATA, 'pg_hba.conf'),
    [
      '# written by scripts/services: the superuser only by peer on the socket;',
      '# the restorelab role (which may create databases for tests) by SCRAM.',
      'local all postgres peer',
      'local all restorelab scram-sha-256',
      'host all restorelab 127.0.0.1/32 scram-sha-256',
      '',
    ].join('\n'),
  );
  for (const f of ['restorelab.conf', 'pg_hba.conf']) chownSync(join(PGDATA, f), pgUser().uid, pgUser().gid);

  let logFrom = -1;
  if (!isUp(d)) {
    logFrom = existsSync(PGLOG) ? statSync(PGLOG).size : 0;
    // pg_ctl forks the postmaster and returns; the postmaster writes postmaster.pid.
    const r = spawnSync('/usr/sbin/runuser', ['-u', 'postgres', '--', `${PG_BIN}/pg_ctl`, '-D', PGDATA, '-l', PGLOG, '-W', 'start'], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
      cwd: PGDIR,
    });
    if (r.status !== 0) fail(`postgres did not start (pg_ctl exit ${r.status}): ${r.stderr.trim()}; see its log ${PGLOG}`);
  }
  const psql = (sql) =>
    run('/usr/bin/psql', ['-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-h', PGDIR, '-p', String(s.pgPort), '-d', 'postgres'], {
      input: sql,
      user: 'postgres',
      what: 'psql',
      timeout: 30_000,
    });
  await waitFor('postgres', PGLOG, () => {
    // A postmaster that gave up (port taken, bad config) says FATAL in its log and is gone.
    if (logFrom >= 0 && !isUp(d)) {
      const fatal = readFileSync(PGLOG, 'utf8')
        .slice(logFrom)
        .split('\n')
        .filter((l) => /FATAL|could not/.test(l));
      if (fatal.length) throw new DaemonDied(`postgres exited while starting; see its log ${PGLOG}: ${fatal.slice(-2).join(' | ')}`);
    }
    return psql('SELECT 1').trim() === '1';
  });
  if (!done('pg-role')) {
    // The password goes on stdin, never on a command line (ps shows those).
    const exists = psql("SELECT 1 FROM pg_roles WHERE rolname = 'restorelab'").trim() === '1';
    psql(`${exists ? 'ALTER' : 'CREATE'} ROLE restorelab LOGIN CREATEDB PASSWORD '${creds.pgPassword}'`);
    if (psql("SELECT 1 FROM pg_database WHERE datname = 'restorelab'").trim() !== '1') psql('CREATE DATABASE restorelab OWNER restorelab');
    markDone('pg-role');
  }
}

let pgUserCache;
function pgUser() {
  if (!pgUserCache) {
    const line = readFileSync('/etc/passwd', 'utf8')
      .split('\n')
      .find((l) => l.startsWith('postgres:'));
    if (!line) fail('no postgres system user: install postgresql-15 (scripts/setup)');
    const [, , uid, gid] = line.split(':');
    pgUserCache = { uid: Number(uid), gid: Number(gid) };
  }
  return pgUserCache;
}

async function pgLogin(url) {
  const { default: pg } = await import('pg');
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5000 });
  try {
    await client.connect();
    await client.query('SELECT 1');
    return true;
  } finally {
    await client.end().catch(() => {});
  }
}

// ---------------------------------------------------------------- Ceph

/**
 * The cluster's whole configuration. Rewritten on every up from
 * settings.json, so it never drifts from the ports callers were told.
 */
function cephConf(s, fsid) {
  return `# Single-node Ceph for restorelab (scripts/services). Every command gets -c
# this file; nothing in /etc/ceph is read or written.
[global]
fsid = ${fsid}
# one monitor, on loopback only, msgr2 only (no legacy v1 port to expose)
mon host = v2:127.0.0.1:${s.monPort}
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind msgr1 = false
# everything in the state directory
run dir = ${RUN}
admin socket = ${RUN}/$name.asok
pid file = ${RUN}/$name.pid
log file = ${LOGS}/$name.log
mon cluster log file = ${LOGS}/cluster.log
keyring = ${CEPH}/keyring
# one OSD: one copy of each object, and CRUSH places copies across OSDs
# (type 0) rather than hosts, or no placement group could ever be active
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
osd crush chooseleaf type = 0
# a lone OSD is the point here, not a fault worth a health warning
mon warn on pool no redundancy = false
# RGW makes ~7 pools: 8 PGs each stays far below mon max pg per osd (250);
# no mgr runs, so no autoscaler to change them
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
# deleting the state is how this cluster goes away; let tests drop pools
mon allow pool delete = true
# every client here is Pacific: refuse the pre-2021 insecure ticket reclaim
auth allow insecure global id reclaim = false
# a shared build host runs below Ceph's 30 % free default; the monitor still
# stops itself at 5 % (mon data avail crit)
mon data avail warn = 10

[mon]
mon data = ${CEPH}/mon/$cluster-$id
# the monitor's own rocksdb cache; the default sizes it for large clusters
mon memory target = 268435456

[osd]
osd data = ${CEPH}/osd/$cluster-$id
keyring = $osd_data/keyring
osd objectstore = bluestore
# bluestore on a sparse file (RESTORELAB_CEPH_OSD_GIB, 8), $osd_data/block (bluestore's default path;
# naming it here makes mkfs symlink it onto itself): no LVM, no real disk
bluestore block create = true
bluestore block size = ${s.osdGiB * 1024 ** 3}
# no separate DB/WAL devices: they live on the same file
bluestore block db create = false
bluestore block wal create = false
# small memory: the OSD trims its caches to this target (bytes)
osd memory target = 939524096
bluestore cache autotune = true

[client.rgw.a]
keyring = ${CEPH}/rgw/keyring
rgw data = ${CEPH}/rgw
# S3 on loopback only; beast is RGW's default HTTP frontend
rgw frontends = beast endpoint=127.0.0.1:${s.s3Port}
# a handful of concurrent requests is what tests and one host make
rgw thread pool size = 32
rgw dns name = 127.0.0.1
# deleted objects wait for RGW's garbage collector, 2 hours by default: on
# an 8 GiB OSD that tests and benchmarks fill and empty, free them in minutes
rgw gc obj min wait = 120
rgw gc processor period = 120
`;
}

async function cephUp(s) {
  mkdirSync(CEPH, { recursive: true, mode: 0o700 });
  for (const dir of [RUN, LOGS, join(CEPH, 'mon'), join(CEPH, 'osd'), join(CEPH, 'rgw')]) mkdirSync(dir, { recursive: true, mode: 0o700 });
  let fsid = readJson(join(CEPH, 'fsid.json'))?.fsid;
  if (!fsid) {
    fsid = randomUUID();
    writeAtomic(join(CEPH, 'fsid.json'), `${JSON.stringify({ fsid })}\n`);
  }
  writeAtomic(CONF, cephConf(s, fsid), 0o600);
  const keyring = join(CEPH, 'keyring');

  // -- monitor
  const mon = daemon('ceph-mon');
  if (!done('ceph-mon-mkfs')) {
    rmSync(join(CEPH, 'mon', 'ceph-a'), { recursive: true, force: true });
    rmSync(keyring, { force: true });
    run('/usr/bin/ceph-authtool', ['--create-keyring', keyring, '--gen-key', '-n', 'mon.', '--cap', 'mon', 'allow *'], {
      what: 'ceph-authtool',
    });
    run(
      '/usr/bin/ceph-authtool',
      [
        keyring,
        '--gen-key',
        '-n',
        'client.admin',
        '--cap',
        'mon',
        'allow *',
        '--cap',
        'osd',
        'allow *',
        '--cap',
        'mgr',
        'allow *',
        '--cap',
        'mds',
        'allow *',
      ],
      { what: 'ceph-authtool' },
    );
    const monmap = join(CEPH, 'monmap');
    run('/usr/bin/monmaptool', ['--create', '--clobber', '--fsid', fsid, '--addv', 'a', `[v2:127.0.0.1:${s.monPort}]`, monmap], {
      what: 'monmaptool',
    });
    run('/usr/bin/ceph-mon', ['-c', CONF, '--mkfs', '-i', 'a', '--monmap', monmap, '--keyring', keyring], { what: 'ceph-mon --mkfs' });
    markDone('ceph-mon-mkfs');
  }
  if (!isUp(mon)) launch(mon, '/usr/bin/ceph-mon', ['-c', CONF, '-i', 'a']);
  await waitFor('ceph-mon', mon.log, () => {
    checkAlive(mon);
    return JSON.parse(ceph(['quorum_status', '-f', 'json'], { timeout: 20_000 })).quorum_names?.includes('a');
  });

  // -- the one OSD
  const osd = daemon('ceph-osd');
  if (!done('ceph-osd-mkfs')) {
    const osdDir = join(CEPH, 'osd', 'ceph-0');
    rmSync(osdDir, { recursive: true, force: true });
    mkdirSync(osdDir, { mode: 0o700 });
    // uuid and key kept from a first try, so a retry re-registers the same OSD.
    const ident = join(CEPH, 'osd-ident.json');
    const { uuid, secret } = readJson(ident) ?? {
      uuid: randomUUID(),
      secret: run('/usr/bin/ceph-authtool', ['--gen-print-key'], { what: 'ceph-authtool' }).trim(),
    };
    writeAtomic(ident, `${JSON.stringify({ uuid, secret })}\n`);
    // `osd new` with the same uuid returns the same id, so a retry is safe.
    const id = ceph(['osd', 'new', uuid, '-i', '-'], { input: JSON.stringify({ cephx_secret: secret }) }).trim();
    if (id !== '0')
      fail(`ceph osd new gave OSD id ${id}, expected 0: the cluster in ${CEPH} is not the one scripts/services made; down --purge`);
    run('/usr/bin/ceph-osd', ['-c', CONF, '-i', '0', '--mkfs', '--key', secret, '--osd-uuid', uuid], { what: 'ceph-osd --mkfs' });
    // The OSD authenticates with this keyring ([osd] keyring in ceph.conf).
    run('/usr/bin/ceph-authtool', ['--create-keyring', join(osdDir, 'keyring'), '-n', 'osd.0', '--add-key', secret], {
      what: 'ceph-authtool',
    });
    markDone('ceph-osd-mkfs');
  }
  if (!isUp(osd)) launch(osd, '/usr/bin/ceph-osd', ['-c', CONF, '-i', '0']);
  await waitFor('ceph-osd', osd.log, () => {
    checkAlive(osd);
    const dump = JSON.parse(ceph(['osd', 'dump', '-f', 'json'], { timeout: 20_000 }));
    return dump.osds?.some((o) => o.osd === 0 && o.up === 1 && o.in === 1);
  });

  // -- the gateway
  const rgw = daemon('radosgw');
  if (!done('rgw-key')) {
    ceph(['auth', 'get-or-create', 'client.rgw.a', 'mon', 'allow rw', 'osd', 'allow rwx', '-o', join(CEPH, 'rgw', 'keyring')]);
    markDone('rgw-key');
  }
  if (!isUp(rgw)) launch(rgw, '/usr/bin/radosgw', ['-c', CONF, '-n', 'client.rgw.a']);
  // RGW answers an anonymous GET / once its pools exist and the frontend listens.
  await waitFor('radosgw', rgw.log, async () => {
    checkAlive(rgw);
    const res = await fetch(`http://127.0.0.1:${s.s3Port}/`, { signal: AbortSignal.timeout(5000) });
    return res.status === 200;
  });
}

async function s3Client(creds, secret = creds.s3.secretAccessKey) {
  const { S3Client } = await import('@aws-sdk/client-s3');
  return new S3Client({
    endpoint: creds.s3.endpoint,
    region: 'us-east-1',
    forcePathStyle: true, // RGW serves buckets by path on 127.0.0.1, no DNS names
    credentials: { accessKeyId: creds.s3.accessKeyId, secretAccessKey: secret },
    maxAttempts: 1,
  });
}

async function rgwUserAndBucket(creds) {
  if (!done('rgw-user')) {
    const admin = (args) => run('/usr/bin/radosgw-admin', ['-c', CONF, ...args], { what: `radosgw-admin ${args[0]} ${args[1]}` });
    let have = false;
    try {
      have = JSON.parse(admin(['user', 'info', '--uid', 'restorelab'])).keys?.some((k) => k.access_key === creds.s3.accessKeyId);
    } catch {
      have = false;
    }
    if (!have)
      // The secret rides on argv for this one short-lived command; radosgw-admin has no stdin form.
      admin([
        'user',
        'create',
        '--uid',
        'restorelab',
        '--display-name',
        'restorelab',
        '--access-key',
        creds.s3.accessKeyId,
        '--secret-key',
        creds.s3.secretAccessKey,
      ]);
    markDone('rgw-user');
  }
  const { CreateBucketCommand, HeadBucketCommand, ListBucketsCommand } = await import('@aws-sdk/client-s3');
  const s3 = await s3Client(creds);
  try {
    await waitFor('radosgw (authenticated S3)', daemon('radosgw').log, async () => {
      await s3.send(new ListBucketsCommand({}));
      return true;
    });
    try {
      await s3.send(new HeadBucketCommand({ Bucket: creds.s3.bucket }));
    } catch (e) {
      if (e?.$metadata?.httpStatusCode !== 404) throw e;
      await s3.send(new CreateBucketCommand({ Bucket: creds.s3.bucket }));
      await s3.send(new HeadBucketCommand({ Bucket: creds.s3.bucket }));
    }
  } finally {
    s3.destroy();
  }
}

// ---------------------------------------------------------------- commands

function prepareState() {
  mkdirSync(STATE, { recursive: true, mode: 0o700 });
  // Owner-only, except that the postgres system user may pass through (not
  // list) to its own data directory: root:postgres 0710.
  chownSync(STATE, 0, pgUser().gid);
  chmodSync(STATE, 0o710);
  mkdirSync(join(STATE, 'steps'), { recursive: true, mode: 0o700 });
  const r = spawnSync('/usr/sbin/runuser', ['-u', 'postgres', '--', 'test', '-x', STATE]);
  if (r.status !== 0)
    fail(
      `the postgres system user cannot reach ${STATE}: every directory above it must be searchable (chmod o+x), or set RESTORELAB_SERVICES_DIR elsewhere`,
    );
}

async function up(json) {
  checkPrograms();
  prepareState();
  const s = settings();
  const creds = credentials(s);
  const t0 = Date.now();
  // Already up: skip the Ceph CLI (a Python start per call, ~1 s each) and
  // only prove what callers need, an authenticated S3 answer and a PG login.
  const steps = ['pg-initdb', 'pg-role', 'ceph-mon-mkfs', 'ceph-osd-mkfs', 'rgw-key', 'rgw-user'];
  if (!(DAEMONS.every(isUp) && steps.every(done))) {
    await postgresUp(s, creds);
    await cephUp(s);
  }
  await rgwUserAndBucket(creds);
  await waitFor('postgres (login as restorelab over TCP)', PGLOG, () => pgLogin(creds.postgres.url));
  const out = { s3: creds.s3, postgres: creds.postgres };
  if (json) process.stdout.write(`${JSON.stringify(out)}\n`);
  else {
    const ms = Date.now() - t0;
    console.log(`services up in ${(ms / 1000).toFixed(1)} s (state ${STATE})`);
    console.log(`  S3 (Ceph RADOS Gateway)  ${creds.s3.endpoint}  bucket ${creds.s3.bucket}`);
    console.log(`  PostgreSQL 15            127.0.0.1:${s.pgPort}  role and database restorelab`);
    console.log('');
    console.log(`export AWS_ACCESS_KEY_ID=${creds.s3.accessKeyId}`);
    console.log(`export AWS_SECRET_ACCESS_KEY=${creds.s3.secretAccessKey}`);
    console.log(`export AWS_ENDPOINT_URL=${creds.s3.endpoint}`);
    console.log(`export RESTORELAB_CATALOG=${creds.postgres.url}`);
  }
}

async function down(purge) {
  // Reverse start order: the gateway before the OSD it writes to, the OSD
  // before the monitor it reports to.
  const stopped = [];
  for (const d of [...DAEMONS].reverse()) if (existsSync(STATE) && (await stopDaemon(d))) stopped.push(d.name);
  if (purge) rmSync(STATE, { recursive: true, force: true });
  console.log(`${stopped.length ? `stopped ${stopped.join(', ')}` : 'nothing was running'}${purge ? `; deleted ${STATE}` : ''}`);
}

function status(json) {
  const daemons = Object.fromEntries(DAEMONS.map((d) => [d.name, { up: isUp(d), pid: pidOf(d) ?? null, log: d.log }]));
  if (json) process.stdout.write(`${JSON.stringify({ state: STATE, daemons })}\n`);
  else
    for (const [name, d] of Object.entries(daemons)) console.log(`${name.padEnd(9)} ${d.up ? `up (pid ${d.pid})` : 'down'}  log ${d.log}`);
  return Object.values(daemons).every((d) => d.up);
}

const [cmd, ...rest] = process.argv.slice(2);
const flags = new Set(rest);
const usage = 'usage: scripts/services up [--json] | down [--purge] | status [--json]';
const allowed = { up: ['--json'], down: ['--purge'], status: ['--json'] };
try {
  if (!(cmd in allowed) || rest.some((f) => !allowed[cmd].includes(f))) {
    process.stderr.write(`${usage}\n`);
    process.exit(2);
  }
  if (cmd === 'up') await up(flags.has('--json'));
  else if (cmd === 'down') await down(flags.has('--purge'));
  else process.exitCode = status(flags.has('--json')) ? 0 : 3;
} catch (e) {
  if (!(e instanceof ServicesError)) throw e;
  process.stderr.write(`services: error: ${e.message}\n`);
  process.exit(1);
}
